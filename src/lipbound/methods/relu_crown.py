"""CROWN pre-activation bounds of a ReLU chain on many input boxes at once (the tight pre bounds of
the batched ``local-bab`` search, :func:`.relu_boxes.bound_boxes`).

**The bound.** For the chain ``z_k = W_k h_{k-1} + b_k``, ``h_k = relu(z_k)``, ``h_0 = x``
(:class:`.relu_boxes.Layer`, with enclosures ``|W* - W| <= E``, ``|b* - b| <= e`` of the exact
maps), and bounds ``l_j <= z_j <= u_j`` of the earlier layers on each box, a lower bound of every
row ``<a, z_k>`` (``a = +e_i`` gives ``l_i``, ``a = -e_i`` gives ``-u_i``) is carried down to the
input, per box:

* through ``z_j = W_j h_{j-1} + b_j``: ``<a, z_j> = <W_j^T a, h_{j-1}> + <a, b_j>``;
* through ``h_j = relu(z_j)``: with the lines ``a_L z <= relu(z) <= s (z - l)`` on ``[l, u]``
  (``a_L`` = 1 when ``u > -l`` else 0, CROWN's choice; ``s >= u / (u - l)`` rounded up, so the
  upper line lies above the ReLU at both ends and so on ``[l, u]``; stable neurons: ``0`` or the
  identity, exactly), ``<a, h_j> >= <a+ a_L + a- s, z_j> - <a-, s l>`` (non-negative
  coefficients take the lower line);
* at the input, the minimum over the box ``<a+, low> + <a-, high>``.

**Rounding** (as :class:`.backsubstitution.Backward`): every step runs in float64 and adds to a
slack a rigorous bound of what its rounding and the weight enclosure can change in the form over
the box: an affine step ``<|a|, (gamma_n |W| + E) |h|_max + e + gamma_n |b|>`` (Higham §3.1,
``|h|_max`` from the earlier bounds), a ReLU step ``<|a|, 2u s |z|_max + gamma_n |s l|>``, the
concretisation ``gamma_{d+4} <|a|, |x|_max>``; the running sums of constants and slacks add
``gamma_{terms+8}`` of their magnitudes. So each bound holds for the exact network on the box,
whatever the earlier bounds are, as long as they are sound.

**First-layer sign constraints** (``beta_iterations > 0``; :mod:`.split_bounds`' leaves): where a box's
first-layer bounds give ``s_i (z_i - bnd_i) >= 0`` (``s_i = 1, bnd_i = l_i >= 0`` or ``s_i = -1,
bnd_i = u_i <= 0``), the form reaching the first layer's output, ``<a, z>``, is bounded below by
``<a - t, z> + <t, bnd>`` for any ``t = beta s`` with ``beta >= 0`` (the dropped term ``<t, z - bnd>`` is
``>= 0`` on the box's inputs that the bounds describe), and the rest goes on with ``a - t``. ``t`` is picked
in plain float64 (sign-supergradient steps on ``min over the box of <a - t, W x + b> + <t, bnd>``, the best
iterate, ``t = 0`` included); what is rigorous is the step itself: ``a' = fl(a - t)`` differs from ``a - t``
by at most ``2u |a'|``, adding ``<2u |a'|, |z|_max>``, and ``<t, bnd>`` its ``gamma_n <|t|, |bnd|>``.

Cost: ``2 n_k`` rows through ``k - 1`` layers of width ``n`` per box, one batched matrix product
per layer; only the neurons unstable on a box are bounded on it. The boxes are **grouped by their
unstable count** (``(2^(j-1), 2^j]``, boxes with none skipped) and each group's rows are padded to
its own largest count, not the batch's; a padding row's result is discarded, so a box's bounds do
not depend on the group it falls in (each row's back-substitution is its own).
"""

from __future__ import annotations

import torch

from .float_error import TINY, UNIT_ROUNDOFF, gamma, round_up

__all__ = ["crown_layer"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), each (B, n), float64


def crown_layer(layers: list, k: int, pre: list[Bounds], low: torch.Tensor, high: torch.Tensor,
                lu: Bounds, beta_iterations: int = 0) -> Bounds:
    """The bounds ``lu`` (``(B, n_k)``) of ``z_k`` (layer ``k``, 0-based, of the chain ``layers``)
    intersected with CROWN's (module doc) on each box ``[low_b, high_b]`` (``(B, d)``), from the
    sound bounds ``pre[j]`` of the earlier layers ``j < k``. Only neurons unstable in ``lu`` are
    recomputed, box by box, in groups of boxes with similar unstable counts. ``beta_iterations > 0``
    adds the Lagrange terms of the first layer's sign constraints (module doc), their multipliers
    chosen by that many sign-supergradient steps."""
    l, u = lu
    if k == 0 or not l.numel():
        return lu
    counts = ((l < 0) & (u > 0)).sum(dim=1)
    group = torch.where(counts > 0, torch.ceil(torch.log2(counts.clamp(min=1).to(torch.float64))), -1.0)
    l, u = l.clone(), u.clone()
    for g in group.unique().tolist():
        if g < 0:
            continue
        idx = (group == g).nonzero().flatten()
        l[idx], u[idx] = _crown_rows(layers, k, [(a[idx], b[idx]) for a, b in pre], low[idx], high[idx],
                                     (l[idx], u[idx]), beta_iterations)
    return l, u


def _crown_rows(layers: list, k: int, pre: list[Bounds], low: torch.Tensor, high: torch.Tensor,
                lu: Bounds, beta_iterations: int) -> Bounds:
    """:func:`crown_layer` on one group of boxes, each with at least one unstable neuron: each box's
    unstable rows first, padded to the group's largest count (the padding's results discarded)."""
    l, u = lu
    unstable = (l < 0) & (u > 0)
    r = int(unstable.sum(dim=1).max())
    B, n = l.shape
    rows = torch.argsort((~unstable).to(torch.int8), dim=1, stable=True)[:, :r]  # (B, r): unstable first
    eye = torch.zeros(B, r, n, dtype=torch.float64).scatter_(2, rows[..., None], 1.0)
    a = torch.cat([eye, -eye], dim=1)  # (B, 2r, n_k): lower bounds of +z_i, -z_i
    const = torch.zeros(B, 2 * r, dtype=torch.float64)
    slack, mag, terms = torch.zeros_like(const), torch.zeros_like(const), 0
    xmax = torch.maximum(low.abs(), high.abs())
    for j in range(k, -1, -1):
        if j == 0 and beta_iterations:
            c, e, a = _sign_terms(a, layers[0], pre[0], low, high, beta_iterations)
            const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
        hmax = xmax if j == 0 else pre[j - 1][1].clamp(min=0)
        c, e, a = _affine_step(layers[j], a, hmax)
        const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
        if j > 0:
            c, e, a = _relu_step(a, *pre[j - 1])
            const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
    c, e = _concretize(a, low, high, xmax)
    const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
    bound = const - round_up(slack, terms + 1) - round_up(gamma(terms + 8) * (mag + const.abs()), 4) - TINY
    # only the unstable rows take the new bounds (the gather/scatter is a permutation; padding is stable)
    keep = unstable.gather(1, rows)
    l = l.scatter(1, rows, torch.where(keep, torch.maximum(l.gather(1, rows), bound[:, :r]), l.gather(1, rows)))
    u = u.scatter(1, rows, torch.where(keep, torch.minimum(u.gather(1, rows), -bound[:, r:]), u.gather(1, rows)))
    return l, u


def _sign_terms(a: torch.Tensor, layer, lu: Bounds, low: torch.Tensor, high: torch.Tensor,
                iterations: int) -> tuple[torch.Tensor, ...]:
    """``<a, z>`` (``z``: the first layer's output) bounded below with the Lagrange terms of its sign
    constraints (module doc): ``(<t, bnd>, slack, a - t)``, ``t`` from :func:`_multipliers`."""
    l, u = lu
    s = (l >= 0).to(torch.float64) - (u <= 0).to(torch.float64)
    bnd = torch.where(s > 0, l, torch.where(s < 0, u, torch.zeros_like(l)))
    t = _multipliers(a, layer, s, bnd, low, high, iterations)
    a2 = a - t
    zmax = torch.maximum(l.abs(), u.abs())
    n = l.shape[1]
    e = _dot(a2.abs(), 2 * UNIT_ROUNDOFF * zmax) + _dot(t.abs(), gamma(n + 2) * bnd.abs())
    return (t @ bnd[..., None])[..., 0], e, a2


def _multipliers(a: torch.Tensor, layer, s: torch.Tensor, bnd: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                 iterations: int) -> torch.Tensor:
    """``t = beta s`` (``beta >= 0``, zero where ``s = 0``) per row: the best, by the plain float value
    of ``min over the box of <a - t, W x + b> + <t, bnd>``, of ``beta = 0`` (CROWN) and the iterates of
    sign-supergradient ascent (the constraint ``s_i (z_i - bnd_i) >= 0`` violated at the minimiser
    raises ``beta_i``). Only picks numbers: the caller's bound is rigorous whatever they are."""
    on = s[:, None, :]
    beta, best_t = torch.zeros_like(a), torch.zeros_like(a)
    best = torch.full(a.shape[:2], -torch.inf, dtype=torch.float64)
    step = a.abs().amax(dim=2, keepdim=True)
    lo, hi = low[:, None, :], high[:, None, :]
    for it in range(iterations + 1):
        t = beta * on
        C = (a - t) @ layer.W
        x = torch.where(C >= 0, lo, hi)
        val = (C * x).sum(-1) + (a - t) @ layer.b + (t * bnd[:, None, :]).sum(-1)
        better = val > best
        best = torch.where(better, val, best)
        best_t = torch.where(better[..., None], t, best_t)
        z = x @ layer.W.T + layer.b
        beta = (beta - step * 0.5 * 0.7 ** it * torch.sign(on * (z - bnd[:, None, :]))).clamp(min=0) * on.abs()
    return best_t


def _dot(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """An upper bound of ``<a, w_b>`` per row for ``a`` ``(B, R, n)`` and ``w`` ``(B, n)``, both
    non-negative."""
    return round_up((a @ w[..., None])[..., 0], w.shape[1])


def _affine_step(layer, a: torch.Tensor, hmax: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``<a, W* h + b*>`` as ``<a W, h> + <a, b>`` with its slack (module doc): ``(c, e, a W)``."""
    n = layer.W.shape[0]
    err = (gamma(n + 2) * layer.W.abs() + layer.E) @ hmax.T  # (n, B)
    aa = a.abs()
    e = _dot(aa, round_up(err.T + layer.e + gamma(n + 2) * layer.b.abs(), n + 2))
    return a @ layer.b, e, a @ layer.W


def _relu_step(a: torch.Tensor, l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``<a, relu(z)>`` bounded below by CROWN's lines on ``[l, u]`` (module doc): ``(c, e, a')``."""
    on, unstable = l >= 0, (l < 0) & (u > 0)
    lower = (on | (unstable & (u > -l))).to(torch.float64)
    s = torch.where(unstable, u / (u - l).where(unstable, torch.ones_like(u)) * (1 + 4 * UNIT_ROUNDOFF),
                    on.to(torch.float64))
    shift = torch.where(unstable, -s * l, torch.zeros_like(l))  # the upper line: s z + shift
    zmax = torch.maximum(l.abs(), u.abs())
    e = _dot(a.abs(), round_up(2 * UNIT_ROUNDOFF * s * zmax + gamma(l.shape[1] + 4) * shift, 4))
    const = (a.clamp(max=0) @ shift[..., None])[..., 0]
    return const, e, a * torch.where(a >= 0, lower[:, None], s[:, None])


def _concretize(a: torch.Tensor, low: torch.Tensor, high: torch.Tensor, xmax: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``min over the box of <a, x>`` as ``(c, e)``: ``<a+, low> + <a-, high>`` and its rounding."""
    c = (a.clamp(min=0) @ low[..., None] + a.clamp(max=0) @ high[..., None])[..., 0]
    return c, _dot(a.abs(), gamma(low.shape[1] + 4) * xmax)
