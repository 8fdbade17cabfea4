"""Cholesky factorisations of the LMI ``N`` for the interior point: block bidiagonal for chains
(level-3 solves and inverse), dense otherwise.

For a chain (:meth:`~lipbound.methods.lmi.LipschitzLMI.is_chain`) the matrix ``N`` has only the
blocks ``N_jj`` and ``N_(j, j-1)`` (:mod:`lipbound.methods.lipsdp_chain`). Its Cholesky factor is
block lower bidiagonal:

    D_0 = N_00,  L_0 = chol(D_0);   B_j = N_(j, j-1) L_{j-1}^{-T},  D_j = N_jj - B_j B_j^T,  L_j = chol(D_j),

and ``N = L L^T`` with ``L`` holding ``L_j`` on its diagonal and ``B_j`` below it. ``N > 0`` iff every
``D_j`` factorises (block ``LDL^T``), so this is also the membership test of the interior point. A
solve ``N^{-1} R`` is one forward (``Y_j = L_j^{-1} (R_j - B_j Y_{j-1})``) and one backward
(``Z_j = L_j^{-T} (Y_j - B_{j+1}^T Z_{j+1})``) sweep of products and triangular solves on panels of
``n_j`` rows: ``O(n k w)`` for ``k`` right-hand sides (``w`` the widest block) instead of the
``O(n^2 k)`` of a dense inverse, and the dense inverse itself (``R = I``) costs ``O(n^2 w)``.

Other graphs (residual nets) get a dense factorisation (:class:`DenseFactor`, LAPACK).
:func:`factor_of` picks one. Nothing here is trusted: these are the interior point's linear algebra; the certificate is checked by
:func:`~lipbound.methods.sdp_verify.certify`.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .lmi import LipschitzLMI


class ChainFactor:
    """``N = L L^T`` for the chain blocks ``parts`` (``(j, j)`` and ``(j, j-1)``) of sizes ``sizes``."""

    def __init__(self, diag: list[np.ndarray], below: list[np.ndarray], offsets: list[int]):
        self.diag, self.below, self.off = diag, below, offsets

    @classmethod
    def of(cls, parts: dict, sizes: list[int]) -> "ChainFactor | None":
        """The factor, or None when ``N`` is not positive definite (some ``D_j`` fails to factorise)."""
        offsets = [0, *np.cumsum(sizes).tolist()]
        diag: list[np.ndarray] = []
        below: list[np.ndarray] = [np.zeros((0, 0))]
        for j in range(len(sizes)):
            d = parts[(j, j)]
            if j > 0:
                b = sla.solve_triangular(diag[-1], parts[(j, j - 1)].T, lower=True, check_finite=False).T
                below.append(b)
                d = d - b @ b.T
            try:
                low = sla.cholesky(d, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(np.diagonal(low))):
                return None
            diag.append(low)
        return cls(diag, below, offsets)

    def forward(self, r: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``L^{-1} R`` (into ``out``, which may be ``r`` itself: block row ``j`` reads only rows
        ``j`` of ``R`` and ``j - 1`` of the result)."""
        off = self.off
        y = np.empty_like(r) if out is None else out
        for j, low in enumerate(self.diag):
            rhs = r[off[j]:off[j + 1]]
            if j > 0:
                rhs = rhs - self.below[j] @ y[off[j - 1]:off[j]]
            y[off[j]:off[j + 1]] = sla.solve_triangular(low, rhs, lower=True, check_finite=False)
        return y

    def backward(self, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``L^{-T} Y`` (into ``out``, which may be ``y`` itself, as in :meth:`forward`)."""
        off = self.off
        z = np.empty_like(y) if out is None else out
        for j in range(len(self.diag) - 1, -1, -1):
            rhs = y[off[j]:off[j + 1]]
            if j + 1 < len(self.diag):
                rhs = rhs - self.below[j + 1].T @ z[off[j + 1]:off[j + 2]]
            z[off[j]:off[j + 1]] = sla.solve_triangular(self.diag[j], rhs, lower=True, trans="T", check_finite=False)
        return z

    def solve(self, r: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """``N^{-1} R``; ``overwrite`` computes it in the memory of ``r`` (no new ``n x k`` array:
        a fresh large array costs its page faults, ~10 ms for ``2000 x 2000``)."""
        y = self.forward(r, r if overwrite else None)
        return self.backward(y, y)

    def inverse(self) -> np.ndarray:
        """``N^{-1}`` (dense, symmetric), computed by block rows of its lower triangle only: block
        row ``j`` of ``Y = L^{-1}`` vanishes right of column ``off[j+1]`` (``L^{-1}`` is block lower
        triangular), and block row ``j`` of ``Z = L^{-T} Y`` left of that column needs only the same
        columns of ``Y_j`` and ``Z_{j+1}``; the upper triangle is the mirror. About half the flops
        of :meth:`solve` on the identity."""
        off, n = self.off, self.off[-1]
        y = np.zeros((n, n))
        for j, low in enumerate(self.diag):
            cols = slice(0, off[j + 1])
            rhs = np.zeros((off[j + 1] - off[j], off[j + 1]))
            rhs[:, off[j]:] = np.eye(off[j + 1] - off[j])
            if j > 0:
                rhs[:, :off[j]] -= self.below[j] @ y[off[j - 1]:off[j], :off[j]]
            y[off[j]:off[j + 1], cols] = sla.solve_triangular(low, rhs, lower=True, check_finite=False)
        z = np.empty((n, n))
        for j in range(len(self.diag) - 1, -1, -1):
            cols = slice(0, off[j + 1])
            rhs = y[off[j]:off[j + 1], cols]
            if j + 1 < len(self.diag):
                rhs = rhs - self.below[j + 1].T @ z[off[j + 1]:off[j + 2], cols]
            z[off[j]:off[j + 1], cols] = sla.solve_triangular(self.diag[j], rhs, lower=True, trans="T",
                                                               check_finite=False)
            z[:off[j], off[j]:off[j + 1]] = z[off[j]:off[j + 1], :off[j]].T
        return z


class DenseFactor:
    """``N = L L^T`` by a dense LAPACK factorisation (any graph)."""

    def __init__(self, cho: tuple):
        self.cho = cho

    @classmethod
    def of(cls, mat: np.ndarray) -> "DenseFactor | None":
        """The factor, or None when ``mat`` is not positive definite."""
        try:
            cho = sla.cho_factor(mat, lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError):
            return None
        return cls(cho)

    def forward(self, r: np.ndarray) -> np.ndarray:
        """``L^{-1} R``."""
        return sla.solve_triangular(self.cho[0], r, lower=True, check_finite=False)

    def backward(self, y: np.ndarray) -> np.ndarray:
        """``L^{-T} Y``."""
        return sla.solve_triangular(self.cho[0], y, lower=True, trans="T", check_finite=False)

    def solve(self, r: np.ndarray, overwrite: bool = False) -> np.ndarray:
        """``N^{-1} R`` (in the memory of ``r`` when ``overwrite`` and LAPACK can)."""
        return sla.cho_solve(self.cho, r, overwrite_b=overwrite, check_finite=False)

    def inverse(self) -> np.ndarray:
        """``N^{-1}`` (dense)."""
        return self.solve(np.eye(self.cho[0].shape[0]))


def factor_of(lmi: LipschitzLMI, parts: dict) -> ChainFactor | DenseFactor | None:
    """The factorisation of the matrix with lower blocks ``parts`` (block bidiagonal for a chain),
    or None when it is not positive definite."""
    if lmi.is_chain():
        return ChainFactor.of(parts, lmi.sizes)
    return DenseFactor.of(lmi.assemble(parts))
