"""The one place where a sweep calls :func:`lipbound.certify` (so that a change of its signature
is one change here)."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..certify import certify
from ..graph.ir import Graph

__all__ = ["certify_one"]


def certify_one(graph: Graph, x: torch.Tensor, upper: float, radii: Sequence[float], *, local: bool = False,
                seed: int = 0, time_budget: float | None = None) -> dict[str, Any]:
    """Certify the one input ``x`` (input shape, no batch axis) of the classifier ``graph`` with the
    certified Lipschitz bound ``upper`` (valid on a convex set holding every perturbation
    considered): its ``predicted`` class, rigorous logit ``margin`` (to the runner-up), certified L2
    ``radius`` (``margin / (sqrt(2) upper)``, or with ``local`` the largest ball certified by local
    logit-pair constants) and, per radius ``r`` of ``radii``, whether ``B(x, r)`` is certified:
    ``r < radius`` (no perturbation shorter than ``radius`` changes the predicted class)."""
    cert = certify(graph, x[None], upper, seed=seed, local=local, time_budget=time_budget)
    radius = float(cert.radius[0])
    return {"predicted": int(cert.predicted[0]), "margin": float(cert.margin[0]), "radius": radius,
            "certified": [r < radius for r in radii]}
