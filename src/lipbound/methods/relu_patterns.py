"""A part bound of a ReLU chain that drops the activation patterns no point of the part has: the
batched, LP-free cousin of ``exact`` on a part (:mod:`.part_exact`), for the top parts of the batched
``local-bab`` search (:mod:`.local_bab_batch`).

**What is bounded.** On a box ``P`` every point ``x`` where the chain is differentiable has the Jacobian
``J(D(x)) = W_K D_{K-1} ... D_1 W_1`` of its activation pattern ``D(x)`` (``D_i = 1`` where
``z_i(x) > 0``, 0 where ``z_i(x) < 0``; where ``z_i(x) = 0`` either value, see below), and for the
convex ``P`` the constant (L2 -> L2) on ``P`` is the essential supremum of ``||Df(x)||_2`` over its
interior (module doc of :mod:`.local_bab`). So ``max ||J(D)||`` over **any set of patterns that
contains every pattern of a point of P** is a **certified upper bound** on ``P``. The slope-box
bounds (:mod:`.relu_boxes`, :mod:`.relu_zonotope`) take every combination of the unstable neurons'
slopes; here the patterns are built layer by layer and a prefix is dropped when no point of ``P``
can have it.

**The tree.** A prefix ``(D_1, ..., D_{k-1})`` fixes the map ``x -> z_k`` on the points that have it:
the affine ``z_k^D(x) = W_k D_{k-1} (... D_1 (W_1 x + b_1) ...) + b_k``, which agrees with the
network's ``z_k(x)`` at every such point. Over the box, ``z_k^D`` ranges in ``[lo_i, hi_i]``
(exactly: a linear form's extremes over a box), and ``z_k(x)`` in the part's sound pre bounds
``[l_i, u_i]`` (:func:`.relu_boxes.pre_bounds`). So at a point with this prefix ``z_i(x)`` lies in
``[max(lo_i, l_i), min(hi_i, u_i)]``:

* empty: **no point of P has the prefix**; it is dropped;
* ``>= 0``: the neuron's slope is 1 at every such point (where ``z_i = 0`` on an open set its slope
  does not change ``Df``, the gradient of ``z_i`` being 0 there; elsewhere ``z_i = 0`` on a null set);
* ``<= 0``: slope 0, likewise;
* else both slopes are kept as two prefixes.

Every point's pattern keeps every one of its prefixes, so the leaves contain all patterns of the
points of ``P``; each leaf's ``J(D)`` is one matrix, and the part's bound is the largest leaf norm.
A neuron unstable on the part but decided under the prefix (its ``z^D`` is exact, not relaxed
through the earlier unstable neurons) is not branched, and the neurons are branched one at a time
(the most lopsided first), each branch's sign a constraint ``c . x + c_0 <= 0`` that every point of
the row satisfies: the row's box is cut to its constraints (:func:`_shrink`: it still holds every
point with the prefix, so the ranges above may be taken over it) before the ranges are taken again,
and at the end of each layer a row whose constraints a Farkas combination proves empty on its box
is dropped (:func:`_empty`). The tree is often much smaller than the ``2^k`` slope vertices.

**Pruning and giving up.** After each layer ``k`` a row's completions all have Jacobians in
``G_k H``, with ``H`` the prefix's exact Jacobian of layer ``k``'s output and ``G_k`` the part's
backward enclosure of the later layers over its slope box (:func:`.relu_boxes.backward_enclosures`,
met as in :mod:`.relu_boxes`): that norm bound covers the row's whole subtree. A row bounded by at
most ``seed`` is dropped (the part's bound is then at least ``seed``: what the search needs to know
of a part is only whether it exceeds its lower end). A part whose tree passes ``max_leaves`` rows
stops branching where it is: each of its rows is bounded the same way, its open neurons in ``[0, 1]``,
so the bound is still certified, only looser.

**Rounding.** Each row carries its affine map as a centre ``F`` (``(n, d + 1)``, the constant
last) and a radius ``Fr`` enclosing the exact map's coefficients: through ``W* = W + dW``,
``|dW| <= E``, ``b* = b + db``, ``|db| <= e`` (:class:`.relu_boxes.Layer`) the centre is ``W F + b``
and the radius ``|W| (Fr + gamma_{n+1} |F|) + E (|F| + Fr) + e + gamma_{n+1} |b|`` (Higham §3.1;
a slope 0 or 1 is exact). The range of a form over the box is widened by the radius times
``max(|low|, |high|)`` and by its own rounding (:func:`_ranges`), outward; the leaf Jacobians go
to :func:`.relu_boxes.norm_bound` as ``C +- R``. So every test above holds for the exact network.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .float_error import UNIT_ROUNDOFF, gamma, round_up
from .relu_boxes import Layer, backward_enclosures, interval_product, norm_bound

__all__ = ["PatternTree", "farkas_proves_empty", "pattern_bound", "pattern_tree"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), each (B, n), float64


class PatternTree(NamedTuple):
    """A batch of pattern trees, one per box, after the last layer. ``rest`` ``(B,)``: the largest bound of
    a box's rows other than its leaves (rows stopped at ``max_leaves``; ``seed`` when rows were pruned, or
    none: ``seed`` too); ``claim`` ``(B,)``: the box has such rows (a box whose every row is dropped as
    empty makes no claim). The **leaves**, the rows whose every neuron is decided (one activation pattern
    each, its exact Jacobian enclosed by ``C +- R``): ``box`` ``(L,)``, ``value`` ``(L,)`` (the norm
    bound of that enclosure, > ``seed``), their branched signs ``A`` ``(L, k, d + 1)`` (``c . x + c_0 <= 0``
    at every point of the leaf; zero rows pad) and ``[low, high]`` ``(L, d)``, the part of the box they
    allow. Every point of a box (where the chain is differentiable) has the Jacobian of a leaf of it, or
    lies in a stopped or pruned row, so :meth:`bound` is certified; dropping from it a leaf proved empty
    (:func:`farkas_proves_empty`) keeps it so."""

    rest: torch.Tensor
    claim: torch.Tensor
    box: torch.Tensor
    value: torch.Tensor
    A: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def bound(self, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Certified upper bounds ``(B,)``: per box the largest of ``rest`` and its leaves' values, the
        leaves restricted to ``keep`` (a mask ``(L,)``: those not proved empty); ``inf`` (no claim) for a box
        with no row left."""
        keep = torch.ones_like(self.box, dtype=torch.bool) if keep is None else keep
        out = self.rest.clone()
        out.scatter_reduce_(0, self.box[keep], self.value[keep], "amax")
        reached = self.claim.clone()
        reached[self.box[keep]] = True
        return torch.where(reached, out, torch.inf)


def pattern_bound(layers: list[Layer], pre: list[Bounds], low: torch.Tensor, high: torch.Tensor,
                  seed: float = 0.0, max_leaves: int = 512, passes: int = 2, farkas: int = 24,
                  rows: int = 32768) -> torch.Tensor:
    """Certified upper bounds ``(B,)`` of the constant (L2 -> L2) of the chain ``layers`` on each box
    ``[low_b, high_b]`` (``(B, d)`` float64) from its sound pre bounds ``pre`` (module doc), each at
    least ``seed``: :meth:`PatternTree.bound` of :func:`pattern_tree` (same arguments)."""
    return pattern_tree(layers, pre, low, high, seed, max_leaves, passes, farkas, rows).bound()


def pattern_tree(layers: list[Layer], pre: list[Bounds], low: torch.Tensor, high: torch.Tensor,
                 seed: float = 0.0, max_leaves: int = 512, passes: int = 2, farkas: int = 24,
                 rows: int = 32768) -> PatternTree:
    """The pattern trees (:class:`PatternTree`) of the chain ``layers`` on the boxes ``[low_b, high_b]``
    (``(B, d)`` float64) from their sound pre bounds ``pre`` (module doc); rows bounded by at most
    ``seed`` are pruned; ``max_leaves``: most rows of a box's tree; ``passes``: rounds of constraint
    propagation after each branch (:func:`_shrink`); ``farkas``: ascent steps of the emptiness test at the
    end of each layer (:func:`_empty`; 0: none); ``rows``: most tree rows held at once (memory): the boxes
    go through in chunks."""
    B, d = low.shape
    per = max(1, rows // (2 * max_leaves))
    back = backward_enclosures(layers, pre)
    trees = [_chunk(layers, [(l[s: s + per], u[s: s + per]) for l, u in pre],
                    [(c[s: s + per], r[s: s + per]) for c, r in back], low[s: s + per],
                    high[s: s + per], seed, max_leaves, passes, farkas)
             for s in range(0, B, per)]
    if not trees:
        empty = torch.empty(0, dtype=torch.float64)
        return PatternTree(empty, empty.bool(), empty.long(), empty, empty.reshape(0, 0, d + 1), empty.reshape(0, d),
                           empty.reshape(0, d))
    width = max(t.A.shape[1] for t in trees)
    starts = [s for s in range(0, B, per)]
    return PatternTree(torch.cat([t.rest for t in trees]), torch.cat([t.claim for t in trees]),
                       torch.cat([t.box + s for t, s in zip(trees, starts)]), torch.cat([t.value for t in trees]),
                       torch.cat([torch.nn.functional.pad(t.A, (0, 0, 0, width - t.A.shape[1])) for t in trees]),
                       torch.cat([t.low for t in trees]), torch.cat([t.high for t in trees]))


class _Rows(NamedTuple):
    """The tree's rows: ``box`` (the box of each row), the forms ``F +- Fr`` ``(rows, n, d + 1)`` of
    the current layer under the row's prefix, its branched signs as constraints ``c . x + c_0 <= 0``
    ``A`` ``(rows, k, d + 1)`` (:func:`_constraint`; zero rows pad), and ``[low, high]`` ``(rows, d)``,
    the part of the row's box they allow (:func:`_shrink`)."""

    box: torch.Tensor
    F: torch.Tensor
    Fr: torch.Tensor
    A: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    def take(self, idx: torch.Tensor) -> "_Rows":
        return _Rows(*(t[idx] for t in self))


def _chunk(layers: list[Layer], pre: list[Bounds], back: list[Bounds], low: torch.Tensor, high: torch.Tensor,
           seed: float, max_leaves: int, passes: int, farkas: int) -> PatternTree:
    """:func:`pattern_tree` on one chunk of boxes: the tree's rows, layer by layer; ``back[k]``:
    the boxes' backward enclosures after ReLU layer ``k``."""
    B, d = low.shape
    F = torch.cat([torch.eye(d, dtype=torch.float64), torch.zeros(d, 1, dtype=torch.float64)], 1).expand(B, d, d + 1)
    rows = _Rows(torch.arange(B), F, torch.zeros_like(F), F.new_zeros(B, 0, d + 1), low, high)
    out = torch.full((B,), seed, dtype=torch.float64)
    live = torch.ones(B, dtype=torch.bool)  # boxes still branching
    pruned = torch.zeros(B, dtype=torch.bool)  # boxes some of whose rows were bounded by the seed
    for layer, (l, u), (Cg, Rg) in zip(layers, pre, back):
        Z, Zr = _affine(layer, rows.F, rows.Fr)
        rows, mid, rad, stopped = _decide(rows._replace(F=Z, Fr=Zr), l, u, live, max_leaves, passes, farkas)
        Fx, Frx = rows.F[..., :-1], rows.Fr[..., :-1]
        H, Hr = mid[..., None] * Fx, round_up(mid[..., None] * Frx + rad[..., None] * (Fx.abs() + Frx), 2)
        bound = norm_bound(*interval_product(Cg[rows.box], Rg[rows.box], H, Hr)) if len(rows.box) else H.new_empty(0)
        low_enough = bound <= seed
        pruned.index_fill_(0, rows.box[low_enough], True)
        out.scatter_reduce_(0, rows.box[stopped], bound[stopped], "amax")  # stopped rows: their bound is final
        go = (~low_enough & ~stopped).nonzero().flatten()
        rows, mid = rows.take(go), mid[go]
        rows = rows._replace(F=mid[..., None] * rows.F, Fr=mid[..., None] * rows.Fr)
    C, R = _affine(layers[-1], rows.F, rows.Fr)
    value = norm_bound(C[..., :-1], R[..., :-1]) if len(rows.box) else C.new_empty(0)
    # a box none of whose rows is left (every one proved empty) makes no claim
    return PatternTree(out, pruned | ~live | (out > seed), rows.box, value, rows.A, rows.low, rows.high)


def _decide(rows: _Rows, l: torch.Tensor, u: torch.Tensor, live: torch.Tensor,
            max_leaves: int, passes: int, farkas: int) -> tuple[_Rows, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every neuron of one layer decided on every row (``rows.F``: its pre-activation forms), one
    neuron branched at a time (module doc): the rows left, their slopes ``mid +- rad`` ``(rows, n)``
    and which rows ``stopped`` (their box passed ``max_leaves`` rows: branching ends, open neurons in
    ``[0, 1]``; such a box is cleared in ``live``). A row whose neuron ranges miss the part's pre
    bounds ``[l, u]`` is dropped; then only the neurons left open are followed (``k`` per row, the
    others' ranges only shrink as the row's box does, so their decisions hold): after each branch
    the row's box is cut to its new sign (:func:`_shrink`) and the open neurons' ranges are taken
    again; a row whose ranges contradict its signs, or whose box is cut to nothing, is dropped; at
    the end, a row whose constraints a Farkas combination proves empty (:func:`_empty`, ``farkas``
    steps; 0: none)."""
    slack = _slack(rows.F, rows.Fr, rows.low, rows.high)
    lo, hi = _ranges(rows.F, slack, rows.low, rows.high)
    lo, hi = torch.maximum(lo, l[rows.box]), torch.minimum(hi, u[rows.box])
    on = lo >= 0
    open_ = ~on & (hi > 0)
    alive = ((lo <= hi).all(1) & (rows.low <= rows.high).all(1)).nonzero().flatten()
    rows, slack, on, open_ = rows.take(alive), slack[alive], on[alive], open_[alive]
    k = int(open_.sum(1).max()) if len(alive) else 0
    idx = torch.argsort((~open_).to(torch.int8), dim=1, stable=True)[:, :k]  # (rows, k): the open neurons first
    valid = open_.gather(1, idx)
    Zo = rows.F.gather(1, idx[..., None].expand(-1, -1, rows.F.shape[2]))
    So, lb, ub = slack.gather(1, idx), l[rows.box].gather(1, idx), u[rows.box].gather(1, idx)
    parent, A, low, high = torch.arange(len(alive)), rows.A, rows.low, rows.high
    so, sf = torch.zeros_like(valid), torch.zeros_like(valid)  # signs of the followed neurons: on, off
    done: list[tuple[torch.Tensor, ...]] = []  # parent, so, open, A, low, high
    while len(parent):
        lo, hi = _ranges(Zo[parent], So[parent], low, high)
        lo, hi = torch.maximum(lo, lb[parent]), torch.minimum(hi, ub[parent])
        v = valid[parent]
        dead = (v & (lo > hi)).any(1) | (so & (hi < 0)).any(1) | (sf & (lo > 0)).any(1) | (low > high).any(1)
        so, sf = so | (v & (lo >= 0) & ~sf), sf | (v & (hi <= 0) & ~so)
        opened = v & ~(so | sf)
        count = torch.zeros_like(live, dtype=torch.long)
        for d_parent, *_ in done:
            count.index_add_(0, rows.box[d_parent], torch.ones_like(d_parent))
        count.index_add_(0, rows.box[parent], torch.where(dead, 0, 1 + opened.any(1).long()))
        live &= count <= max_leaves
        finished = ~dead & (~opened.any(1) | ~live[rows.box[parent]])
        done.append((parent[finished], so[finished], opened[finished], A[finished], low[finished], high[finished]))
        go = (~dead & ~finished).nonzero().flatten()
        parent, so, sf, opened, lo, hi = parent[go], so[go], sf[go], opened[go], lo[go], hi[go]
        A, low, high = A[go], low[go], high[go]
        if not len(parent):
            break
        # the most lopsided open neuron (its thin side is the likelier to be cut away)
        score = torch.where(opened, -torch.minimum(-lo, hi) / (hi - lo), -torch.inf)
        pick = torch.nn.functional.one_hot(score.argmax(dim=1), k).to(torch.bool)
        both = torch.arange(len(parent)).repeat(2)
        parent, so, sf, pick = parent[both], so[both], sf[both], pick[both]
        A, low, high = A[both], low[both], high[both]
        positive = (torch.arange(len(both)) < len(both) // 2)[:, None]
        so, sf = so | (pick & positive), sf | (pick & ~positive)
        A = torch.cat([A, _constraint(Zo[parent], So[parent], pick, positive[:, 0])[:, None]], dim=1)
        low, high = _shrink(A, low, high, passes)
    if not done:  # no row entered the layer
        empty = torch.zeros(0, rows.F.shape[1], dtype=torch.float64)
        return rows, empty, empty, torch.zeros(0, dtype=torch.bool)
    width = max(t[3].shape[1] for t in done)
    parent, so, opened, A, low, high = (torch.cat(t) for t in zip(*[
        (p, s, o, torch.nn.functional.pad(a, (0, 0, 0, width - a.shape[1])), lw, hg) for p, s, o, a, lw, hg in done]))
    # one constraint: the box cut already decides (a half-space meets a box iff its cut is not empty)
    keep = (~_empty(A, low, high, farkas)).nonzero().flatten() if farkas > 0 and A.shape[1] > 1 \
        else torch.arange(len(parent))
    parent, so, opened, A, low, high = parent[keep], so[keep], opened[keep], A[keep], low[keep], high[keep]
    rows = _Rows(rows.box[parent], rows.F[parent], rows.Fr[parent], A, low, high)
    sel = idx[parent]
    on = on[parent].scatter(1, sel, on[parent].gather(1, sel) | so)
    open_ = torch.zeros_like(on).scatter(1, sel, opened)
    mid = on.to(torch.float64) + 0.5 * open_
    return rows, mid, 0.5 * open_.to(torch.float64), open_.any(1)


def _affine(layer: Layer, F: torch.Tensor, Fr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forms ``(rows, m, d + 1)`` of ``W* h + b*`` from those of ``h`` ``(rows, n, d + 1)``
    (centre, radius; module doc)."""
    n = layer.W.shape[1]
    Z = torch.einsum("mn,rnc->rmc", layer.W, F)
    Z[..., -1] += layer.b
    aF = F.abs()
    Zr = torch.einsum("mn,rnc->rmc", layer.W.abs(), Fr + gamma(n + 1) * aF) \
        + torch.einsum("mn,rnc->rmc", layer.E, aF + Fr)
    Zr[..., -1] += layer.e + gamma(n + 1) * layer.b.abs()
    return Z, round_up(Zr, 2 * n + 4)


def _slack(Z: torch.Tensor, Zr: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``(rows, m)``: what the radius ``Zr`` and the rounding of a range's sums (``gamma_{d+2}`` of
    their magnitudes) can change in the forms ``Z`` over each row's box ``[low, high]`` (rows, d),
    or any box inside it: ``<ar, |x|max> + ar_0 + gamma_{d+2} (<|a|, |x|max> + |a_0|)``, rounded up."""
    xmax = torch.maximum(low.abs(), high.abs())[:, None, :]
    d = Z.shape[-1] - 1
    mag = (Z[..., :-1].abs() * xmax).sum(-1) + Z[..., -1].abs()
    return round_up(gamma(d + 2) * mag + (Zr[..., :-1] * xmax).sum(-1) + Zr[..., -1], d + 4)


def _ranges(Z: torch.Tensor, slack: torch.Tensor, low: torch.Tensor,
            high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigorous ``(lo, hi)`` ``(rows, m)`` over the row's box of every form ``a . x + a_0`` of ``Z``
    known up to ``slack`` (:func:`_slack`, taken on this box or a larger one):
    ``<a+, low> + <a-, high> + a_0`` and its mirror, widened by the slack and ``2u`` of the result."""
    a, a0 = Z[..., :-1], Z[..., -1]
    lo_x, hi_x = low[:, None, :], high[:, None, :]
    lo = (a.clamp(min=0) * lo_x + a.clamp(max=0) * hi_x).sum(-1) + a0
    hi = (a.clamp(min=0) * hi_x + a.clamp(max=0) * lo_x).sum(-1) + a0
    return (lo - round_up(slack + 2 * UNIT_ROUNDOFF * lo.abs(), 3),
            hi + round_up(slack + 2 * UNIT_ROUNDOFF * hi.abs(), 3))


def _constraint(Z: torch.Tensor, slack: torch.Tensor, pick: torch.Tensor, on: torch.Tensor) -> torch.Tensor:
    """The sign of each row's branched neuron (``pick`` ``(rows, k)``, one per row; ``on``: ``z >= 0``,
    else ``z <= 0``) as ``c . x + c_0 <= 0`` ``(rows, d + 1)``, true at every point of the row's box
    with that sign: ``c = -a`` or ``a`` for the neuron's form ``a . x + a_0`` in ``Z``, and ``c_0``
    lowered by its ``slack`` (:func:`_slack`, on that box or a larger one) and its own rounding."""
    z, s = (pick[..., None] * Z).sum(1), (pick * slack).sum(1)  # exact: one non-zero term each
    c = torch.where(on[:, None], -z, z)
    c[:, -1] = c[:, -1] - round_up(s + 2 * UNIT_ROUNDOFF * c[:, -1].abs(), 3)
    return c


def _empty(A: torch.Tensor, low: torch.Tensor, high: torch.Tensor, steps: int) -> torch.Tensor:
    """``(rows,)``: True where ``{x in [low, high] : c_j . x + c_{0j} <= 0 for all j}`` (``A``
    ``(rows, k, d + 1)``) is proved empty by Farkas: a ``lam >= 0`` with
    ``psi(lam) = min_box sum_j lam_j (c_j . x + c_{0j}) > 0`` (the combination is positive on the whole
    box, yet <= 0 at a point of the set). ``psi`` is concave; ``steps`` of exponentiated-gradient
    ascent on the simplex (each constraint's supergradient scaled by its size on the box) choose
    ``lam``: only a way of choosing numbers. The best ``lam`` is checked by :func:`farkas_proves_empty`;
    an unproved set is kept."""
    c, c0 = A[..., :-1], A[..., -1]
    rows, k, d = c.shape
    size = (c.abs() * (high - low)[:, None, :]).sum(-1) + 1e-300  # (rows, k): a constraint's spread on the box
    lam = torch.full((rows, k), 1.0 / k, dtype=torch.float64)
    best, best_lam = torch.full((rows,), -torch.inf, dtype=torch.float64), lam
    for _ in range(steps):
        g = (lam[..., None] * c).sum(1)
        x = torch.where(g > 0, low, high)  # a minimiser of <g, x> on the box
        value = (c * x[:, None, :]).sum(-1) + c0  # (rows, k): the supergradient
        psi = (lam * value).sum(1)
        better = psi > best
        best, best_lam = torch.where(better, psi, best), torch.where(better[:, None], lam, best_lam)
        lam = lam * torch.exp((2.0 * value / size).clamp(-30, 30))
        lam = lam / lam.sum(1, keepdim=True)
    return farkas_proves_empty(A, low, high, best_lam)


def farkas_proves_empty(A: torch.Tensor, low: torch.Tensor, high: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``(rows,)``: True where the multipliers ``lam >= 0`` ``(rows, k)`` prove
    ``{x in [low, high] : c_j . x + c_{0j} <= 0 for all j}`` (``A`` ``(rows, k, d + 1)``) empty:
    ``psi = min_box sum_j lam_j (c_j . x + c_{0j}) > 0`` (the combination is positive on the whole box, yet
    <= 0 at a point of the set), ``psi`` computed in float64 with the rounding of its sums
    (``gamma_{k+d+2}`` of their magnitudes, and ``2u`` of ``psi``) moved against it. However ``lam`` was
    chosen (ascent, an LP's duals), a True is a proof; a negative or non-finite ``lam`` proves nothing."""
    c, c0 = A[..., :-1], A[..., -1]
    k, d = c.shape[1], c.shape[2]
    xmax = torch.maximum(low.abs(), high.abs())[:, None, :]
    g = (lam[..., None] * c).sum(1)
    psi = (g.clamp(min=0) * low + g.clamp(max=0) * high).sum(-1) + (lam * c0).sum(1)
    mag = (lam * ((c.abs() * xmax).sum(-1) + c0.abs())).sum(1)
    valid = (lam >= 0).all(1) & torch.isfinite(lam).all(1)
    return valid & (psi - round_up(gamma(k + d + 2) * mag + 2 * UNIT_ROUNDOFF * psi.abs(), 3) > 0)


def _shrink(A: torch.Tensor, low: torch.Tensor, high: torch.Tensor, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's box ``[low, high]`` ``(rows, d)`` cut to the points that satisfy its constraints
    ``c . x + c_0 <= 0`` (``A`` ``(rows, k, d + 1)``): per axis ``j`` with ``c_j != 0``,
    ``c_j x_j <= -c_0 - min_box sum_{i != j} c_i x_i`` (interval constraint propagation, ``passes``
    rounds, every constraint against the same box in a round; the sums' rounding ``gamma_{d+3}`` of
    their magnitude and the quotient's ``2u`` moved outward). A box cut to nothing proves the prefix
    empty (the caller drops it)."""
    c, c0 = A[..., :-1], A[..., -1]
    d = c.shape[-1]
    for _ in range(passes):
        lo_x, hi_x = low[:, None, :], high[:, None, :]
        least = c.clamp(min=0) * lo_x + c.clamp(max=0) * hi_x  # (rows, k, d): min of c_i x_i on the box
        xmax = torch.maximum(low.abs(), high.abs())[:, None, :]
        slack = round_up(gamma(d + 3) * ((c.abs() * xmax).sum(-1) + c0.abs()), d + 4)
        room = (slack - c0)[..., None] - (least.sum(-1, keepdim=True) - least)  # >= c_j x_j (up to rounding)
        room = room + round_up(2 * UNIT_ROUNDOFF * room.abs(), 1)
        q = room / c
        q_up, q_down = q + round_up(2 * UNIT_ROUNDOFF * q.abs(), 1), q - round_up(2 * UNIT_ROUNDOFF * q.abs(), 1)
        high = torch.minimum(high, torch.where(c > 0, q_up, torch.inf).amin(dim=1))
        low = torch.maximum(low, torch.where(c < 0, q_down, -torch.inf).amax(dim=1))
    return low, high
