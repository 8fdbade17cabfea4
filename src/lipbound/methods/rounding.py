"""Forward error analysis of a graph's float64 evaluation: what makes a witness valid (DESIGN §8).

**Rounding model** (:func:`enclose`). With ``u = 2^-53`` and ``gamma_k = k u / (1 - k u)``:
an affine node ``y = A h + b`` computed in float64 is within ``gamma_k (|A| |h| + |b|)`` of the
exact value for the computed ``h`` (``k`` the operator's input size, at least the number of terms
of every sum, in any summation order: Higham, Accuracy and Stability of Numerical Algorithms,
§3.1); an input error ``e`` adds ``|A| e``. ``|A|`` is the operator with absolute weights for
dense layers, convolutions and diagonals, the operator itself for non-negative maps (pooling,
padding, reshapes), and otherwise the provable substitute ``(|A| w)_i <= ||A||_2 ||w||_2`` with a
certified norm (infinite when none is known: the witness is then declined). An activation with
slope range ``[a, b]`` adds ``max(|a|, |b|) e``; its own evaluation error is bounded by
``gamma_4 (max|slope| |t| + max|offset|)`` for a piecewise-linear one and by
``16 u (|s(t)| + |t|)`` for the smooth ones (the assumption that torch's float64 kernels are
accurate to a few units in the last place). Max pooling passes the largest error of its window,
sums add their errors and one rounding. Evaluations run on the CPU (no FFT or Winograd
convolution algorithms), and every bound is rounded upwards.

**Norm-wise bounds on deep nets.** Element-wise propagation multiplies the errors by ``|A|`` at every
layer, whose norm can exceed ``||A||_2`` several times over: on a 65-layer MLP the bound passes the
values themselves by layer 20 and no witness can be checked. Every node therefore also carries
``E >= ||error||_2`` per batch element, propagated with the layers' certified norms
(:func:`~lipbound.linalg.spectral.certified_norm`): an affine node's propagated error is
``A (h~ - h)``, whose every element is at most ``||A||_2 E`` (``|a_i . d| <= ||a_i|| ||d||``) and
whose norm is at most ``||A||_2 E``; an activation's is at most ``max|slope| E``. Each element's
bound is the smaller of the two, both sound. The norm path is taken only where the element-wise
bound has grown past ``1e-10`` of the values (shallow nets never pay for the norms).

**Exact fallback.** Past about 30 layers even the norm-wise bound outgrows the values. Where a
witness fails and some node's error bound passes ``1e-6`` of its values (:data:`_WIDE`), or a pair's
interval is that wide, :func:`pair_bounds` and :func:`jacobian_witness_values` re-check it in exact
dyadic arithmetic (:mod:`~lipbound.methods.rounding_exact`: piecewise-linear graphs, ties declined,
capped work); a witness it declines keeps its float64 verdict, with the exact reason appended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool
from ..graph.walk import GraphInterpreter
from .jacobian import tangents
from ..linalg.operators import Compose, Conv, Dense, Diagonal, Function, LinearOperator, Permute, Reshape
from ..linalg.spectral import certified_norm
from ..linalg.structured import Gather, Kronecker
from .region import Region
from .rounding_exact import exact_jacobian_values, exact_pair_bounds

__all__ = ["Enclosure", "enclose", "RegionCheck", "region_check", "pair_bounds", "jacobian_witness_values"]

_U = 2.0 ** -53  # unit roundoff of float64
_TINY = 2.0 ** -1022  # smallest normal float64: bounds the absolute error of an underflow
_RTOL = 1e-6  # agreement required between the tangent and the central difference
_H_REL = 1e-6  # central difference step, relative to max(1, ||x||), at most
_WIDE = 1e-6  # relative width of a float64 enclosure past which a witness is re-checked exactly


def _gamma(n: int) -> float:
    """``gamma_n = n u / (1 - n u)``, the relative error bound of a sum of ``n`` float64 terms."""
    return n * _U / (1 - n * _U)


def _up(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t >= 0`` computed in float64 by sums of at most ``n`` non-negative terms, rounded up to a
    rigorous upper bound of its exact value."""
    return t * (1 + 2 * _gamma(n + 4)) + _TINY




@dataclass
class Enclosure:
    """Float64 values of every node of a graph at a batch ``x`` and element-wise bounds of their
    distance to the exact values: ``|values[n] - f_n(x)| <= errors[n]``; with a direction ``v``,
    also the directional derivatives ``D f_n(x) v`` in ``tangents`` and their error bounds in
    ``tangent_errors``."""

    values: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]
    tangents: dict[str, torch.Tensor] = field(default_factory=dict)
    tangent_errors: dict[str, torch.Tensor] = field(default_factory=dict)


def enclose(graph: Graph, x: torch.Tensor, v: torch.Tensor | None = None) -> Enclosure:
    """Evaluate ``graph`` (float64, CPU) at the batch ``x`` with a rigorous element-wise bound of
    the rounding error of every node (rounding model: module doc); with ``v``, propagate the
    tangent ``D f_n(x) v`` forward as well (affine nodes without their bias, activations times
    their derivative at the computed input, max pooling by the selected input) with its error
    bound. A piecewise-linear activation's derivative is exact wherever :func:`region_check`
    passes; a smooth one's is taken within twice its secant change over the input's error interval
    plus ``16 u`` (an estimate, not a proof).

    Raises:
        UnsupportedOperation: for a node kind the error analysis does not know.
    """
    with torch.no_grad():
        env = _Enclose(x, v).run(graph)
    enc = Enclosure({k: e.value for k, e in env.items()}, {k: e.error for k, e in env.items()})
    if v is not None:
        enc.tangents = {k: e.tangent for k, e in env.items()}
        enc.tangent_errors = {k: e.tangent_error for k, e in env.items()}
    return enc


class _Enclosed(NamedTuple):
    """One node's float64 value and error bound; its tangent and the tangent's bound (None without ``v``)."""

    value: torch.Tensor
    error: torch.Tensor
    tangent: torch.Tensor | None = None
    tangent_error: torch.Tensor | None = None
    norm: torch.Tensor | None = None  # >= ||value - exact||_2 per batch element
    tangent_norm: torch.Tensor | None = None  # >= ||tangent - exact||_2 per batch element


class _Enclose(GraphInterpreter[_Enclosed]):
    """The visits of :func:`enclose`, one per node kind (module doc, rounding model)."""

    name = "the rounding-error analysis of witnesses"

    def __init__(self, x: torch.Tensor, v: torch.Tensor | None) -> None:
        self.x, self.v = x, v

    def visit_input(self, node: Input) -> _Enclosed:
        zero = torch.zeros(self.x.shape[0], dtype=self.x.dtype)
        if self.v is None:
            return _Enclosed(self.x, torch.zeros_like(self.x), norm=zero)
        return _Enclosed(self.x, torch.zeros_like(self.x), self.v, torch.zeros_like(self.v), zero, zero)

    def visit_affine(self, node: Affine, h: _Enclosed) -> _Enclosed:
        y, e, big = _linear_normwise(node.op, h.value, h.error, h.norm)
        if node.bias is not None:
            k = node.op.in_numel + 1
            fresh = _gamma(k) * node.bias.abs()
            e = _up(e + fresh, k)  # one more term in every sum
            big = _up(big + _norm(fresh.expand_as(y)), k)
            y = y + node.bias
        if h.tangent is None:
            return _Enclosed(y, e, norm=torch.minimum(big, _norm(e)))
        t, e_t, big_t = _linear_normwise(node.op, h.tangent, h.tangent_error, h.tangent_norm)
        return _Enclosed(y, e, t, e_t, torch.minimum(big, _norm(e)), big_t)

    def visit_activation(self, node: Activation, h: _Enclosed) -> _Enclosed:
        y = node.evaluate(h.value)
        rounding = _activation_rounding(node, h.value, y)
        e = _up(node.lipschitz * h.error + rounding, 4)
        big = torch.minimum(_norm(e), _up(node.lipschitz * h.norm + _norm(rounding), 4))
        if h.tangent is None:
            return _Enclosed(y, e, norm=big)
        return _Enclosed(y, e, *_activation_tangent(node, h.value, h.error, h.tangent, h.tangent_error,
                                                    h.tangent_norm), big)

    def visit_maxpool(self, node: MaxPool, h: _Enclosed) -> _Enclosed:
        y, e = node.evaluate(h.value), node.evaluate(h.error)  # |max a - max b| <= max |a - b|
        if h.tangent is None:
            return _Enclosed(y, e, norm=_norm(e))
        with torch.enable_grad():
            hg = h.value.detach().requires_grad_(True)
            (t,) = tangents([node.evaluate(hg)], hg, h.tangent)
        # the selected input's error is at most the window's largest
        e_t = node.evaluate(h.tangent_error)
        return _Enclosed(y, e, t, e_t, _norm(e), _norm(e_t))

    def visit_add(self, node: Add, *hs: _Enclosed) -> _Enclosed:
        def total(ts: list[torch.Tensor], es: list[torch.Tensor], bigs: list[torch.Tensor]):
            k = len(ts)
            fresh = _gamma(k) * sum(t.abs() for t in ts)
            e = _up(sum(es) + fresh, k)
            return node.evaluate(*ts), e, torch.minimum(_norm(e), _up(sum(bigs) + _norm(fresh), k + 1))

        y, e, big = total([h.value for h in hs], [h.error for h in hs], [h.norm for h in hs])
        if hs[0].tangent is None:
            return _Enclosed(y, e, norm=big)
        t, e_t, big_t = total([h.tangent for h in hs], [h.tangent_error for h in hs], [h.tangent_norm for h in hs])
        return _Enclosed(y, e, t, e_t, big, big_t)

    def visit_concat(self, node: Concat, *hs: _Enclosed) -> _Enclosed:
        y, e = node.evaluate(*[h.value for h in hs]), node.evaluate(*[h.error for h in hs])
        if hs[0].tangent is None:
            return _Enclosed(y, e, norm=_norm(e))
        e_t = node.evaluate(*[h.tangent_error for h in hs])
        return _Enclosed(y, e, node.evaluate(*[h.tangent for h in hs]), e_t, _norm(e), _norm(e_t))


def _derivative(node: Activation, z: torch.Tensor) -> torch.Tensor:
    """``s'(z)`` element-wise, by autograd of the activation's own code."""
    with torch.enable_grad():
        zg = z.detach().clone().requires_grad_(True)
        (d,) = torch.autograd.grad(node.evaluate(zg).sum(), zg)
    return d


def _piece_slopes(node: Activation, z: torch.Tensor) -> torch.Tensor:
    """The slope of the piece each element of ``z`` lies in (the left one on a breakpoint), from
    the activation's exact pieces."""
    breaks = torch.tensor(node.pieces.breakpoints, dtype=z.dtype)
    return torch.tensor(node.pieces.slopes, dtype=z.dtype)[torch.bucketize(z.contiguous(), breaks)]


def _activation_tangent(node: Activation, z: torch.Tensor, e_z: torch.Tensor, t: torch.Tensor, e_t: torch.Tensor,
                        big_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``s'(z) t``, its error bound ``|s'~ - s'(z)| (|t| + e_t) + |s'~| e_t + u |s'~ t|`` (:func:`enclose`)
    and a bound of that error's norm from ``big_t >= ||e_t||_2`` (``max(|s'~| + |s'~ - s'|) big_t``
    for the propagated part)."""
    if node.pieces is not None:  # the slope of z's piece, exactly, where the piece is certain
        d = _piece_slopes(node, z)
        slope_error = torch.zeros_like(d)
    else:
        d = _derivative(node, z)
        secant = torch.maximum((_derivative(node, z + e_z) - d).abs(), (_derivative(node, z - e_z) - d).abs())
        slope_error = 2 * secant + 16 * _U * (d.abs() + node.lipschitz)
    out = d * t
    fresh, gain = slope_error * t.abs() + _U * out.abs(), d.abs() + slope_error
    e = _up(fresh + gain * e_t, 3)
    big = _up(_norm(fresh) + gain.flatten(1).amax(dim=1) * big_t, 3)
    return out, e, torch.minimum(_norm(e), big)


def _norm(e: torch.Tensor) -> torch.Tensor:
    """A rigorous upper bound of ``||e_b||_2`` for each batch element of ``e >= 0``."""
    return _up(e.flatten(1).norm(dim=1), e[0].numel())


def _linear_normwise(op: LinearOperator, h: torch.Tensor, e: torch.Tensor,
                     big: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_linear` with ``big >= ||e||_2``: ``(A h, element-wise error bound, bound of its norm)``.
    Where the element-wise bound has grown past ``1e-10`` of ``||A h||``, each element is also
    bounded by ``||A||_2 big`` plus the fresh rounding (module doc), and the smaller bound is kept."""
    y, out = _linear(op, h, e)
    out_norm = _norm(out)
    if not bool((out_norm > 1e-10 * y.flatten(1).norm(dim=1)).any()):
        return y, out, out_norm
    a = _row_bound(op)
    if not math.isfinite(a):
        return y, out, out_norm
    _, fresh = _linear(op, h, torch.zeros_like(e))
    spread = _up(a * big, 1)
    out = torch.minimum(out, _up(fresh + spread.reshape(-1, *([1] * (y.dim() - 1))), 2))
    return y, out, torch.minimum(_norm(out), _up(_norm(fresh) + spread, 2))


def _row_bound(op: LinearOperator) -> float:
    """A certified ``||A||_2`` (cached on the operator), infinite when none is known."""
    if "_lipbound_row_bound" not in op.__dict__:
        op.__dict__["_lipbound_row_bound"] = certified_norm(op.to(dtype=torch.float64)).value
    return op.__dict__["_lipbound_row_bound"]


def _linear(op: LinearOperator, h: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A h`` and a bound of its error ``|A| e + gamma_k |A| |h|`` (stage by stage for a
    composition, as it is evaluated)."""
    if isinstance(op, Compose):
        for sub in op.ops:
            h, e = _linear(sub, h, e)
        return h, e
    y = op.matvec(h)
    k = op.in_numel
    if isinstance(op, (Reshape, Permute)):  # moves entries: no rounding
        return y, op.matvec(e)
    w = e + _gamma(k) * h.abs()
    if isinstance(op, Function):  # unknown internals (interpolation weights, lerps): one more max|h| term
        w = w + _gamma(k) * h.abs().flatten(1).amax(dim=1).reshape(-1, *([1] * (h.dim() - 1)))
    mag = _magnitude(op)
    if mag is not None:
        bound = mag.matvec(w)
    else:  # (|A| w)_i <= ||row_i||_2 ||w||_2 <= ||A||_2 ||w||_2
        scale = _row_bound(op) * _norm(w)
        bound = scale.reshape(-1, *([1] * (y.dim() - 1))).expand_as(y)
    return y, _up(bound, k) + k * _TINY


def _magnitude(op: LinearOperator) -> LinearOperator | None:
    """The operator ``|A|`` (entry-wise absolute values) when it is cheap, else None: dense and
    convolution weights (circular padding kept), diagonals and the per-axis factors of a separable
    map in absolute value; selections, reshapes and permutations are their own (0/1 entries)."""
    if isinstance(op, Dense):
        return Dense(op.weight.abs(), op.in_shape)
    if isinstance(op, Conv):
        return Conv(op.weight.abs(), op.in_shape, op.stride, op.padding, op.dilation, op.groups, op.transposed,
                    op.output_padding, op.circular)
    if isinstance(op, Diagonal):
        return Diagonal(op.scale.abs(), op.in_shape)
    if isinstance(op, Kronecker):
        return Kronecker([f.abs() for f in op.factors], op.in_shape, op.label)
    if isinstance(op, (Gather, Reshape, Permute)):
        return op
    if isinstance(op, Compose):
        mags = [_magnitude(sub) for sub in op.ops]  # |A B| <= |A| |B| entry-wise
        return None if any(m is None for m in mags) else Compose(mags)
    return None


def _activation_rounding(node: Activation, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Bound of ``|fl(s(t)) - s(t)|`` for a float64 input ``t`` (rounding model: module doc)."""
    pieces = node.pieces
    if pieces is not None:
        slope = max(abs(a) for a in pieces.slopes)
        offset = max(abs(b) for b in pieces.offsets)
        return _gamma(4) * (slope * t.abs() + offset) + _TINY
    return 16 * _U * (s.abs() + t.abs()) + 16 * _TINY


# ---- where a Jacobian witness is valid ----------------------------------------------------------
@dataclass
class RegionCheck:
    """Outcome of :func:`region_check` for a batch: ``valid`` ``(B,)``; ``reasons[b]`` says why
    point ``b`` failed (None when valid); ``room[name]`` is, for each checked node, how far every
    element stays from a kink (activation inputs) or how much each window's maximum beats its
    runner-up (max pooling), beyond the rounding error bound: positive where certain."""

    valid: torch.Tensor
    reasons: list[str | None]
    room: dict[str, torch.Tensor]


def region_check(graph: Graph, x: torch.Tensor, box: Region | None = None,
                 enclosure: Enclosure | None = None) -> RegionCheck:
    """Decide, for each point of the batch ``x``, whether a Jacobian witness there is valid: ``x``
    is finite and in the closed region ``box`` (its rigorous ``contains``); every activation input that is not locally constant is
    farther from each of the activation's ``kinks`` than its rounding error bound (:func:`enclose`); in every max-pooling
    window, either the largest input lowered by its error bound exceeds every other input raised by
    its bound, or every input that could be the largest is *locally constant* (a tie of inactive
    ReLUs: the maximum is then constant near ``x``). An element is locally constant when it
    depends on no input near ``x``: through affine maps only on locally constant elements (zero
    weights elsewhere), an activation on a certain piece of slope 0, a window whose maximum is
    certainly a constant one. Then ``f`` is ``C^1`` near ``x`` and its autograd Jacobian is the true
    one (module doc). ``graph`` must be float64 on the CPU; ``enclosure`` is :func:`enclose` at
    ``x`` when already computed."""
    n = x.shape[0]
    valid = torch.ones(n, dtype=torch.bool)
    reasons: list[str | None] = [None] * n

    def fail(bad: torch.Tensor, why: str) -> None:
        for b in torch.nonzero(bad & valid).flatten().tolist():
            reasons[b] = why
        valid.logical_and_(~bad)

    fail(~torch.isfinite(x).flatten(1).all(dim=1), "x is not finite")
    if box is not None:
        fail(~box.contains(x), f"x lies outside the domain ({box.describe()})")
    enc = enclosure if enclosure is not None else enclose(graph, x)
    room: dict[str, torch.Tensor] = {}
    moving: dict[str, torch.Tensor] = {}  # elements that are not locally constant
    for node in graph:
        ins = [moving[i] for i in node.inputs]
        if isinstance(node, Input):
            moving[node.name] = torch.ones_like(x, dtype=torch.bool)
        elif isinstance(node, Affine):
            moving[node.name] = _reaches(node.op, ins[0])
        elif isinstance(node, Activation):
            z, e = enc.values[node.inputs[0]], enc.errors[node.inputs[0]]
            certain = torch.ones_like(z, dtype=torch.bool)
            if node.kinks:
                kinks = torch.tensor(node.kinks, dtype=z.dtype)
                dist = (z.unsqueeze(-1) - kinks).abs().amin(dim=-1)  # fl(|z - k|) is within u of it
                room[node.name] = dist * (1 - 4 * _U) - e
                certain = room[node.name] > 0
                # a locally constant input may sit on a kink: the output is then locally constant too
                fail((~certain & ins[0]).flatten(1).any(dim=1),
                     f"an input of {node.label or 'activation'} '{node.origin}' is within its rounding error of a kink")
            flat = _piece_slopes(node, z) == 0 if node.pieces is not None else torch.zeros_like(certain)
            moving[node.name] = ins[0] & ~(flat & certain)
        elif isinstance(node, MaxPool):
            room[node.name], moving[node.name] = _window_room(node, enc.values[node.inputs[0]],
                                                              enc.errors[node.inputs[0]], ins[0])
            fail(~(room[node.name] > 0).flatten(1).all(dim=1),
                 f"a window of max pooling '{node.origin}' has no certain maximum (a tie, up to rounding)")
        else:  # Add, Concat
            moving[node.name] = node.evaluate(*[m.to(x.dtype) for m in ins]) != 0
    return RegionCheck(valid, reasons, room)


def _reaches(op: LinearOperator, moving: torch.Tensor) -> torch.Tensor:
    """The outputs of ``A`` that have a non-zero weight on a moving input (all of them when ``|A|``
    is not known)."""
    if isinstance(op, Compose):
        for sub in op.ops:
            moving = _reaches(sub, moving)
        return moving
    mag = _magnitude(op)
    if mag is None:
        return torch.ones((moving.shape[0], *op.out_shape), dtype=torch.bool)
    return mag.matvec(moving.to(torch.float64)) != 0


def _window_room(node: MaxPool, h: torch.Tensor, e: torch.Tensor,
                 moving: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per window of ``node.fn`` at ``h`` (error bound ``e``; ``moving``: the inputs that are not
    locally constant), the larger of ``(h_top - e_top) - max over the other inputs j of
    (h_j + e_j)`` (a certain maximum) and ``(h_top - e_top) - max over the moving inputs j of
    (h_j + e_j)`` (only constant inputs can be the maximum), rounded to the safe side, NaN where it
    cannot be decided; and which windows' maxima are not locally constant.

    Works for any max-pooling function, from its values alone: the window's selected input ``top``
    is read by a forward-mode derivative along the tangent ``t_j = j`` (the flat index); the
    runner-up is the pooled maximum after masking ``top`` with ``-inf``. Windows may overlap, so
    masking is done for one class of windows at a time (output coordinates equal modulo ``K`` per
    axis, ``K = 1 .. 5``), and a window's result is used only when it is verified that no other
    masked input lies in it: pooling ``+id`` and ``-id`` of the masked inputs must both return its
    own ``top``."""
    batch, n = h.shape[0], h[0].numel()
    ids = torch.arange(n, dtype=h.dtype).reshape(1, *h.shape[1:]).expand_as(h).contiguous()
    with torch.enable_grad():
        hg = h.detach().requires_grad_(True)
        top_value = node.evaluate(hg)
        (picked,) = tangents([top_value], hg, ids)
    top_value = top_value.detach()
    integral = picked == picked.round()  # a tie split by the derivative (amax) gives a fraction
    top = picked.round().clamp(0, n - 1).long().flatten(1)
    e_top = node.evaluate(e)  # the window's largest error bounds the selected input's
    low_top = (top_value - e_top - 4 * _U * (top_value.abs() + e_top) - _TINY).flatten(1)
    raised = (h + e + 4 * _U * (h.abs() + e) + _TINY).flatten(1)
    minus_inf = torch.full_like(raised, -math.inf)
    runner = torch.full(top.shape, math.nan, dtype=h.dtype)
    pending = integral.flatten(1).clone()
    for k in range(1, 6):
        colour, colours = _colouring(top_value.shape[1:], k)
        for c in range(colours):
            members = pending & (colour == c)
            if not members.any():
                continue
            rows, cols = torch.nonzero(members, as_tuple=True)
            at = top[rows, cols]
            masked, hi, lo = raised.clone(), minus_inf.clone(), minus_inf.clone()
            masked[rows, at] = -math.inf
            hi[rows, at] = ids.flatten(1)[rows, at]
            lo[rows, at] = -ids.flatten(1)[rows, at]
            pooled = node.evaluate(torch.cat([masked, hi, lo]).reshape(3 * batch, *h.shape[1:])).flatten(1)
            r, own_hi, own_lo = pooled[:batch], pooled[batch:2 * batch], -pooled[2 * batch:]
            alone = members & (own_hi == top.to(h.dtype)) & (own_lo == top.to(h.dtype))
            runner[alone] = r[alone]
            pending &= ~alone
        if not pending.any():
            break
    moving_max = node.evaluate(torch.where(moving.flatten(1), raised, minus_inf).reshape(h.shape)).flatten(1)
    constant = low_top > moving_max
    room = torch.fmax(low_top - runner, low_top - moving_max)
    moving_out = ~constant & moving.flatten(1).gather(1, top)
    return room.reshape(top_value.shape), moving_out.reshape(top_value.shape)


def _colouring(shape: tuple[int, ...], k: int) -> tuple[torch.Tensor, int]:
    """Classes of the output positions of a pooling with output ``shape = (channels, *spatial)``:
    the spatial coordinates modulo ``k``, flattened to ``(1, numel)``; and the number of classes."""
    spatial = shape[1:]
    colour = torch.zeros(spatial, dtype=torch.long)
    if spatial:
        for coord in torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij"):
            colour = colour * k + coord % k
    return colour.reshape(1, -1).expand(shape[0], -1).reshape(1, -1), k ** len(spatial)


def _step_along(graph: Graph, enc: Enclosure, room: dict[str, torch.Tensor]) -> torch.Tensor:
    """Largest ``t`` per point such that the first-order motion of every checked quantity along
    ``x + s v``, ``|s| <= t``, stays within its ``room`` (exact for piecewise-linear networks, whose
    pre-activations are affine in ``s`` inside a region), from the tangents of ``enc``; ``inf``
    when nothing is checked."""
    step = torch.full((next(iter(enc.values.values())).shape[0],), math.inf, dtype=torch.float64)
    for name, r in room.items():
        node = graph.nodes[name]
        rate = enc.tangents[node.inputs[0]].abs()
        if isinstance(node, MaxPool):
            rate = 2 * node.evaluate(rate)  # the top and the runner-up move by at most the window's max
        ratio = torch.nan_to_num(r.clamp_min(0) / rate, nan=math.inf)
        step = torch.minimum(step, ratio.flatten(1).amin(dim=1))
    return step


# ---- values of witnesses --------------------------------------------------------------------------
def pair_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(low, high)`` per pair of the batches ``x, y`` with
    ``low <= ||f(x) - f(y)|| / ||x - y|| <= high`` for the exact ``f`` (:func:`enclose`):
    with ``d = fl(f~(x) - f~(y))`` and ``E = e(x) + e(y) + 2 u |d|``,
    ``||f(x) - f(y)|| in ||d|| -+ ||E||``, and ``||x - y|| = ||fl(x - y)|| (1 +- 2u)``, each norm
    rounded outwards. ``low`` is clamped at 0; both are NaN where ``x == y``. Where that interval
    is wider than :data:`_WIDE` of ``high`` (deep nets), the pair is evaluated exactly instead
    (:func:`~lipbound.methods.rounding_exact.exact_pair_bounds`, piecewise-linear graphs, capped)."""
    low, high = _float_pair_bounds(graph, x, y)
    wide = ~(high - low <= _WIDE * high) & (x != y).flatten(1).any(dim=1) & _finite(x) & _finite(y)
    if wide.any():
        e_low, e_high, _ = exact_pair_bounds(graph, x[wide], y[wide])
        done = torch.isfinite(e_low)
        low[wide], high[wide] = torch.where(done, e_low, low[wide]), torch.where(done, e_high, high[wide])
    return low, high


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(x).flatten(1).all(dim=1)


def _float_pair_bounds(graph: Graph, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_bounds` from the float64 enclosure alone."""
    n = x.shape[0]
    enc = enclose(graph, torch.cat([x, y]))
    out, err = enc.values[graph.output].flatten(1), enc.errors[graph.output].flatten(1)
    d = out[:n] - out[n:]
    m = d.shape[1]
    spread = _up(err[:n] + err[n:] + 2 * _U * d.abs(), 3).norm(dim=1)
    slack = _up(spread, m)
    nd = d.norm(dim=1)
    g = 2 * _gamma(m + 4)
    num_low, num_high = nd * (1 - g) - slack, nd * (1 + g) + slack
    dx = (x - y).flatten(1)
    nx = dx.norm(dim=1)
    gx = 2 * _gamma(dx.shape[1] + 4) + 2 * _U
    den_low, den_high = nx * (1 - gx), nx * (1 + gx)
    low = num_low.clamp_min(0) / den_high * (1 - 2 * _U)
    high = num_high / den_low * (1 + 2 * _U)
    same = ~(den_low > 0)
    return low.masked_fill(same, math.nan), high.masked_fill(same, math.nan)


def jacobian_witness_values(graph: Graph, x: torch.Tensor, v: torch.Tensor,
                            box: Region | None = None) -> tuple[torch.Tensor, list[str | None]]:
    """Values of the Jacobian witnesses ``(x_b, v_b)`` (module doc) and the reason of each failure:
    where :func:`region_check` passes, the rigorous lower end of ``||Df(x) v|| / ||v||`` from the
    forward tangent of :func:`enclose`, once the central difference pair ``(x - h v, x + h v)``
    (rigorous interval of :func:`pair_bounds`) agrees with that tangent's interval to a relative
    ``1e-6``; NaN elsewhere. ``graph`` must be float64 on the CPU."""
    enc = enclose(graph, x, v)
    check = region_check(graph, x, box, enc)
    reasons = list(check.reasons)
    t, e = enc.tangents[graph.output].flatten(1), enc.tangent_errors[graph.output].flatten(1)
    g = 2 * _gamma(t.shape[1] + 4)
    spread = _up(e, t.shape[1]).norm(dim=1) * (1 + g)
    nv = v.flatten(1).norm(dim=1)
    gv = 2 * _gamma(v[0].numel() + 4)
    nv_low, nv_high = nv * (1 - gv), nv * (1 + gv)
    low = ((t.norm(dim=1) * (1 - g) - spread).clamp_min(0) / nv_high) * (1 - 2 * _U)
    high = ((t.norm(dim=1) * (1 + g) + spread) / nv_low) * (1 + 2 * _U)
    scale = x.flatten(1).norm(dim=1).clamp_min(1.0)
    h = torch.minimum(0.5 * _step_along(graph, enc, check.room), _H_REL * scale / nv)
    h = torch.nan_to_num(h, nan=0.0, posinf=0.0).reshape(-1, *([1] * (x.dim() - 1)))
    q_low, q_high = _float_pair_bounds(graph, x - h * v, x + h * v)
    agree = (q_low <= high * (1 + _RTOL)) & (low <= q_high * (1 + _RTOL))
    ok = check.valid & agree & torch.isfinite(low) & torch.isfinite(high) & (nv > 0)
    for b in range(len(reasons)):
        if reasons[b] is None and not bool(ok[b]):
            reasons[b] = "v is zero or not finite" if not nv[b] > 0 else (
                f"its directional derivative, in [{float(low[b]):.17g}, {float(high[b]):.17g}], disagrees "
                f"with the central difference, in [{float(q_low[b]):.17g}, {float(q_high[b]):.17g}]")
    low = low.masked_fill(~ok, math.nan)
    # too wide to confirm: the exact re-check (rounding_exact), where x, v are fine and in the box
    wide = ~ok & _wide(enc) & _finite(x) & _finite(v) & (nv > 0) & (box.contains(x) if box is not None else True)
    if wide.any():
        at = torch.nonzero(wide).flatten().tolist()
        e_low, e_reasons = exact_jacobian_values(graph, x[wide], v[wide], box)
        for i, b in enumerate(at):
            low[b] = e_low[i]
            reasons[b] = None if e_reasons[i] is None else f"{reasons[b]}; exact re-check: {e_reasons[i]}"
    return low, reasons


def _wide(enc: Enclosure) -> torch.Tensor:
    """Per batch element, whether some node's error bound passes :data:`_WIDE` of its values' norm."""
    out = torch.zeros(next(iter(enc.values.values())).shape[0], dtype=torch.bool)
    for name, value in enc.values.items():
        out |= ~(enc.errors[name].flatten(1).norm(dim=1) <= _WIDE * value.flatten(1).norm(dim=1))
    return out


