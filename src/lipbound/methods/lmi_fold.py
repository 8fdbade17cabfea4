"""Folding neurons that became stable into a Lipschitz LMI, in the same units: a child's LMI from
its parent's, so that the parent's multipliers carry over (:mod:`lipbound.methods.lipsdp_warm`).

**What changes.** In the LMI of :mod:`lipbound.methods.lmi`, neuron ``i`` of activation block ``j``
is a basis variable ``w_i`` with pre-activation ``v_i = sum_r P_jr[i] xi_r`` and its sector
``[a_i, b_i]``. On a sub-region where its slope is the constant ``s_i`` (a ReLU split at 0: ``1``
on ``z_i >= 0``, ``0`` on ``z_i <= 0``), every increment has ``dw_i = s_i dv_i`` exactly. The
builder (:mod:`lipbound.methods.lmi_build`) would eliminate such a neuron; :func:`fold` does the
same on an LMI already built: every map ``M_kj`` that reads block ``j`` (a later block's
pre-activation or the output) becomes, for each block ``r`` that ``v`` reads,

    M_kr  <-  M_kr + M_kj[:, I] diag(s_I) P_jr[I, :]

and loses its columns ``I``; block ``j`` loses its rows ``I`` (and a block left empty disappears).
The units of every block are unchanged (``w_i`` and ``v_i`` share block ``j``'s unit), so the
folded LMI is the restriction of the quadratic form of ``N(rho, t)`` to the subspace
``dw_I = s_I dv_I``, on which the dropped neurons' sector terms vanish: ``N_child(rho, t_rest) =
T^T N(rho, t) T`` for the injection ``T`` of that subspace. Hence, **in exact arithmetic, any
``(rho, t)`` feasible for the parent gives a feasible ``(rho, t_rest)`` for the child**, whose least
``rho`` is therefore at most the parent's.

**Rounding.** Each map carries per-row bounds of the Euclidean norms of its rounding error
(``pre_err``, ``out_err``; :mod:`lipbound.methods.lmi`, *Rounding of the data*). For the update
``X + Y A Z`` (``Y = M_kj[:, I]``, ``A = diag(s_I)``, ``Z = P_jr[I, :]``, row errors ``e_Y``
(the row of ``M_kj``, a bound for its sub-row), ``e_Z``, ``e_X``), entrywise
``|fl(X + Y (A Z)) - (X + Y A Z)| <= gamma_{q+2} (|X| + |Y| |A| |Z|)`` (``q = |I|`` products, one
rounding of ``A Z``, one addition; Higham §3.5), and the data errors propagate as
``|dY| |A| |Z| + |Y| |A| |dZ| + |dY| |A| |dZ|``. Row by row (Cauchy-Schwarz on the first and last
terms) the new bound is

    e_X + gamma (||X_q|| + sum_i |Y_qi| |s_i| ||Z_i||) + e_Y,q ||s * ||Z|| || + sum_i |Y_qi| |s_i| e_Z,i
        + e_Y,q ||s * e_Z||,

evaluated from non-negative terms and widened by ``1 + 1e-10`` for their own rounding, as
:meth:`~lipbound.methods.lmi.LipschitzLMI.data_margin` does. The checked certificate of
:mod:`lipbound.methods.sdp_verify` uses these bounds, so the folded LMI certifies like a built one.
"""

from __future__ import annotations

import numpy as np

from .float_error import gamma
from .lmi import BasisBlock, LipschitzLMI

__all__ = ["fold"]

WIDEN = 1 + 1e-10  # the rounding of the few sums of non-negative terms of a bound


def fold(lmi: LipschitzLMI, stable: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[LipschitzLMI, np.ndarray]:
    """``lmi`` with the neurons ``stable[j] = (positions in block j, their constant slopes)`` folded
    (module doc). Returns the folded LMI and the boolean mask, over the parent's multiplier vector,
    of the neurons it keeps (``t[kept]`` are the carried multipliers)."""
    blocks = [BasisBlock(b.name, b.size, b.lo, b.hi, dict(b.pre), dict(b.pre_err)) for b in lmi.blocks]
    out, out_err = dict(lmi.out), dict(lmi.out_err)
    keep = [np.ones(b.size, dtype=bool) for b in lmi.blocks]
    for j in sorted(stable):
        idx, slopes = (np.asarray(v) for v in stable[j])
        if idx.size == 0:
            continue
        src = blocks[j]
        readers = [(b.pre, b.pre_err, b.size) for b in blocks[j + 1:] if j in b.pre]
        if j in out:
            readers.append((out, out_err, next(iter(out.values())).shape[0]))
        for maps, errs, rows in readers:
            y = maps[j][:, idx]
            e_y = errs.get(j, np.zeros(rows))
            for r, z_full in src.pre.items():
                z, e_z = z_full[idx], src.pre_err.get(r, np.zeros(src.size))[idx]
                x = maps.get(r, np.zeros((rows, z.shape[1])))
                maps[r], errs[r] = _update(x, errs.get(r, np.zeros(rows)), y, e_y, slopes, z, e_z)
        keep[j][idx] = False  # the columns of the folded neurons are cut at the end, in every map at once
    kept = np.concatenate(keep[1:])
    new_blocks, index = [blocks[0]], {0: 0}
    for j, b in enumerate(blocks[1:], start=1):
        k = keep[j]
        if not k.any():
            continue
        index[j] = len(new_blocks)
        new_blocks.append(BasisBlock(b.name, int(k.sum()), b.lo[k], b.hi[k],
                                     {r: m[k][:, keep[r]] for r, m in b.pre.items()},
                                     {r: e[k] for r, e in b.pre_err.items()}))
    for b in new_blocks[1:]:
        b.pre = {index[r]: m for r, m in b.pre.items() if r in index}
        b.pre_err = {index[r]: e for r, e in b.pre_err.items() if r in index}
    folded_out = {index[r]: m[:, keep[r]] for r, m in out.items() if r in index}
    folded_err = {index[r]: e for r, e in out_err.items() if r in index}
    child = LipschitzLMI(new_blocks, folded_out, lmi.scale, folded_err, eliminated=lmi.eliminated + int((~kept).sum()))
    return child, kept


def _update(x: np.ndarray, e_x: np.ndarray, y: np.ndarray, e_y: np.ndarray, s: np.ndarray, z: np.ndarray,
            e_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fl(x + y diag(s) z)`` and per-row bounds of its error's norm (module doc, *Rounding*)."""
    new = x + y @ (s[:, None] * z)
    g = gamma(len(s) + 2)
    ay, az = np.abs(y), np.abs(s) * np.linalg.norm(z, axis=1)
    bound = e_x + g * (np.linalg.norm(x, axis=1) + ay @ az) + e_y * np.linalg.norm(az) + ay @ (np.abs(s) * e_z) \
        + e_y * np.linalg.norm(np.abs(s) * e_z)
    return new, bound * WIDEN
