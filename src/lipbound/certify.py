"""Robustness certificates from a Lipschitz bound (DESIGN §1).

For a classifier ``f : R^n -> R^m`` (logits) with ``||f(x) - f(y)|| <= U ||x - y||`` and an input
``x`` predicted as class ``i`` with logit margin ``M = f_i(x) - max_{j != i} f_j(x)``: for every
``j`` the map ``z -> f_i(z) - f_j(z)`` is ``sqrt(2) U``-Lipschitz (``|d_i - d_j| <= sqrt(2)
||d||``), so no perturbation with ``||delta|| < M / (sqrt(2) U)`` changes the predicted class.
That **certified radius** is only as good as ``U``: it must be a certified upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .api import as_graph, estimate
from .errors import InvalidInput
from .methods.selection import default_methods

__all__ = ["Certificate", "certify"]


@dataclass
class Certificate:
    """Per input: ``predicted`` class, logit ``margin`` and certified L2 ``radius``; ``upper``
    is the certified Lipschitz bound used and ``source`` where it came from."""

    predicted: torch.Tensor
    margin: torch.Tensor
    radius: torch.Tensor
    upper: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"upper": self.upper, "source": self.source, "predicted": self.predicted.tolist(),
                "margin": self.margin.tolist(), "radius": self.radius.tolist()}

    def table(self) -> str:
        lines = [f"certified Lipschitz bound U = {self.upper:.6g} ({self.source}); radius = margin / (sqrt(2) U)",
                 f"{'input':>6} {'class':>6} {'margin':>12} {'radius':>12}"]
        for i, (c, m, r) in enumerate(zip(self.predicted.tolist(), self.margin.tolist(), self.radius.tolist())):
            lines.append(f"{i:>6} {c:>6} {m:>12.6g} {r:>12.6g}")
        if len(self.radius):
            lines.append(f"median radius {self.radius.median().item():.6g}, min {self.radius.min().item():.6g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def certify(model, x: torch.Tensor, upper: float | None = None, *, input_shape: Sequence[int] | None = None,
            seed: int = 0, progress: bool = False) -> Certificate:
    """Logit margins and certified radii of ``model`` at the inputs ``x``.

    Args:
        model: a classifier (``nn.Module`` or Graph) whose output is the logits.
        x: inputs ``(N, *input_shape)``.
        upper: a certified upper bound ``U`` of the Lipschitz constant (L2 -> L2); default: the
            best certified bound of :func:`lipbound.estimate` with the default set's upper-bound
            methods (AutoLip, SeqLip when available, exact for small ReLU nets).
        input_shape: the input shape without batch axis (default: ``x.shape[1:]``).
        seed, progress: as in :func:`lipbound.estimate`.

    Returns:
        A :class:`Certificate`.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InvalidInput("x must be a tensor of inputs (N, *input_shape)")
    graph = as_graph(model, input_shape if input_shape is not None else tuple(x.shape[1:]))
    if tuple(x.shape[1:]) != graph.input_shape:
        raise InvalidInput(f"inputs must have shape (N, {', '.join(map(str, graph.input_shape))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInput("inputs contain NaN or infinite values")
    n_out = math.prod(graph.output_shape)
    if n_out < 2:
        raise InvalidInput(f"certify needs a classifier with at least 2 logits, the output has {n_out}")
    if upper is None:
        report = estimate(graph, methods=default_methods(graph, lower=False), seed=seed, progress=progress)
        upper, source = report.upper, "best of " + ", ".join(r.method for r in report.results
                                                             if r.kind in ("certified_upper", "exact"))
    else:
        upper, source = float(upper), "given"
    if not upper > 0 or math.isnan(upper):
        raise InvalidInput(f"the Lipschitz upper bound must be positive, got {upper}")
    with torch.no_grad():
        logits = graph.forward(x.to(device=graph.device, dtype=graph.dtype)).reshape(len(x), -1).to(torch.float64)
    top2 = logits.topk(2, dim=1)
    margin = (top2.values[:, 0] - top2.values[:, 1]).cpu()
    radius = margin / (math.sqrt(2.0) * upper)
    return Certificate(top2.indices[:, 0].cpu(), margin, radius, upper, source)
