"""Helpers of the sweep tests (no tests here): a tiny ONNX benchmark written to a folder, the
settings every sweep test runs with, record comparison without timings, and a job that kills its
worker process (importable by the pool's workers)."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

# every method stops on its iteration counts: a time budget this large never cuts one short
METHODS = ["autolip", "seqlip", "lower"]
OPTIONS = {"lower": {"starts": 4, "steps": 20, "walk_rounds": 2}}
TIMEOUT = 600


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def property_text(low: torch.Tensor, high: torch.Tensor, label: int, n_out: int = 3) -> str:
    """A VNN-LIB robustness property of class ``label`` on the box ``[low, high]``."""
    lines = [f"(declare-const X_{k} Real)" for k in range(len(low))]
    lines += [f"(declare-const Y_{k} Real)" for k in range(n_out)]
    for k in range(len(low)):
        lines += [f"(assert (>= X_{k} {low[k].item()!r}))", f"(assert (<= X_{k} {high[k].item()!r}))"]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(n_out) if j != label) + "))")
    return "\n".join(lines) + "\n"


def write_benchmark(folder: Path, n: int = 6, eps: tuple[float, ...] = (0.02, 0.4)) -> tuple[nn.Module, Path]:
    """``folder/instances.csv`` with ``n`` robustness properties (L-inf boxes around random points,
    labelled with the net's class at the centre) on one tiny ONNX net; returns the net and the CSV."""
    net = tiny_net()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, 3), buf, dynamo=False, opset_version=17)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.onnx").write_bytes(buf.getvalue())
    gen = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        c = torch.randn(3, generator=gen, dtype=torch.float64)
        label = int(net(c[None].float()).argmax())
        e = eps[i % len(eps)]
        (folder / f"p{i}.vnnlib").write_text(property_text(c - e, c + e, label))
        rows.append(f"net.onnx,p{i}.vnnlib,{TIMEOUT}")
    csv = folder / "instances.csv"
    csv.write_text("\n".join(rows) + "\n")
    return net, csv


def without_timings(record: dict[str, Any]) -> dict[str, Any]:
    """A record less its wall-clock times (the only fields that may differ between runs)."""
    out = {k: v for k, v in record.items() if k != "seconds"}
    if "methods" in out:
        out["methods"] = [{k: v for k, v in m.items() if k != "seconds"} for m in out["methods"]]
    return out


class CrashJob:
    """A job whose worker process dies (``os._exit``) on the payload ``"crash"``, that runs out of
    memory on ``"memory"`` and is interrupted (Ctrl-C) on ``"interrupt"``; any other payload ``p``
    gives ``{"value": p}``."""

    seed = 0

    def setup(self) -> None:
        pass

    def run(self, payload: Any) -> dict[str, Any]:
        if payload == "crash":
            os._exit(3)
        if payload == "memory":
            raise MemoryError
        if payload == "interrupt":
            raise KeyboardInterrupt
        return {"value": payload}
