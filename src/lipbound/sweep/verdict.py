"""The verdict on a VNN-COMP robustness property from a certified local Lipschitz bound.

A robustness property of class ``y`` on the input box ``X`` states as unsafe "some ``Y_j >= Y_y``"
(:class:`~lipbound.frontends.vnnlib.VnnlibProperty` with ``label = y``).

* ``certified``: with ``c`` the centre of ``X`` and ``R >= max_{x in X} ||x - c||_2``, let ``U`` be
  a certified bound of the constant of ``f`` on ``X``. ``X`` is convex, so the segment from ``c`` to
  any ``x`` stays in ``X`` and ``||f(x) - f(c)|| <= U ||x - c|| <= U R``; each ``f_y - f_j`` then
  moves by at most ``sqrt(2) U R``. If ``c`` is predicted ``y`` with a rigorous margin larger than
  that, no ``x`` in ``X`` reaches the unsafe set: the radius ``margin / (sqrt(2) U)`` of
  :func:`~lipbound.sweep.adapter.certify_one` exceeds ``R``. A union of boxes is not convex (its
  centre may lie outside it, and the union's bound does not cover pairs with it): each box is
  certified from its own centre with its own bound (``report.parts``), and the union is certified
  when every box is.
* ``violated``: only with a witness. The centre and the points the methods found (their
  witnesses) that lie in the input set itself (for a union: in one of its boxes) are evaluated
  in float64 with a rigorous bound of the rounding error (:func:`~lipbound.methods.rounding.enclose`);
  such a point whose output lies in the unsafe set even at the worst rounding is a
  counterexample, returned with the verdict.
* ``unknown`` otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..frontends.vnnlib import LinearAtom, VnnlibProperty
from ..graph.ir import Graph
from ..methods.region import Box, BoxUnion
from ..methods.rounding import enclose
from ..report import Report
from .adapter import certify_one

__all__ = ["robustness_verdict"]


def robustness_verdict(graph: Graph, prop: VnnlibProperty, report: Report, seed: int = 0) -> dict[str, Any]:
    """``{"verdict": "certified" | "violated" | "unknown", "verdict_reason": ...}`` for the
    robustness property ``prop`` (``prop.label`` set) with the report of the local bracket on its
    input set (module doc); a violation adds ``counterexample`` (the input, flattened)."""
    box = prop.region.hull() if isinstance(prop.region, BoxUnion) else prop.region
    for x in _candidates(report, prop.region, box.center):
        if _in_unsafe_set(graph, prop, x):
            return {"verdict": "violated", "verdict_reason": "a point of the input set reaches the unsafe outputs",
                    "counterexample": x.flatten().tolist()}
    if isinstance(prop.region, BoxUnion):
        if len(report.parts) != len(prop.region.parts):
            return {"verdict": "unknown", "verdict_reason": "no per-box bounds for the union of boxes"}
        pieces = [(part, rep.upper) for part, rep in zip(prop.region.parts, report.parts)]
    else:
        pieces = [(box, report.upper)]
    reasons = []
    for part, upper in pieces:
        certified, why = _certify_box(graph, prop, part, upper, seed)
        if not certified:
            return {"verdict": "unknown", "verdict_reason": why}
        reasons.append(why)
    return {"verdict": "certified", "verdict_reason": "; ".join(reasons)}


def _certify_box(graph: Graph, prop: VnnlibProperty, box: Box, upper: float | None, seed: int) -> tuple[bool, str]:
    """Whether the convex ``box`` is certified from its centre with the bound ``upper`` (module doc), and why."""
    if upper is None or not math.isfinite(upper):
        return False, "no certified upper bound on the input set"
    center = box.center
    half = torch.maximum(center - box.low, box.high - center)
    reach = float(torch.linalg.vector_norm(half)) * (1 + 2.0 ** -40)  # R, rounded up
    cert = certify_one(graph, center, upper, [reach], seed=seed)
    if cert["predicted"] == prop.label and cert["certified"][0]:
        return True, f"margin {cert['margin']:.6g} at the centre > sqrt(2) * U * R = {math.sqrt(2) * upper * reach:.6g}"
    if cert["predicted"] != prop.label:
        return False, f"the centre is predicted {cert['predicted']}, not {prop.label}, within rounding"
    return False, (f"margin {cert['margin']:.6g} at the centre <= sqrt(2) * U * R = "
                   f"{math.sqrt(2) * upper * reach:.6g}")


def _candidates(report: Report, region: Box | BoxUnion, center: torch.Tensor) -> list[torch.Tensor]:
    """``center`` and every witness point of the report, those that lie in the closed ``region``
    (for a union of boxes: in one of its boxes, not just in the hull)."""
    points = [center]
    for result in report.results:
        w = result.witness
        if w is None:
            continue
        for p in (w.x, getattr(w, "y", None)):
            if p is not None:
                points.append(torch.as_tensor(p, dtype=torch.float64).reshape(center.shape))
    return [p for p in points if bool(region.contains(p[None])[0])]


def _in_unsafe_set(graph: Graph, prop: VnnlibProperty, x: torch.Tensor) -> bool:
    """Whether ``f(x)`` satisfies some branch of the output constraints for every output within
    the rounding-error bound of its float64 evaluation."""
    g64 = graph.to(device="cpu", dtype=torch.float64)
    enc = enclose(g64, x[None].to(torch.float64))
    y, err = enc.values[g64.output].flatten(), enc.errors[g64.output].flatten()
    return any(branch and all(_holds(atom, y, err) for atom in branch) for branch in prop.output)


def _holds(atom: LinearAtom, y: torch.Tensor, err: torch.Tensor) -> bool:
    """``sum_j c_j Y_j <= b`` for every output in ``[y - err, y + err]`` (the worst case, with
    the sum's own rounding bounded by a relative ``2^-50``)."""
    worst = sum(c * float(y[j]) + abs(c) * float(err[j]) for j, c in atom.coeffs)
    slack = sum(abs(c * float(y[j])) for j, c in atom.coeffs) * 2.0 ** -50
    return worst + slack <= atom.bound
