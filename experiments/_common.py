"""Helpers shared by the experiment scripts: witnessed lower bounds from Jacobians, tables, output."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing


def jacobian_norms(model: torch.nn.Module, xs: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``||Df(x)||_2`` at every row of ``xs`` (float64, batched with ``torch.func``). Each value is
    a witnessed lower bound of the Lipschitz constant (DESIGN §1)."""
    model = model.double().eval()
    f = lambda z: model(z[None])[0].reshape(-1)  # noqa: E731
    jac = torch.func.vmap(torch.func.jacrev(f))
    out = []
    with torch.no_grad():
        for i in range(0, xs.shape[0], chunk):
            j = jac(xs[i:i + chunk].double())
            out.append(torch.linalg.matrix_norm(j.reshape(j.shape[0], j.shape[1], -1), ord=2))
    return torch.cat(out)


def ascent(model: torch.nn.Module, starts: torch.Tensor, steps: int = 100, lr: float = 0.05,
           box: tuple[float, float] | None = None) -> tuple[float, torch.Tensor]:
    """Gradient ascent on ``||Df(x)||_2`` from each start (Adam); returns the best value seen and
    its input (a witnessed lower bound with its witness)."""
    model = model.double().eval()
    f = lambda z: model(z[None])[0].reshape(-1)  # noqa: E731
    x = starts.double().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    best, arg = 0.0, starts[0]
    for _ in range(steps):
        j = torch.func.vmap(torch.func.jacrev(f))(x)
        s = torch.linalg.matrix_norm(j.reshape(j.shape[0], j.shape[1], -1), ord=2)
        k = int(torch.argmax(s))
        if s[k].item() > best:
            best, arg = s[k].item(), x[k].detach().clone()
        opt.zero_grad()
        (-s.sum()).backward()
        opt.step()
        if box is not None:
            with torch.no_grad():
                x.clamp_(*box)
    return best, arg


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}")


def save(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    return path
