"""The one place where a sweep calls :func:`lipbound.certify` (so that a change of its signature
is one change here)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..certify import certify
from ..graph.ir import Graph

__all__ = ["certify_one"]


def certify_one(graph: Graph, x: torch.Tensor, upper: float, radii: Sequence[float], *,
                pair_constants: torch.Tensor | None = None, local: bool = False, seed: int = 0,
                time_budget: float | None = None) -> dict[str, Any]:
    """Certify the one input ``x`` (input shape, no batch axis) of the classifier ``graph`` with the
    certified Lipschitz bound ``upper`` (valid on a convex set holding every perturbation
    considered): its ``predicted`` class, rigorous logit ``margin`` (to the runner-up), certified L2
    ``radius`` (``margin / (sqrt(2) upper)``; with ``pair_constants``, the certified constants
    ``L_yj`` of the logit differences computed once for the sweep, the larger
    ``min_j (f_y - f_j) / L_yj``; with ``local`` the largest ball certified by local logit-pair
    constants) and, per radius ``r`` of ``radii``, whether ``B(x, r)`` is certified:
    ``r < radius`` (no perturbation shorter than ``radius`` changes the predicted class)."""
    pairs = pair_constants if pair_constants is not None else False  # never computed per input
    cert = certify(graph, x[None], upper, pair_constants=pairs, seed=seed, local=local, time_budget=time_budget)
    radius = float(cert.radius[0])
    return {"predicted": int(cert.predicted[0]), "margin": float(cert.margin[0]), "radius": radius,
            "certified": [r < radius for r in radii]}
