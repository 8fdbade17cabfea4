"""Exact re-check of witnesses on piecewise-linear graphs, for where the float64 enclosure of
:mod:`lipbound.methods.rounding` is too wide to confirm them (deep nets: DESIGN §8).

**Why exact arithmetic is possible.** Every float64 number is a dyadic rational ``m 2^e``. A graph
made of affine maps (dense, convolution, diagonal scaling, selections, reshapes, compositions of
these), piecewise-linear activations whose breakpoints, slopes and offsets are float64 numbers
(ReLU, LeakyReLU, hard-tanh-like), max pooling, sums and concatenations maps a dyadic input to a
dyadic output: sums, products and maxima of dyadic rationals are dyadic. Each tensor is held as
Python integers (a numpy object array of mantissas) times one power of two (:class:`~lipbound.methods.dyadic.Dyadic`), and
every operation is exact: the value ``f(x)`` computed here is *the* value of the function the
graph's float64 parameters define, with no rounding (int64 would overflow: the mantissas grow by
about 60 bits a layer).

**Linear maps** are read exactly as sparse matrices (:mod:`lipbound.methods.exact_linear`): a
dense weight directly; a convolution, diagonal, selection, reshape or permutation by applying its
float64 ``matvec`` to unit vectors, which is exact (every output is ``w * 1`` plus products with 0: one non-zero term, no rounding).
Compositions are applied stage by stage (their product would round); operators of unknown
internals (``Function``, ``Kronecker``) and smooth activations are declined (``NotApplicable``):
exact arithmetic cannot evaluate ``tanh``.

**Pair witness** ``(x, y)``: ``q = ||f(x) - f(y)||^2 / ||x - y||^2`` is an exact rational; its square
root is bracketed with integer square roots (``math.isqrt`` of the quotient scaled to ~128 bits),
rounded outwards to float64: a relative width of about ``2^-60``.

**Jacobian witness** ``(x, v)``: the exact forward pass also carries the directional derivative
along the pattern at ``x`` (affine maps without bias, each activation's piece slope, the selected
input of each max-pooling window) and which elements are *moving* (depend on the input near
``x``: the rule of :func:`~lipbound.methods.witness_region.region_check`). Ties are declined: a moving
activation input exactly on a breakpoint, or a max-pooling window whose maximum is reached by
several inputs one of which is moving, is a kink where ``f`` need not be differentiable, and a
Jacobian witness there may belong to no linear region (DESIGN §8: use a pair). A tie of locally
constant inputs is fine (the element is constant near ``x``). Off every kink, ``f`` is affine on a
neighbourhood of ``x`` and the carried tangent is exactly ``Df(x) v``. **Re-check by another
path**: with ``h = 2^-k`` below every moving element's distance to its nearest breakpoint (or a
window's runner-up) divided by its rate along ``v`` (bounded with bit lengths), the segment
``[x, x + h v]`` stays in the region, so ``f(x + h v) - f(x) = h Df(x) v`` must hold *exactly*; the
witness is declined otherwise. Its value is the lower end of ``||Df(x) v|| / ||v||`` as for pairs.

**Work cap.** Each call evaluates points while the exact multiply-accumulates stay within
:data:`WORK_CAP` (``graph_macs`` per pass: one per pair point, three per Jacobian witness); the
remaining points are declined, deterministically. Measured: a 65-layer, width-32 MLP costs about
0.1 s per Jacobian witness (benchmarks/results/deep_witness.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from ..errors import NotApplicable
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..graph.walk import GraphInterpreter
from ..linalg.operators import Dense
from .budget import graph_macs
from .dyadic import Dyadic, sqrt_ratio_bounds
from .exact_linear import exact_stages, pooling_windows
from .region import Region

__all__ = ["WORK_CAP", "Dyadic", "exact_forward", "exact_pair_bounds", "exact_jacobian_values", "sqrt_ratio_bounds"]

WORK_CAP = 4_000_000  # exact multiply-accumulates per call (graph_macs units), all points together
_PROBE_CAP = 200_000_000  # float64 multiply-accumulates spent reading one graph's operators exactly
_JACOBIAN_PASSES = 3  # value and tangent at x, value at x + h v
_bit_length = np.frompyfunc(int.bit_length, 1, 1)


# ---- the exact forward pass -------------------------------------------------------------------
class _Tie(Exception):
    """A moving element sits exactly on a kink (module doc: declined)."""


def _scalar(c: float) -> tuple[int, int]:
    """``(m, e)`` with ``c = m 2^e`` exactly."""
    p, q = float(c).as_integer_ratio()
    return p, -(q.bit_length() - 1)


class _State(NamedTuple):
    """One node's exact value; with a direction, its tangent along the pattern and which elements
    are moving (module doc)."""

    value: Dyadic
    tangent: Dyadic | None = None
    moving: np.ndarray | None = None


class _Limit(NamedTuple):
    """Along ``x + s v`` the pattern holds while ``s * rate < room`` for every element."""

    room: Dyadic
    rate: Dyadic


class _Exact(GraphInterpreter[_State]):
    """The visits of :func:`exact_forward`; ``limits`` collects the step constraints of the kinks
    passed (with a direction only)."""

    name = "the exact re-check of witnesses"

    def __init__(self, x: Dyadic, v: Dyadic | None) -> None:
        self.x, self.v = x, v
        self.limits: list[_Limit] = []

    def visit_input(self, node: Input) -> _State:
        if self.v is None:
            return _State(self.x)
        return _State(self.x, self.v, np.ones(self.x.mant.shape, dtype=bool))

    def visit_affine(self, node: Affine, h: _State) -> _State:
        value, tangent, moving = h
        for stage in exact_stages(node.op):
            value = stage.apply(value)
            if tangent is not None:
                tangent, moving = stage.apply(tangent), stage.reach(moving)
        if node.bias is not None:
            value = value + Dyadic.of(torch.broadcast_to(node.bias.detach().cpu().double(), node.op.out_shape))
        return _State(value, tangent, moving)

    def visit_activation(self, node: Activation, h: _State) -> _State:
        pieces = node.pieces
        if pieces is None:
            raise NotApplicable(f"exact evaluation cannot evaluate the smooth activation {node.label or 'activation'} "
                                f"'{node.origin}' (no interval fallback)")
        z = h.value
        breaks = [_scalar(b) for b in pieces.breakpoints]
        e = min([z.exp] + [eb for _, eb in breaks])
        zm = z.at(e)
        piece = np.zeros(zm.shape, dtype=np.int64)
        dist = None
        for mb, eb in breaks:
            d = zm - (mb << (eb - e))
            piece += (d > 0).astype(np.int64)  # the left piece on a breakpoint, as torch.bucketize
            dist = np.abs(d) if dist is None else np.minimum(dist, np.abs(d))
        slopes, offsets = [_scalar(a) for a in pieces.slopes], [_scalar(c) for c in pieces.offsets]
        e_out = min([z.exp + es for _, es in slopes] + [eo for mo, eo in offsets if mo])
        out = np.zeros(zm.shape, dtype=object)
        for j, ((ms, es), (mo, eo)) in enumerate(zip(slopes, offsets)):
            at = piece == j
            out[at] = ((z.mant[at] * ms) << (z.exp + es - e_out)) + (mo << (eo - e_out) if mo else 0)
        if h.tangent is None:
            return _State(Dyadic(out, e_out))
        moving = h.moving
        if dist is not None:
            if bool(((dist == 0) & moving).any()):
                raise _Tie(f"an input of {node.label or 'activation'} '{node.origin}' lies exactly on a kink")
            self.limits.append(_Limit(Dyadic(dist[moving], e), Dyadic(np.abs(h.tangent.mant[moving]), h.tangent.exp)))
        e_t = min(es for _, es in slopes)
        t = np.zeros(zm.shape, dtype=object)
        flat = np.zeros(zm.shape, dtype=bool)
        for j, (ms, es) in enumerate(slopes):
            at = piece == j
            t[at] = (h.tangent.mant[at] * ms) << (es - e_t)
            flat |= at & (ms == 0)
        return _State(Dyadic(out, e_out), Dyadic(t, h.tangent.exp + e_t), moving & ~flat)

    def visit_maxpool(self, node: MaxPool, h: _State) -> _State:
        index = pooling_windows(node, h.value.mant.shape)
        zm = h.value.mant.ravel()
        floor = (min(zm) if zm.size else 0) - 1  # below every input: the padding taps
        g = np.append(zm, np.array([floor], dtype=object))[index]
        top = g.max(axis=1)
        is_top = g == top[:, None]
        first = index[np.arange(len(index)), np.argmax(is_top, axis=1)]
        value = Dyadic(top.reshape(node.shape), h.value.exp)
        if h.tangent is None:
            return _State(value)
        moving = np.append(h.moving.ravel(), False)
        if bool(((is_top.sum(axis=1) > 1) & (is_top & moving[index]).any(axis=1)).any()):
            raise _Tie(f"a window of max pooling '{node.origin}' has a tie of its maximum")
        runner = np.where(is_top, floor, g).max(axis=1)
        t = np.append(h.tangent.mant.ravel(), np.array([0], dtype=object))
        rate = np.abs(t[index]).max(axis=1) * 2  # the top and the others move by at most this
        self.limits.append(_Limit(Dyadic(top - runner, h.value.exp), Dyadic(rate, h.tangent.exp)))
        return _State(value, Dyadic(t[first].reshape(node.shape), h.tangent.exp), moving[first].reshape(node.shape))

    def visit_add(self, node: Add, *hs: _State) -> _State:
        value = hs[0].value
        for h in hs[1:]:
            value = value + h.value
        if hs[0].tangent is None:
            return _State(value)
        tangent, moving = hs[0].tangent, hs[0].moving
        for h in hs[1:]:
            tangent, moving = tangent + h.tangent, moving | h.moving
        return _State(value, tangent, moving)

    def visit_concat(self, node: Concat, *hs: _State) -> _State:
        def cat(parts: list[Dyadic]) -> Dyadic:
            e = min(p.exp for p in parts)
            return Dyadic(np.concatenate([p.at(e) for p in parts], axis=node.axis), e)

        if hs[0].tangent is None:
            return _State(cat([h.value for h in hs]))
        return _State(cat([h.value for h in hs]), cat([h.tangent for h in hs]),
                      np.concatenate([h.moving for h in hs], axis=node.axis))


def exact_forward(graph: Graph, x: torch.Tensor | Dyadic, v: torch.Tensor | None = None) -> tuple[_State, list[_Limit]]:
    """The exact output of ``graph`` at one point ``x`` (input shape, no batch axis), with ``v``
    also its exact tangent ``Df(x) v`` along the pattern and moving flags, and the step limits.

    Raises:
        NotApplicable: a node exact arithmetic cannot evaluate (smooth activation, unknown operator).
        _Tie: with ``v``, a moving element exactly on a kink.
    """
    x = x if isinstance(x, Dyadic) else Dyadic.of(x)
    run = _Exact(x, None if v is None else Dyadic.of(v))
    return run.output(graph), run.limits


def _step_exponent(limits: list[_Limit]) -> int:
    """``k`` such that ``2^-k * rate < room`` for every limit with a non-zero rate (bit lengths:
    ``room / rate >= 2^(bl(room) - 1 - bl(rate))`` in mantissas)."""
    low = None
    for room, rate in limits:
        active = rate.mant != 0
        if not active.any():
            continue
        bits = _bit_length(room.mant[active]).astype(np.int64) - 1 - _bit_length(rate.mant[active]).astype(np.int64)
        here = int(bits.min()) + room.exp - rate.exp
        low = here if low is None else min(low, here)
    return 0 if low is None else 1 - low


# ---- witnesses ------------------------------------------------------------------------------
class _Work:
    """The deterministic work cap of one call (:data:`WORK_CAP`, module doc)."""

    def __init__(self, graph: Graph) -> None:
        self.per_pass, self.left = graph_macs(graph), WORK_CAP
        probe = sum(n.op.in_numel * n.op.out_numel for n in graph if isinstance(n, Affine)
                    and not (isinstance(n.op, Dense) and len(n.op.in_shape) == 1))
        self.refusal = (f"reading its operators exactly would take {probe:.3g} > {_PROBE_CAP:.3g} multiply-accumulates"
                        if probe > _PROBE_CAP else None)

    def take(self, passes: int) -> str | None:
        """None, and the work spent, when ``passes`` more passes fit; else why not."""
        if self.refusal is not None:
            return self.refusal
        cost = passes * self.per_pass
        if cost > self.left:
            return f"its exact re-check is above the work cap ({cost:.3g} > {self.left:.3g} multiply-accumulates left)"
        self.left -= cost
        return None


def exact_pair_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """Rigorous ``(low, high)`` of ``||f(x) - f(y)|| / ||x - y||`` per pair of the float64 batches
    ``x, y``, from the exact values (module doc), and why a pair was declined (NaN there)."""
    n = x.shape[0]
    low, high = torch.full((n,), math.nan, dtype=torch.float64), torch.full((n,), math.nan, dtype=torch.float64)
    reasons: list[str | None] = [None] * n
    work = _Work(graph)
    for b in range(n):
        reasons[b] = work.take(2)
        if reasons[b] is not None:
            continue
        try:
            d = exact_forward(graph, x[b])[0].value - exact_forward(graph, y[b])[0].value
            den = (Dyadic.of(x[b]) - Dyadic.of(y[b])).squared_norm()
        except NotApplicable as exc:
            reasons[b] = str(exc)
            continue
        if den[0] == 0:
            reasons[b] = "x == y"
            continue
        low[b], high[b] = sqrt_ratio_bounds(*d.squared_norm(), *den)
    return low, high, reasons


def exact_jacobian_values(graph: Graph, x: torch.Tensor, v: torch.Tensor,
                          box: Region | None = None) -> tuple[torch.Tensor, list[str | None]]:
    """The rigorous lower end of ``||Df(x_b) v_b|| / ||v_b||`` per point of the float64 batches,
    from the exact tangent re-checked by the exact secant (module doc), and why a point was
    declined (NaN there): outside ``box``, ``v`` zero, a kink, the work cap, an unsupported node."""
    n = x.shape[0]
    low = torch.full((n,), math.nan, dtype=torch.float64)
    reasons: list[str | None] = [None] * n
    inside = box.contains(x) if box is not None else torch.ones(n, dtype=torch.bool)
    work = _Work(graph)
    for b in range(n):
        if not bool(inside[b]):
            reasons[b] = f"x lies outside the domain ({box.describe()})"
            continue
        reasons[b] = work.take(_JACOBIAN_PASSES)
        if reasons[b] is not None:
            continue
        try:
            low[b] = _jacobian_value(graph, x[b], v[b])
        except (NotApplicable, _Tie) as exc:
            reasons[b] = str(exc)
    return low, reasons


def _jacobian_value(graph: Graph, x: torch.Tensor, v: torch.Tensor) -> float:
    """:func:`exact_jacobian_values` at one point."""
    vd = Dyadic.of(v)
    den = vd.squared_norm()
    if den[0] == 0:
        raise NotApplicable("v is zero")
    at_x, limits = exact_forward(graph, x, v)
    k = _step_exponent(limits)
    xd = Dyadic.of(x)
    moved = exact_forward(graph, xd + vd.scaled(-k))[0].value
    if bool(((moved - at_x.value) - at_x.tangent.scaled(-k)).mant.any()):
        raise NotApplicable(f"the exact secant over 2^-{k} v disagrees with the exact tangent")
    return sqrt_ratio_bounds(*at_x.tangent.squared_norm(), *den)[0]
