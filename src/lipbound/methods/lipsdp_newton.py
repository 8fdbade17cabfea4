"""LipSDP's LMI laid out by rank-two constraint terms: the HKM Newton matrix, constraint values,
membership tests and step lengths (the linear algebra of :mod:`lipbound.methods.lipsdp_ipm`).

**The terms.** In the notation of :mod:`lipbound.methods.lmi`, ``N(rho, t) = C_0 + rho E +
sum_i t_i F_i``, and each neuron's term has rank two: for neuron ``i`` of an activation, with
``e_i`` its output coordinate, ``w_i`` the row of its pre-activation map (placed in the blocks it
reads) and sector ``[a_i, b_i]``, ``xi^T F_i xi = 2 (q_i - a_i p_i)(q_i - b_i p_i)``, i.e.

    F_i = u_i v_i^T + v_i u_i^T,     u_i = e_i - a_i w_i,   v_i = e_i - b_i w_i.

**The Newton matrix.** For symmetric ``X`` and ``A = N^{-1}``, with ``Xuv = U^T X V`` (``U``,
``V``: the columns ``u_i``, ``v_i``) and likewise the other grams,

    trace(F_i X F_k A) = (Xuu o Avv + Xvv o Auu + Xuv o Avu + Xvu o Auv)_ik,
    trace(E X F_k A) = (A u_k)_x . (X v_k)_x + (A v_k)_x . (X u_k)_x,    trace(E X E A) = <X_xx, A_xx>

(``o``: entrywise product; ``E`` the input block's identity): each gram costs products with the
layers' maps (``O(n^2 w)``, ``w`` the widest block) and the Hadamard products ``O(n_t^2)``. With
``X = A`` this is the Hessian of ``-log det N``. LipSDP-Layer ties the multipliers of a node: its
entries are the neuron ones summed over each node's neurons. ``<F_i, X> = 2 u_i^T X v_i`` reads
only the blocks of ``X`` that neuron ``i`` touches.

**Factorisations.** Membership tests (is ``N(rho, t) > 0``?) factorise ``N``
(:mod:`lipbound.methods.lipsdp_factor`: block bidiagonal for chains, dense otherwise). Nothing
computed here is trusted: the solver's final multipliers are checked by
:func:`~lipbound.methods.sdp_verify.certify`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla
from scipy.linalg import lapack

from .lipsdp_factor import ChainFactor, DenseFactor, factor_of
from .lmi import LipschitzLMI


class RankTwoLMI:
    """The LMI's data laid out by its rank-two terms (module docstring) in the free variables
    ``y = (rho, u)``: ``variant`` ``"neuron"`` (``u = t``) or ``"layer"`` (``u``: one multiplier per
    activation node); ``margin``: the matrix is ``N(y) - margin I`` (the interior point's
    tightened problem, :mod:`lipbound.methods.lipsdp_ipm`)."""

    def __init__(self, lmi: LipschitzLMI, variant: str, margin: float = 0.0):
        self.lmi, self.variant, self.margin = lmi, variant, margin
        self.off = lmi.offsets
        self.n0 = lmi.blocks[0].size
        self.lo = np.concatenate([b.lo for b in lmi.blocks[1:]])
        self.hi = np.concatenate([b.hi for b in lmi.blocks[1:]])
        self.slices = lmi.neuron_slices
        self.n_free = 1 + (len(self.slices) if variant == "layer" else lmi.n_neurons)
        self._c0 = lmi.blocks_of_N(0.0, np.zeros(lmi.n_neurons), margin)
        self._buffers: dict[str, np.ndarray] = {}

    # ---- variables ---------------------------------------------------------------------------
    def expand(self, u: np.ndarray) -> np.ndarray:
        """Per-neuron multipliers ``t`` from the free ones ``u``."""
        if self.variant == "neuron":
            return u
        return np.concatenate([np.full(sl.stop - sl.start, ui) for sl, ui in zip(self.slices, u)])

    def reduce(self, g: np.ndarray, axis: int = 0) -> np.ndarray:
        """Sum over each node's neurons along ``axis`` (the chain rule for ``t = expand(u)``)."""
        if self.variant == "neuron":
            return g
        return np.stack([np.take(g, range(sl.start, sl.stop), axis=axis).sum(axis=axis) for sl in self.slices],
                        axis=axis)

    def parts(self, y: np.ndarray, affine: bool = True) -> dict:
        """Blocks of ``N(y)`` (``affine``) or of its linear part ``N(y) - C_0`` (a direction)."""
        parts = self.lmi.blocks_of_N(float(y[0]), self.expand(y[1:]), self.margin)
        if not affine:
            for key, m in self._c0.items():
                parts[key] = parts[key] - m
        return parts

    # ---- membership and products ---------------------------------------------------------------
    def factor(self, y: np.ndarray) -> ChainFactor | DenseFactor | None:
        """The factorisation of ``N(y)`` (:mod:`lipbound.methods.lipsdp_factor`), or None outside the cone."""
        if not np.all(y[1:] > 0) or not np.all(np.isfinite(y)):
            return None
        return factor_of(self.lmi, self.parts(y))

    def inside(self, y: np.ndarray) -> bool:
        """``N(y) > 0`` and ``u > 0``."""
        return self.factor(y) is not None

    def matmul(self, parts: dict, b: np.ndarray) -> np.ndarray:
        """``N b`` for the symmetric matrix whose lower blocks are ``parts`` (no assembly)."""
        off = self.off
        out = np.zeros_like(b)
        for (r, c), m in parts.items():
            out[off[r]:off[r + 1]] += m @ b[off[c]:off[c + 1]]
            if r != c:
                out[off[c]:off[c + 1]] += m.T @ b[off[r]:off[r + 1]]
        return out

    def wt(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``W^T x``: row block ``j`` is ``sum_r P_jr x_r`` (``P_jr``: activation ``j``'s map of block ``r``)."""
        rows = []
        for blk in self.lmi.blocks[1:]:
            rows.append(sum(m @ x[self.off[r]:self.off[r + 1]] for r, m in blk.pre.items()))
        return np.concatenate(rows, 0, out=out)

    def w(self, y: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``W y`` into ``out`` (the adjoint of :meth:`wt`): block ``r`` of the result is
        ``sum_j P_jr^T y_j`` over the activations ``j`` that read block ``r``."""
        out[:] = 0.0
        for blk, sl in zip(self.lmi.blocks[1:], self.slices):
            for r, m in blk.pre.items():
                out[self.off[r]:self.off[r + 1]] += m.T @ y[sl]
        return out

    def times(self, dy: np.ndarray, a: np.ndarray, wa: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``dS A`` into ``out`` for the direction ``dS = N(dy) - C_0 = drho E + sum_i dt_i F_i``,
        given ``wa = W^T A``: with ``F_i = 2 e_i e_i^T - (a_i + b_i)(e_i w_i^T + w_i e_i^T) + 2 a_i
        b_i w_i w_i^T``, ``dS A = drho E A + Q Dt (2 A_h - (a + b) W^T A) + W Dt (2 a b W^T A - (a
        + b) A_h)`` (``A_h``: the neurons' rows of ``A``, ``Q`` places rows there, ``Dt =
        diag(dt)``): one product with ``W`` (``O(n^2 w)`` through the layers' maps) instead of one
        per block of ``dS`` (:meth:`matmul`)."""
        h = slice(self.n0, self.lmi.size)
        dt = self.expand(dy[1:])[:, None]
        sums, prods = (self.lo + self.hi)[:, None], (self.lo * self.hi)[:, None]
        cross = np.multiply(wa, 2.0 * prods, out=self.buffer("times", wa.shape))
        cross -= np.multiply(a[h], sums, out=self.buffer("times.scratch", wa.shape))
        cross *= dt
        self.w(cross, out)
        own = np.multiply(a[h], 2.0, out=cross)
        own -= np.multiply(wa, sums, out=self.buffer("times.scratch", wa.shape))
        own *= dt
        out[h] += own
        out[:self.n0] += dy[0] * a[:self.n0]
        return out

    def buffer(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        """A work array kept between calls (its contents are whatever the last user left): a fresh
        large array costs its page faults (:mod:`lipbound.methods.lipsdp_ipm`, *Memory*)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != shape:
            buf = self._buffers[key] = np.empty(shape)
        return buf

    # ---- the Newton matrix from rank-two terms ------------------------------------------------------
    def grams(self, a: np.ndarray, tag: str = "") -> Grams:
        """``U^T A U``, ``U^T A V``, ``V^T A V``, ``(A U)_x``, ``(A V)_x`` and ``A_xx`` of a symmetric
        ``A``: ``O(n^2 w)`` through the layers' maps (``U = Q - W D_a``, ``Q`` the neurons' own
        coordinates, ``W`` their pre-activation rows). With a ``tag`` the three ``n_t x n_t`` grams
        live in :meth:`buffer` arrays of that tag: valid until the next call with the same tag."""
        n = self.lmi.size
        nt = n - self.n0
        h, x = slice(self.n0, n), slice(0, self.n0)
        k_t = self.wt(a, out=self.buffer(tag + "k_t", (nt, n)))  # W^T A  (n_t x n)
        akt = self.buffer("k_t.T", (n, nt))
        np.copyto(akt, k_t.T)
        waw = self.wt(akt, out=self.buffer("waw", (nt, nt)))  # W^T A W
        k = k_t[:, h]  # W^T A Q
        kt = akt[:nt]  # Q^T A W, in the memory of A W (not needed any more)
        np.copyto(kt, k.T)
        base = a[h, h]
        scratch = self.buffer("scratch", (nt, nt))

        def gram(p: np.ndarray, q: np.ndarray, key: str) -> np.ndarray:
            """``(Q - W D_p)^T A (Q - W D_q)`` for the sector vectors ``p``, ``q``."""
            out = np.multiply(waw, p[:, None], out=self.buffer(tag + key, (nt, nt)) if tag else None)
            out -= kt
            out *= q
            out += base
            out -= np.multiply(k, p[:, None], out=scratch)
            return out

        return Grams(gram(self.lo, self.lo, "uu"), gram(self.lo, self.hi, "uv"), gram(self.hi, self.hi, "vv"),
                     a[x, h] - k_t[:, x].T * self.lo, a[x, h] - k_t[:, x].T * self.hi, a[x, x], k_t)

    def constraint_values(self, a: np.ndarray) -> np.ndarray:
        """``(<E, A>, <F_i, A>...)`` for a symmetric ``A`` (summed per node for the layer variant):
        ``<F_i, A> = 2 u_i^T A v_i`` reads only the blocks of ``A`` that neuron ``i``'s terms touch."""
        off = self.off
        uv = []
        for j, blk in enumerate(self.lmi.blocks[1:], start=1):
            own = slice(off[j], off[j + 1])
            kq = sum(np.sum(m * a[off[r]:off[r + 1], own].T, axis=1) for r, m in blk.pre.items())
            waw = sum(np.sum((m @ a[off[r]:off[r + 1], off[c]:off[c + 1]]) * blk.pre[c], axis=1)
                      for r, m in blk.pre.items() for c in blk.pre)
            uv.append(np.diagonal(a[own, own]) - (blk.lo + blk.hi) * kq + blk.lo * blk.hi * waw)
        return np.concatenate([[np.trace(a[:self.n0, :self.n0])], self.reduce(2.0 * np.concatenate(uv))])

    def solved_constraint_values(self, s_inv: np.ndarray, gs: Grams, g: np.ndarray) -> np.ndarray:
        """:meth:`constraint_values` of ``sym(S^{-1} G)`` without the solve, from ``S^{-1}``, its
        grams ``gs`` and any square ``G``: ``<F_i, S^{-1} G> = (S^{-1} u_i) . (G v_i) + (S^{-1}
        v_i) . (G u_i)`` with ``S^{-1} U = S^{-1}_{:h} - (S^{-1} W) D_a`` (``S^{-1} W = (W^T
        S^{-1})^T``, from the grams) and ``G U = G_{:h} - (G W) D_a``; summed per neuron row, that is
        ``2 S_h o G_h - (a + b)(S_h o GW + SW o G_h) + 2 a b SW o GW`` with ``S_h = S^{-1}_{h:}``,
        ``G_h = (G_{:h})^T``, ``GW = W^T G^T``, ``SW = W^T S^{-1}``; ``<E, S^{-1} G> = sum(S^{-1}_{:x}
        o G_{:x})``. One product with ``W`` instead of an ``O(n^2 w)`` solve."""
        h, x = slice(self.n0, self.lmi.size), slice(0, self.n0)
        gw = self.wt(g.T, out=self.buffer("gw", gs.wa.shape))
        s_h, g_h, sw = s_inv[h], g[:, h].T, gs.wa
        rows = 2.0 * np.einsum("ij,ij->i", s_h, g_h)
        rows -= (self.lo + self.hi) * (np.einsum("ij,ij->i", s_h, gw) + np.einsum("ij,ij->i", sw, g_h))
        rows += 2.0 * self.lo * self.hi * np.einsum("ij,ij->i", sw, gw)
        return np.concatenate([[float(np.einsum("ij,ij->", s_inv[:, x], g[:, x]))], self.reduce(rows)])

    def constraint_values_of(self, g: Grams) -> np.ndarray:
        """:meth:`constraint_values` from the grams of ``A`` (their diagonal)."""
        return np.concatenate([[np.trace(g.xx)], self.reduce(2.0 * np.diagonal(g.uv))])

    def newton_matrix(self, gx: Grams, gs: Grams) -> np.ndarray:
        """``H_kl = trace(A_k X A_l S^{-1})`` (the HKM Schur complement; ``A_0 = E``, ``A_i = F_i``)
        from the grams of ``X`` and of ``S^{-1}``: with ``F_i = u_i v_i^T + v_i u_i^T``,
        ``H_ik = Xuu o Svv + Xvv o Suu + Xuv o Svu + Xvu o Suv`` (``Xuv = U^T X V``, ...),
        ``H_0k = (S^{-1} u_k)_x . (X v_k)_x + (S^{-1} v_k)_x . (X u_k)_x``, ``H_00 = <X_xx, S^{-1}_xx>``.
        The result is a :meth:`buffer`: valid until the next call."""
        shape = gx.uu.shape
        tt = np.multiply(gx.uu, gs.vv, out=self.buffer("tt", shape))
        scratch = np.multiply(gx.vv, gs.uu, out=self.buffer("scratch", shape))
        tt += scratch
        cross = np.multiply(gx.uv, gs.uv.T, out=scratch)
        tt += cross
        tt += cross.T
        h = self.buffer("newton", (self.n_free, self.n_free))  # valid until the next call
        h[0, 0] = float(np.sum(gx.xx * gs.xx))
        h[0, 1:] = h[1:, 0] = self.reduce(np.sum(gs.ux * gx.vx + gs.vx * gx.ux, axis=0))
        h[1:, 1:] = self.reduce(self.reduce(tt, 0), 1)
        return h

    def inner(self, parts: dict, a: np.ndarray) -> float:
        """``<N, A>`` for the symmetric matrix with lower blocks ``parts`` and a dense symmetric ``A``."""
        off = self.off
        total = 0.0
        for (r, c), m in parts.items():
            total += (1.0 if r == c else 2.0) * float(np.sum(m * a[off[r]:off[r + 1], off[c]:off[c + 1]]))
        return total


@dataclass
class Grams:
    """``U^T A U``, ``U^T A V``, ``V^T A V`` (``n_t x n_t``), ``(A U)_x``, ``(A V)_x`` (``n_0 x n_t``),
    ``A_xx`` and ``W^T A`` (``n_t x n``) for a symmetric ``A`` (:meth:`RankTwoLMI.grams`)."""

    uu: np.ndarray
    uv: np.ndarray
    vv: np.ndarray
    ux: np.ndarray
    vx: np.ndarray
    xx: np.ndarray
    wa: np.ndarray


def scaled_cholesky(hess: np.ndarray) -> tuple[tuple, np.ndarray]:
    """Cholesky factor of ``D H D`` with the Jacobi scaling ``D = diag(H)^{-1/2}`` (the Newton
    matrix's entries span many orders of magnitude), in the memory of ``hess``; solve with
    :func:`scaled_solve`."""
    scale = 1.0 / np.sqrt(np.maximum(np.diag(hess), 1e-300))
    hess *= scale[:, None]
    hess *= scale
    return sla.cho_factor(hess, lower=True, overwrite_a=True, check_finite=True), scale


def symmetrize(a: np.ndarray, tile: int = 256) -> np.ndarray:
    """``(A + A^T) / 2`` in the memory of the square ``a``, tile by tile (``a += a.T`` would copy
    the whole of ``a.T`` first: a fresh large array costs its page faults)."""
    n = a.shape[0]
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            t = a[i:i + tile, j:j + tile] + a[j:j + tile, i:i + tile].T
            t *= 0.5
            a[i:i + tile, j:j + tile] = t
            a[j:j + tile, i:i + tile] = t.T
    return a


def scaled_solve(fac: tuple[tuple, np.ndarray], b: np.ndarray) -> np.ndarray:
    cho, scale = fac
    return scale * sla.cho_solve(cho, scale * b)


def ratio_step(v: np.ndarray, dv: np.ndarray, cap: float) -> float:
    """``min(cap, sup {alpha: v + alpha dv > 0})`` for ``v > 0``."""
    neg = dv < 0
    return min(cap, float(np.min(-v[neg] / dv[neg]))) if np.any(neg) else cap


def cholesky_or_none(a: np.ndarray) -> np.ndarray | None:
    """The lower Cholesky factor of the symmetric ``a``, or None when the factorisation fails."""
    low, info = lapack.dpotrf(a, lower=1, clean=1)
    return low if info == 0 and np.all(np.isfinite(np.diagonal(low))) else None


def psd_step(low: np.ndarray, d: np.ndarray, cap: float) -> float:
    """``min(cap, sup {alpha: X + alpha D > 0})`` for ``X = L L^T`` (``low``, dense): two triangular
    solves and a product per Lanczos step (:func:`lanczos_step`)."""

    def apply(v: np.ndarray) -> np.ndarray:
        w = sla.solve_triangular(low, v, lower=True, trans="T", check_finite=False)
        return sla.solve_triangular(low, d @ w, lower=True, check_finite=False)

    return lanczos_step(apply, low.shape[0], cap)


def factor_step(fac: ChainFactor | DenseFactor, d_times: Callable[[np.ndarray], np.ndarray], n: int,
                cap: float) -> float:
    """``min(cap, sup {alpha: N + alpha D > 0})`` for ``N`` factorised by ``fac`` and ``D`` applied by
    ``d_times``: Lanczos on ``L^{-1} D L^{-T}`` through the factor's sweeps (``O(n w)`` per vector
    on a chain, instead of a factorisation of ``N + alpha D`` per trial step)."""

    def apply(v: np.ndarray) -> np.ndarray:
        w = fac.backward(v[:, None])
        return fac.forward(d_times(w))[:, 0]

    return lanczos_step(apply, n, cap)


def lanczos_step(apply: Callable[[np.ndarray], np.ndarray], n: int, cap: float) -> float:
    """``min(cap, -1 / lambda_min)`` of the symmetric operator ``apply`` (``L^{-1} D L^{-T}``) by
    Lanczos, from a fixed start vector, so the same data give the same step. An estimate:
    callers step a fraction of it and check the result by a factorisation."""
    op = spla.LinearOperator((n, n), matvec=apply, dtype=np.float64)
    v0 = np.cos(np.arange(n) + 1.0)
    try:
        lam = float(spla.eigsh(op, k=1, which="SA", tol=1e-4, v0=v0, ncv=min(n, 24), maxiter=50 * n,
                               return_eigenvectors=False)[0])
    except spla.ArpackNoConvergence as exc:
        lam = float(np.min(exc.eigenvalues)) if len(exc.eigenvalues) else -1.0 / cap
    return cap if lam >= -1.0 / cap else -1.0 / lam
