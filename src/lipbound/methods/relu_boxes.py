"""Certified bounds of a ReLU chain on many input boxes at once (the batched part bound of
``local-bab``, :mod:`.local_bab_batch`).

**The network.** :func:`relu_chain` reads a graph that is a chain ``f = A_K o relu o ... o relu o A_1``
of affine maps ``A_k z = W_k z + b_k`` (consecutive affine nodes composed) as float64 matrices with
**enclosures**: the exact map's ``(W*, b*)`` satisfy ``|W* - W| <= E`` and ``|b* - b| <= e``
element-wise. Each node's matrix is its operator applied to the identity, whose rounding error
:func:`.float_error.linear_error` bounds; a product ``W_2 W_1`` adds ``E_2 (|W_1| + E_1) + |W_2| E_1 +
gamma_n |W_2| |W_1|`` (Higham §3.1), every sum of non-negative terms rounded up (:func:`.float_error.round_up`).

**Pre-activation bounds** (:func:`bound_boxes`, rigorous for the exact network): a symbolic
forward pass (linear relaxations carried forward, as in Neurify's symbolic intervals, and tighter
than IBP). Every neuron ``z_i`` gets linear forms ``L_i(x) <= z_i(x) <= U_i(x)`` on the box;
through an affine layer ``W`` the forms are ``W+ L + W- U`` and ``W+ U + W- L``; a ReLU keeps the
forms of a stably active neuron, zeroes an inactive one, and for ``l < 0 < u`` uses the upper line
``s (z - l)`` with ``s >= u / (u - l)`` rounded up (so the line lies above the ReLU on ``[l, u]``)
and the lower line ``z`` or ``0`` (the one with the smaller area, both valid everywhere). A form's
rounding error ``|dF| |x|_max + |df_0|`` and the weight enclosure ``E |z|_max + e`` (``|z|_max`` from
the previous layer's bounds) are moved into its constant, outward, so each computed form is a
true bound of the exact neuron on the box. The concrete bounds are the forms' minimum and
maximum over the box (rounded outward), intersected with a ``prior`` (a parent box's bounds
hold on its parts). By default each layer's bounds are then intersected with CROWN's
(:func:`.relu_crown.crown_layer`, from the earlier layers' bounds so far; on ACAS Xu sub-boxes it
leaves about half as many neurons unstable) and with those of the forward pass run alone.

**Part bound.** With the pre bounds, each neuron's secant slopes lie in ``{1}``, ``{0}`` or
``[0, 1]``, and for ``x, y`` in the (convex) box ``f(x) - f(y) = J(D) (x - y)`` with
``J(D) = W_K D_{K-1} ... D_1 W_1`` for some admissible diagonals ``D`` (:mod:`.slope_box`). An
interval Jacobian ``|J(D) - C| <= R`` (forward: ``W C``, ``|W| R + E (|C| + R) + gamma_n |W| |C|``;
slope ``m +- r``: ``m C``, ``m R + r (|C| + R)``, exact for ``m, r`` in ``{0, 1/2, 1}``) gives the
**certified upper bound** ``min(||C||_2 + ||R||_F, || |C| + R ||_2)`` of the constant on the box
(the spectral norms of small dense matrices with the library's relative margin, as in
:mod:`.slope_box`). The forward enclosure alone grows through ``|W|`` after the first unstable
layer; so the bound is the least over the **meeting points** ``j``: ``J(D) = G_j H_j`` with ``H_j``
the Jacobian of ReLU layer ``j``'s output (forward enclosure, ``d`` columns) and ``G_j`` the
output's Jacobian with respect to it (backward enclosure from ``W_K``, ``m`` rows: ``[C +- R] W``
gives ``C W``, ``(R + gamma_n |C|) |W| + (|C| + R) E``), multiplied as interval matrices
(``Cg Ch``, ``|Cg| (Rh + gamma_n |Ch|) + Rg (|Ch| + Rh)``), and the backward enclosure alone.
Each encloses every ``J(D)``, so each gives a certified bound; on ACAS Xu sub-boxes the least
of them is 0.35-0.8 times the forward one (median 0.65). With every neuron stable, ``R`` is rounding only and the bound is the norm of
the box's one Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..graph.ir import Activation, Affine, Graph, Input
from ..linalg.spectral import CERTIFIED_RTOL
from .relu_crown import crown_layer
from .float_error import UNIT_ROUNDOFF, gamma, linear_error, round_up

__all__ = ["Layer", "BoxBounds", "chain_relus", "relu_chain", "affine_runs", "bound_boxes", "pre_bounds", "jacobians", "norm_bound",
           "backward_enclosures", "interval_product", "times_slopes", "times_weights", "operator_enclosure"]


@dataclass(frozen=True)
class Layer:
    """``y = W z + b`` (float64, ``W``: ``(out, in)``) enclosing the exact map: ``|W* - W| <= E``,
    ``|b* - b| <= e``."""

    W: torch.Tensor
    E: torch.Tensor
    b: torch.Tensor
    e: torch.Tensor

    def then(self, nxt: "Layer") -> "Layer":
        """The enclosure of ``nxt o self`` (module doc)."""
        n = self.W.shape[0]
        aw, an = self.W.abs(), nxt.W.abs()
        W = nxt.W @ self.W
        E = round_up(nxt.E @ (aw + self.E) + an @ self.E + gamma(n) * (an @ aw), 3 * n)
        b = nxt.W @ self.b + nxt.b
        e = round_up(nxt.E @ (self.b.abs() + self.e) + an @ self.e + nxt.e
                + gamma(n + 1) * (an @ self.b.abs() + nxt.b.abs()), 3 * n + 2)
        return Layer(W, E, b, e)


@dataclass
class BoxBounds:
    """Per box of a batch: ``pre[k] = (l, u)``, ``(B, n_k)`` bounds of the input of ReLU layer
    ``k``; ``value``: ``(B,)`` certified upper bounds of the constant (L2 -> L2) on each box;
    ``unstable``: ``(B,)`` neurons with ``l < 0 < u``; ``smear``: ``(B, d)``, per input
    ``sum_i max|dz_i/dx_d| / (u_i - l_i)`` over the unstable neurons (a branching heuristic)."""

    pre: list[tuple[torch.Tensor, torch.Tensor]]
    value: torch.Tensor
    unstable: torch.Tensor
    smear: torch.Tensor

    def flat_pre(self) -> torch.Tensor:
        """The pre bounds as one ``(B, 2 sum n_k)`` tensor (the ``prior`` of :func:`bound_boxes`)."""
        return torch.cat([t for lu in self.pre for t in lu], dim=1)


def chain_relus(graph: Graph) -> int:
    """The number of ReLUs of ``graph`` when it is a chain that :func:`relu_chain` reads, else 0: from
    its structure alone (each node the only input of the next; affine nodes and ReLUs, a ReLU only
    after an affine node; an affine node last), so no weight is read or converted."""
    count, pending, prev = 0, False, graph.input
    for node in graph:
        if isinstance(node, Input):
            continue
        if node.inputs != [prev]:
            return 0
        prev = node.name
        if isinstance(node, Affine):
            pending = True
        elif isinstance(node, Activation) and _is_relu(node) and pending:
            count, pending = count + 1, False
        else:
            return 0
    return count if pending and prev == graph.output else 0


def relu_chain(graph: Graph) -> list[Layer] | None:
    """``graph`` as affine layers separated by ReLUs (module doc), or None when it is not such a
    chain (:func:`chain_relus`: any other node kind or activation, a branch, an activation last, or
    no ReLU at all: an affine map is left to the part-by-part search)."""
    if not chain_relus(graph):
        return None
    return affine_runs(graph)


def affine_runs(graph: Graph) -> list[Layer | None]:
    """For each activation of ``graph`` (in order), then for its output, the composition of the affine
    nodes since the previous activation as a :class:`Layer` enclosing the exact map (each node by
    :func:`_materialise`, composed by :meth:`Layer.then`); None where there is none (the identity).
    Read in order only: the caller checks that ``graph`` is a chain."""
    layers: list[Layer | None] = []
    pending: Layer | None = None
    for node in graph.to(device="cpu", dtype=torch.float64):
        if isinstance(node, Affine):
            layer = _materialise(node)
            pending = layer if pending is None else pending.then(layer)
        elif isinstance(node, Activation):
            layers.append(pending)
            pending = None
    return [*layers, pending]


def _is_relu(node: Activation) -> bool:
    p = node.pieces
    return p is not None and tuple(p.breakpoints) == (0.0,) and tuple(p.slopes) == (0.0, 1.0) \
        and tuple(p.offsets) == (0.0, 0.0)


def _materialise(node: Affine) -> Layer:
    """The node's matrix with its error bound (:func:`operator_enclosure`) and its bias."""
    W, E = operator_enclosure(node.op)
    b = torch.zeros(W.shape[0], dtype=torch.float64) if node.bias is None else node.bias.reshape(-1).to(torch.float64)
    return Layer(W, E, b, torch.zeros_like(b))


def operator_enclosure(op) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, E)``: the float64 operator ``op``'s matrix (its action on the identity, ``(out, in)``) and
    :func:`.float_error.linear_error`'s bound ``E >= |W* - W|`` of it, ``W*`` the exact map."""
    k = op.in_numel
    eye = torch.eye(k, dtype=torch.float64).reshape(k, *op.in_shape)
    cols, err = linear_error(op, eye, torch.zeros_like(eye))
    return cols.reshape(k, -1).T.contiguous(), err.reshape(k, -1).T.contiguous()


def _lower(forms: torch.Tensor, low: torch.Tensor, high: torch.Tensor, xmax: torch.Tensor) -> torch.Tensor:
    """A rigorous lower bound of ``a . x + a_0`` over each box, for forms ``(n, B, d + 1)``
    (``a_0`` last): ``(n, B)``."""
    a, a0 = forms[..., :-1], forms[..., -1]
    val = (a.clamp(min=0) * low + a.clamp(max=0) * high).sum(-1) + a0
    mag = (a.abs() * xmax).sum(-1) + a0.abs()
    return _shift_down(val, gamma(low.shape[1] + 2) * mag)


def _shift_down(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """A float at most ``v - s`` (exactly), for ``s >= 0``: the subtraction's own rounding is
    covered by ``2u |v|`` and :func:`_up`'s margin."""
    return v - round_up(s + 2 * UNIT_ROUNDOFF * v.abs(), 3)


def _affine_forms(layer: Layer, L: torch.Tensor, U: torch.Tensor, zmax: torch.Tensor,
                  xmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forms ``(m, B, d + 1)`` of ``W* z + b*`` from those of ``z`` (module doc), rounding and
    enclosure moved into the constants; ``zmax`` ``(n, B)`` bounds ``|z|``."""
    n = layer.W.shape[1]
    wp, wn = layer.W.clamp(min=0), layer.W.clamp(max=0)
    L2, U2 = _matmul(wp, L) + _matmul(wn, U), _matmul(wp, U) + _matmul(wn, L)
    L2[..., -1] += layer.b[:, None]
    U2[..., -1] += layer.b[:, None]
    mag = _matmul(layer.W.abs(), torch.maximum(L.abs(), U.abs()))
    slack = gamma(2 * n + 2) * ((mag[..., :-1] * xmax).sum(-1) + mag[..., -1] + layer.b.abs()[:, None])
    slack = round_up(slack + layer.E @ zmax + layer.e[:, None], n + xmax.shape[1] + 4)
    L2[..., -1] = _shift_down(L2[..., -1], slack)
    U2[..., -1] = -_shift_down(-U2[..., -1], slack)
    return L2, U2


def _relu_forms(L: torch.Tensor, U: torch.Tensor, l: torch.Tensor, u: torch.Tensor,
                xmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forms of ``relu(z)`` from those of ``z`` and its bounds ``[l, u]`` ``(n, B)`` (module doc)."""
    on, unstable = l >= 0, (l < 0) & (u > 0)
    alpha = (on | (unstable & (u > -l))).to(torch.float64)
    s = torch.where(unstable, u / (u - l).where(unstable, torch.ones_like(u)) * (1 + 4 * UNIT_ROUNDOFF), on.to(torch.float64))
    L2 = L * alpha[..., None]
    U2 = U * s[..., None]
    shift = torch.where(unstable, s * l, torch.zeros_like(l))
    err = gamma(3) * ((U2[..., :-1].abs() * xmax).sum(-1) + U2[..., -1].abs() + shift.abs())
    U2[..., -1] = -_shift_down(shift - U2[..., -1], torch.where(unstable, err, torch.zeros_like(err)))
    return L2, U2


def bound_boxes(layers: list[Layer], low: torch.Tensor, high: torch.Tensor,
                prior: torch.Tensor | None = None, vertex_units: int = 0, crown: bool = True,
                full_units: int = 0) -> BoxBounds:
    """Pre bounds and the certified part bound (module doc) of each box ``[low_b, high_b]``
    (``(B, d)`` float64); ``prior``: sound pre bounds of enclosing boxes (:meth:`BoxBounds.flat_pre`);
    ``vertex_units``: unstable neurons per box whose slope vertices are enumerated; ``full_units``:
    on a box with at most this many unstable neurons, all of them (the bound is then the slope box's
    supremum, up to rounding); ``crown``: each layer's bounds also intersected with CROWN's
    (:func:`.relu_crown.crown_layer`) and with the forward pass alone."""
    B, d = low.shape
    pre = pre_bounds(layers, low, high, prior, crown)
    unstable = sum((((l < 0) & (u > 0)).sum(dim=1) for l, u in pre), torch.zeros(B, dtype=torch.long))
    value, smear = _interval_jacobian(layers, pre, unstable, d, vertex_units, full_units)
    return BoxBounds(pre, value, unstable, smear)


def pre_bounds(layers: list[Layer], low: torch.Tensor, high: torch.Tensor, prior: torch.Tensor | None = None,
               crown: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pre bounds of :func:`bound_boxes` alone (``(B, n_k)`` pairs, one per ReLU layer)."""
    if crown:  # the forward pass alone first: CROWN's bounds change the later forward forms both ways
        forward = _pre_bounds(layers, low, high, prior, False)
        prior = torch.cat([t for lu in forward for t in lu], dim=1)
    return _pre_bounds(layers, low, high, prior, crown)


def _pre_bounds(layers: list[Layer], low: torch.Tensor, high: torch.Tensor, prior: torch.Tensor | None,
                crown: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The pre bounds of :func:`bound_boxes`: the forward pass (module doc), each layer intersected
    with ``prior`` and, with ``crown``, with CROWN's bounds from the earlier layers' (``(B, n_k)`` each)."""
    xmax = torch.maximum(low.abs(), high.abs())
    B, d = low.shape
    eye = torch.cat([torch.eye(d, dtype=torch.float64), torch.zeros(d, 1, dtype=torch.float64)], dim=1)
    L = U = eye[:, None, :].expand(d, B, d + 1)  # feature-major forms: (neurons, boxes, d + 1)
    zmax, pre, at = xmax.T, [], 0
    for k, layer in enumerate(layers[:-1]):
        L, U = _affine_forms(layer, L, U, zmax, xmax)
        l, u = _lower(L, low, high, xmax), -_lower(-U, low, high, xmax)
        if prior is not None:
            n = l.shape[0]
            l, u = torch.maximum(l, prior[:, at: at + n].T), torch.minimum(u, prior[:, at + n: at + 2 * n].T)
            at += 2 * n
        if crown:
            l, u = (t.T for t in crown_layer(layers, k, pre, low, high, (l.T, u.T)))
        pre.append((l.T, u.T))
        L, U = _relu_forms(L, U, l, u, xmax)
        zmax = u.clamp(min=0)
    return pre


def _interval_jacobian(layers: list[Layer], pre: list[tuple[torch.Tensor, torch.Tensor]], unstable: torch.Tensor,
                       d: int, vertex_units: int = 0, full_units: int = 0,
                       chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """The part bounds and the smear (module doc, :class:`BoxBounds`), the slopes of each box's
    first ``k`` unstable neurons (layer order) enumerated at their vertices (the max of the ``2^k``
    bounds: ``D -> ||J(D)||`` is convex in each slope, :mod:`.slope_box`), ``k`` all of its
    ``unstable`` neurons when they are at most ``full_units``, else at most ``vertex_units``. The
    boxes are grouped by ``k`` (a box's bound does not depend on its group), in chunks of about
    ``chunk`` box-vertex pairs."""
    count = unstable.clamp(max=vertex_units).where(unstable > full_units, unstable)
    value = torch.empty(len(unstable), dtype=torch.float64)
    smear = torch.empty(len(unstable), d, dtype=torch.float64)
    for k in count.unique().tolist():
        idx = (count == k).nonzero().flatten()
        full = bool((unstable[idx] == k).all())  # every unstable neuron at a vertex: no meeting needed
        per = max(1, chunk >> k)
        for s in range(0, len(idx), per):
            sel = idx[s: s + per]
            value[sel], smear[sel] = _vertex_bounds(layers, [(l[sel], u[sel]) for l, u in pre], d, k, not full)
    return value, smear


def _vertex_bounds(layers: list[Layer], pre: list[tuple[torch.Tensor, torch.Tensor]], d: int,
                   k: int, meet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_interval_jacobian` on one chunk of boxes, ``2^k`` vertices each: the slopes of every
    box-vertex pair, the forward enclosures ``H_j`` (of the Jacobian of ReLU layer ``j``'s output,
    feature-major ``(n, pairs, d)``, one matrix product per layer), the backward ones ``G_j`` (of the
    output's Jacobian with respect to it, ``(pairs, m, n)``), and the bound at the best meeting
    point (module doc). Without ``meet`` (every slope at a vertex: ``R`` is rounding only), the
    forward enclosure carried through the last layer alone."""
    B, V = pre[0][0].shape[0] if pre else 1, 2 ** k
    slopes = _slopes(pre, B, k)
    C = torch.eye(d, dtype=torch.float64)[:, None, :].expand(d, B * V, d)
    R = torch.zeros_like(C)
    smear = torch.zeros(B, d, dtype=torch.float64)
    forward = []  # H_j, j = 1 .. K-1
    for layer, (l, u), (mid, rad) in zip(layers, pre, slopes):
        C, R = _forward(layer, C, R)
        unstable = (l < 0) & (u > 0)
        weight = unstable / (u - l).where(unstable, torch.ones_like(u))
        reach = (C.abs() + R).reshape(C.shape[0], B, V, d).amax(dim=2)  # (n, B, d)
        smear += (reach * weight.T[..., None]).sum(dim=0)
        C, R = mid[..., None] * C, round_up(mid[..., None] * R + rad[..., None] * (C.abs() + R), 2)
        forward.append((C, R))
    if not meet:
        C, R = _forward(layers[-1], C, R)
        return norm_bound(C.permute(1, 0, 2), R.permute(1, 0, 2)).reshape(B, V).amax(dim=1), smear
    best = torch.full((B * V,), torch.inf, dtype=torch.float64)
    last = layers[-1]
    Cg = last.W[None].expand(B * V, *last.W.shape)
    Rg = last.E[None].expand_as(Cg)
    for layer, (mid, rad), (Ch, Rh) in zip(reversed(layers[:-1]), reversed(slopes), reversed(forward)):
        best = torch.minimum(best, norm_bound(*interval_product(Cg, Rg, Ch.permute(1, 0, 2), Rh.permute(1, 0, 2))))
        mid, rad = mid.T[:, None, :], rad.T[:, None, :]
        Cg, Rg = times_slopes(Cg, Rg, mid, rad)
        Cg, Rg = times_weights(layer, Cg, Rg)
    best = torch.minimum(best, norm_bound(Cg, Rg))  # the backward enclosure alone (no meet)
    return best.reshape(B, V).amax(dim=1), smear


def _slopes(pre: list[tuple[torch.Tensor, torch.Tensor]], B: int, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per ReLU layer, the slope interval ``mid +- rad`` ``(n, pairs)`` of every box-vertex pair
    (pair ``i``: box ``i // 2^k``, vertex ``i % 2^k``), the box's first ``k`` unstable neurons (layer
    order) at the vertex's slopes (bit ``b`` of the vertex for the ``b``-th), the others in their hull."""
    V = 2 ** k
    vertex = torch.arange(V).repeat(B)
    seen = torch.zeros(B, dtype=torch.long)  # unstable neurons in the earlier layers
    out = []
    for l, u in pre:
        on, unstable = l >= 0, (l < 0) & (u > 0)
        rank = seen[:, None] + unstable.cumsum(dim=1) - 1  # (B, n): the neuron's place among the unstable
        seen = seen + unstable.sum(dim=1)
        chosen = (unstable & (rank < k)).repeat_interleave(V, dim=0)
        bit = ((vertex[:, None] >> rank.clamp(min=0).repeat_interleave(V, dim=0)) & 1).to(torch.float64)
        mid = torch.where(chosen, bit, (on.to(torch.float64) + 0.5 * unstable).repeat_interleave(V, dim=0)).T
        rad = torch.where(chosen, 0.0, (0.5 * unstable).repeat_interleave(V, dim=0)).T
        out.append((mid, rad))
    return out


def backward_enclosures(layers: list[Layer],
                        pre: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per ReLU layer ``k``, ``(C, R)`` ``(B, m, n_k)`` with ``|G - C| <= R`` for the Jacobian ``G``
    of the output with respect to layer ``k``'s output, ``W_K D_{K-1} ... D_{k+1} W_{k+1}``, for
    every slope diagonal in each box's slope box from its pre bounds ``pre`` (the backward
    enclosure of the module doc: slope ``m +- r`` on the right, then ``[C +- R] W*``)."""
    B = pre[0][0].shape[0]
    last = layers[-1]
    C, R = last.W[None].expand(B, *last.W.shape), last.E[None].expand(B, *last.E.shape)
    out = [(C, R)]
    for layer, (l, u) in zip(reversed(layers[1:-1]), reversed(pre[1:])):
        unstable = ((l < 0) & (u > 0)).to(torch.float64)[:, None, :]
        mid = (l >= 0).to(torch.float64)[:, None, :] + 0.5 * unstable
        C, R = times_slopes(C, R, mid, 0.5 * unstable)
        C, R = times_weights(layer, C, R)
        out.append((C, R))
    return out[::-1]


def times_slopes(C: torch.Tensor, R: torch.Tensor, mid: torch.Tensor,
                 rad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval matrix ``[C +- R]`` times the diagonal of slopes ``mid +- rad`` on the right
    (``mid, rad >= 0``, broadcast over the columns), enclosed: every ``J D`` with ``|J - C| <= R``
    and ``|D - diag(mid)| <= diag(rad)`` satisfies ``|J D - C mid| <= R mid + rad (|C| + R)``. The
    centre ``C mid`` is exact for slopes in ``{0, 1/2, 1}`` (a power of 2 or 0: ReLU slope boxes);
    the radius is rounded up (:func:`.float_error.round_up`: two sums)."""
    return C * mid, round_up(R * mid + rad * (C.abs() + R), 2)


def _forward(layer: Layer, C: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W* [C +- R]`` enclosed (feature-major ``(n, pairs, d)``): ``W C``, ``|W| (R + gamma_n |C|) + E (|C| + R)``."""
    n = layer.W.shape[1]
    return (_matmul(layer.W, C),
            round_up(_matmul(layer.W.abs(), R + gamma(n) * C.abs()) + _matmul(layer.E, C.abs() + R), 2 * n + 4))


def times_weights(layer: Layer, C: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The interval matrix ``[C +- R]`` ``(pairs, m, n)`` times the exact weights ``W*`` of ``layer``
    on the right, enclosed: ``fl(C W)`` as centre, radius ``(R + gamma_n |C|) |W| + (|C| + R) E``
    rounded up (Higham §3.1 for the product's rounding; ``E`` bounds ``|W* - W|``, and the term is
    skipped when ``E`` is zero: exact weights)."""
    n = layer.W.shape[0]
    R = (R + gamma(n) * C.abs()) @ layer.W.abs() + ((C.abs() + R) @ layer.E if layer.E.any() else 0.0)
    return C @ layer.W, round_up(R, 2 * n + 4)


def interval_product(Cg: torch.Tensor, Rg: torch.Tensor, Ch: torch.Tensor,
                     Rh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Cg +- Rg] [Ch +- Rh]`` enclosed (batched): ``Cg Ch``, ``|Cg| (Rh + gamma_n |Ch|) + Rg (|Ch| + Rh)``."""
    n = Cg.shape[-1]
    return Cg @ Ch, round_up(Cg.abs() @ (Rh + gamma(n) * Ch.abs()) + Rg @ (Ch.abs() + Rh), 2 * n + 4)


def norm_bound(C: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``>= ||J||_2`` for every ``J`` with ``|J - C| <= R`` (batched ``(pairs, m, d)``):
    ``min(||C||_2 + ||R||_F, || |C| + R ||_2)`` with the library's relative margin."""
    spread = torch.linalg.matrix_norm(C, ord=2) * (1 + CERTIFIED_RTOL) + round_up(R.flatten(1).norm(dim=1), R[0].numel())
    joint = torch.linalg.matrix_norm(round_up(C.abs() + R, 2), ord=2) * (1 + CERTIFIED_RTOL)
    return torch.minimum(spread, joint)


def _matmul(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``W`` applied to the first axis of ``X`` ``(n, ...)``, as one matrix product."""
    return (W @ X.reshape(X.shape[0], -1)).reshape(W.shape[0], *X.shape[1:])


def jacobians(layers: list[Layer], x: torch.Tensor) -> torch.Tensor:
    """Float64 Jacobians ``(B, m, d)`` of the chain at the points ``x`` ``(B, d)``, ReLU slope 1
    where the input is > 0 (not rigorous: candidates for witnesses, re-checked by
    :class:`~lipbound.methods.witness.PointWitness`)."""
    B, d = x.shape
    z, J = x, torch.eye(d, dtype=torch.float64).expand(B, d, d)
    for k, layer in enumerate(layers):
        z, J = z @ layer.W.T + layer.b, layer.W @ J
        if k < len(layers) - 1:
            on = z > 0
            z, J = z * on, J * on[..., None]
    return J
