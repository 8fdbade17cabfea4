"""The Lipschitz LMI of a network of affine maps and slope-restricted activations (LipSDP-Neuron).

Setting (Fazlyab et al. 2019; the graph form of Pauli et al. 2024, GLipSDP). Write the network's
*basis variables* as ``xi = (x, w_1, ..., w_m)``: the input and the outputs of its ``m`` activation
nodes, in topological order. Every pre-activation is linear in the earlier ones,
``v_j = A_j xi + b_j``, and so is the output, ``y = A_out xi + b_out`` (affine nodes, sums of
branches and concatenations compose into these maps). Activation ``j`` acts element-wise,
``w_j = phi_j(v_j)``, neuron ``i`` with every difference quotient in its own sector
``[a_i, b_i]`` for any ``a_i <= b_i`` (slopes on both sides of 0 included: GELU, SiLU, Abs, ...;
globally every neuron of a node has the node's range, on a region the slope interval of
:meth:`~lipbound.graph.ir.Activation.slope_bounds`). For two inputs, the
increments ``dv = A_j dxi``, ``dw = dw_j`` of one neuron satisfy the incremental quadratic
constraint ``(dw - a dv)(b dv - dw) >= 0``, i.e. ``t (-2ab dv^2 + 2(a+b) dv dw - 2 dw^2) >= 0``
for every ``t >= 0``. **Biases cancel in every increment**, so they play no part in the
constant. If, for multipliers ``t >= 0`` (one per neuron) and ``rho``,

    M(rho, t) = A_out^T A_out - rho E_x^T E_x + sum_j QC_j(t_j)  <=  0      (negative semidefinite)

with ``QC_j(t_j) = [A_j; E_j]^T [[-2 A_j B_j T_j, (A_j + B_j) T_j], [(A_j + B_j) T_j, -2 T_j]] [A_j; E_j]``
(``A_j``, ``B_j``, ``T_j``: diagonals of the sectors' ends and of the multipliers), then for
any two inputs ``||dy||^2 - rho ||dx||^2 <= -sum_j (QC terms >= 0) <= 0``: the network is
``sqrt(rho)``-Lipschitz (S-procedure; DESIGN §1 calls ``sqrt(rho)`` certified once the LMI is
*checked*, see :mod:`lipbound.methods.sdp_verify`). A chain (MLP) is the special case
``A_j = W_j E_{j-1}``; residual blocks simply read several earlier blocks.

**Residual blocks.** In ``h -> ReLU(h + W2 ReLU(W1 h))`` the outer ReLU's pre-activation map is
``[I, W2]`` on the blocks of ``h`` and of the inner ReLU: the skip term is inside the outer sector
constraint, both ReLUs' multipliers in one inequality. GLipSDP (Pauli et al. 2024) chains one
inequality per block through a full symmetric ``Q_k`` on the state between blocks; the optimum is
the same (their sum telescopes to ``M <= 0``; conversely, eliminating the blocks from the last one
backwards leaves a feasible ``Q_k``): tests/test_lipsdp_residual.py compares the two in cvxpy.

**Local constants.** On a convex input region ``X`` (``Graph.region``), every neuron's input stays
in its bounds ``[l_i, u_i]`` along the segment between two inputs of ``X``, so each increment
satisfies ``dw_i = d_i dv_i`` with the secant slope ``d_i`` in the neuron's slope interval
``[a_i, b_i]``: the sector constraint above holds for every pair ``x, y`` in ``X``, and
``sqrt(rho)`` bounds ``||f(x) - f(y)|| / ||x - y||`` over all of them. A **stable** neuron
(``a_i = b_i``) has ``dw_i = a_i dv_i`` exactly; the builder (:mod:`lipbound.methods.lmi_build`)
eliminates it: its output is folded into the maps that read it as ``a_i`` times its
pre-activation's row (a neuron with slope 0 disappears), so the LMI keeps only the unstable
neurons.

:func:`lipbound.methods.lmi_build.lmi_of_graph` builds this data from a
:class:`~lipbound.graph.Graph`; this module assembles the blocks of ``N(rho, t) = -M(rho, t)``
and evaluates, for given multipliers, the least ``rho`` that makes ``N >= tau I`` by the Schur
complement on the input block (``N_hh - tau I > 0`` and
``rho >= tau + lambda_max(N_hx^T (N_hh - tau I)^{-1} N_hx - N_xx^0)``), with its gradient in
``t``: the function minimised by the first-order LipSDP solver.

**Scaling.** Each basis block ``w_j`` is expressed in units of ``s_j``, a power of two close to the
AutoLip bound of its pre-activation (and the output in units of ``s_out``): ``w_j = s_j w~_j``. An
activation conjugated by a positive scalar, ``u -> phi(s u) / s``, has the same slope range, so the
scaled network belongs to the same class and ``L(f) = s_out L(f~)``; powers of two make the
rescaled weights exact in floating point. This keeps the LMI well conditioned for deep nets whose
layer norms multiply to 1e7.

**Rounding of the data.** The graph's operators are taken as exact (their weights as the frontend
built them). Everything computed from them here is rounded; the builder carries, for each block
map ``M^`` it computes, an **entrywise** bound ``E >= |M^ - M|`` of its error (Higham, *Accuracy and
Stability of Numerical Algorithms*, §3.5), and stores per row (per neuron) the Euclidean norm of
its row of ``E`` (``pre_err``, ``out_err``):

* an affine node's matrix ``W^`` comes from :meth:`~lipbound.linalg.operators.LinearOperator.to_dense`
  (its factors applied to unit vectors, float64, CPU kernels or CUDA without cuDNN). Each factor
  ``A_i`` computes every output as a sum of at most ``in_numel_i`` products of weights known to a
  few roundings, so ``|W^ - W| <= g |A_m| ... |A_1| =: g |W|~`` with ``g = gamma_K``,
  ``K = sum_i (in_numel_i + 16)`` (for any order of summation); ``|W|~`` is computed from the
  factors' absolute values (permutations included, reshapes are the identity) and widened by
  ``1 + 4 g`` for its own rounding (non-negative terms), so ``|W| <= |W|~`` and ``|W^| <= (1 + g) |W|~``;
* a product: ``|fl(W^ M^) - W M| <= gamma_k |W^| |M^| + |W^ - W| |M^| + |W| |M^ - M|
  <= |W|~ (c |M^| + E_M)`` with ``c = gamma_k (1 + g) + g`` (``k`` the inner dimension); a sum of
  ``q`` maps adds ``gamma_{q-1}`` times their absolute values to their bounds; a concatenation
  stacks them;
* scalings by powers of two are exact; folding a stable neuron's slope ``a_i`` into a map
  (``diag(a) M``) gives ``|a| E + u |a| |M^|``, ``u = 2^-53`` (one rounding per entry): a neuron
  stably off (``a_i = 0``) drops its row's error with its row.

Every bound is itself computed in float64 from non-negative terms and rounded up
(:func:`~lipbound.methods.float_error.round_up`). Entrywise bounds follow the maps through the
stable neurons' zeros; the earlier Frobenius bound (``||W||_F e_M`` per product) multiplied the
Frobenius norms of whole layers that the composed map never sees, and reached 33% of the map on
ERAN 9x200 after 9 layers (benchmarks/results/local_sdp.md, *Entrywise data bounds*).
:meth:`LipschitzLMI.data_margin` turns the per-row bounds into a bound of ``||N - N^||_2``
(``N^`` built from the stored maps), each neuron with its own multiplier and sector, which the
check of :mod:`lipbound.methods.sdp_verify` adds to its shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from .float_error import gamma

LANCZOS_MIN = 200  # input blocks larger than this are iterated on (Lanczos) when optimising
Blocks = dict[int, np.ndarray]  # basis block index -> matrix (rows of the map, columns of the block)


@dataclass
class BasisBlock:
    """One block of basis variables: the input (``lo``, ``hi`` None) or the unstable neurons of one
    activation node, neuron ``i`` with its sector ``[lo_i, hi_i]``. ``pre`` maps earlier block
    indices to the (scaled) matrices of its pre-activation, ``pre_err`` to per-row bounds of the
    Euclidean norms of their rounding errors (one entry per neuron; module docstring)."""

    name: str
    size: int
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    pre: Blocks = field(default_factory=dict)
    pre_err: dict[int, np.ndarray] = field(default_factory=dict)

    def sector(self) -> tuple[np.ndarray, np.ndarray]:
        """Per neuron ``(a b, a + b)`` of the sector ``[a, b] = [lo, hi]``."""
        return self.lo * self.hi, self.lo + self.hi


@dataclass
class LipschitzLMI:
    """The data of ``M(rho, t)``: the basis blocks, the output map ``out`` (``out_err``: per-row
    bounds of its rounding errors' norms), and ``scale`` with ``L(f) <= scale * sqrt(rho)`` whenever
    ``M(rho, t) <= 0`` for some ``t >= 0``. ``solving_only`` marks an LMI that is only close to the
    network's (:meth:`reduced`): certificates are never checked on it. ``eliminated``: how many
    stable neurons the builder folded into linear maps (they are not in the LMI)."""

    blocks: list[BasisBlock]
    out: Blocks
    scale: float
    out_err: dict[int, np.ndarray] = field(default_factory=dict)
    solving_only: bool = False
    eliminated: int = 0

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        return [b.size for b in self.blocks]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.sizes).tolist()]

    @property
    def size(self) -> int:
        """Order of the LMI: input dimension plus number of neurons."""
        return sum(self.sizes)

    @property
    def n_neurons(self) -> int:
        return self.size - self.blocks[0].size

    @property
    def neuron_slices(self) -> list[slice]:
        """Slices of the multiplier vector ``t`` (one entry per neuron) for blocks 1..m."""
        off = np.cumsum([0] + self.sizes[1:]).tolist()
        return [slice(off[i], off[i + 1]) for i in range(len(self.blocks) - 1)]

    def is_chain(self) -> bool:
        return all(list(b.pre) == [i] for i, b in enumerate(self.blocks[1:])) and list(self.out) == [len(self.blocks) - 1]

    # ---- the matrix N = -M as symmetric blocks ------------------------------------------------
    def blocks_of_N(self, rho: float, t: np.ndarray, tau: float = 0.0) -> dict[tuple[int, int], np.ndarray]:
        """Blocks ``(r, c)``, ``r >= c``, of ``N(rho, t) - tau I`` (``N = -M``)."""
        out: dict[tuple[int, int], np.ndarray] = {}

        def add(r: int, c: int, m: np.ndarray) -> None:
            if r < c:
                r, c, m = c, r, m.T
            out[(r, c)] = out[(r, c)] + m if (r, c) in out else m.copy()

        add(0, 0, (rho - tau) * np.eye(self.blocks[0].size))
        for r, ar in self.out.items():
            for c, ac in self.out.items():
                if r >= c:
                    add(r, c, -(ar.T @ ac))
        for j, (blk, sl) in enumerate(zip(self.blocks[1:], self.neuron_slices), start=1):
            tj = t[sl]
            ab, cc = blk.sector()
            if np.any(ab):
                tab = tj * ab
                for r, ar in blk.pre.items():
                    for c, ac in blk.pre.items():
                        if r >= c:
                            add(r, c, 2.0 * (ar.T * tab) @ ac)
            for r, ar in blk.pre.items():
                add(j, r, -(cc * tj)[:, None] * ar)
            add(j, j, np.diag(2.0 * tj - tau))
        return out

    def bandwidth(self, first: int = 0) -> int:
        """Lower bandwidth of ``N`` restricted to blocks ``>= first`` (flat indices)."""
        off = self.offsets
        bw = max(self.sizes[first:]) - 1
        pairs = [(j, r) for j, blk in enumerate(self.blocks) if j > 0 for r in blk.pre]
        pairs += [(r, c) for r in self.out for c in self.out if r > c]
        pairs += [(r, c) for blk in self.blocks[1:] if np.any(blk.sector()[0]) for r in blk.pre for c in blk.pre if r > c]
        for r, c in pairs:
            if c >= first:
                bw = max(bw, off[r + 1] - 1 - off[c])
        return bw

    def abs_scale(self, rho: float, t: np.ndarray) -> float:
        """A bound of the sum over the terms of ``N(rho, t)`` of the Frobenius norms of their
        entrywise absolute values: times :attr:`assembly_gamma`, it bounds the rounding error of
        the assembled ``N``. Per neuron ``i`` (row ``p_i`` of its block's pre-activation map,
        multiplier ``t_i``, sector ``[a_i, b_i]``): ``|| |P|^T |D| |P| ||_F <= sum_i |d_i| ||p_i||^2``
        (a sum of rank-one terms) with ``d = 2 a b t``, the off-diagonal block (twice) by
        ``2 ||(|a_i + b_i| t_i ||p_i||)_i||``, the diagonal by ``2 ||t||``."""
        total = abs(rho) * math.sqrt(self.blocks[0].size)
        total += sum(np.linalg.norm(m) for m in self.out.values()) ** 2
        for blk, sl in zip(self.blocks[1:], self.neuron_slices):
            tj = np.abs(t[sl])
            ab, cc = (np.abs(v) for v in blk.sector())
            rows = _row_norms(blk.pre, blk.size)
            total += 2 * float(np.sum(tj * ab * rows ** 2)) + 2 * float(np.linalg.norm(cc * tj * rows))
            total += 2 * float(np.linalg.norm(tj))
        return total * (1 + 1e-10)  # covers the rounding of these few sums of non-negative terms

    @property
    def assembly_gamma(self) -> float:
        """``gamma_W`` for the assembly of one entry of ``N``: an inner product of at most
        ``max(output size, block size)`` terms, each a product of at most four factors, plus one
        addition per term (at most ``len(blocks) + 3`` terms: ``rho`` or the shift, the output,
        each activation, the diagonal)."""
        n_out = next(iter(self.out.values())).shape[0]
        return gamma(max(n_out, *self.sizes) + 4 + len(self.blocks) + 3)

    def data_margin(self, t: np.ndarray) -> float:
        """A bound of ``||N(rho, t) - N^(rho, t)||_2`` for any ``rho``, where ``N^`` is built from
        the stored maps ``P^`` and ``N`` from the exact ones, row ``i`` of ``P - P^`` of norm at
        most ``e_i`` (``pre_err``, ``out_err``: per-row bounds, their norm over the blocks read).
        Activation ``j`` moves ``2 P^T D P`` (``D = diag(t a b)``, a sum of rank-one terms
        ``d_i p_i p_i^T``) by at most ``2 sum_i |d_i| (2 ||p^_i|| e_i + e_i^2)`` and its
        off-diagonal block ``-(A + B) T P`` (with its transpose: a symmetric matrix of the same
        norm) by at most its Frobenius norm ``||(|a_i + b_i| t_i e_i)_i||``; the output term
        ``A_out^T A_out`` moves by at most ``sum_i (2 ||a^_i|| e_i + e_i^2)``. Each neuron enters
        with its own multiplier and sector, so a few large multipliers only count on their own rows."""
        n_out = next(iter(self.out.values())).shape[0] if self.out else 0
        rows = _row_norms(self.out, n_out)
        errs = _row_norms(self.out_err, n_out, squared=False) if self.out_err else np.zeros_like(rows)
        total = float(np.sum(2 * rows * errs + errs ** 2))
        for blk, sl in zip(self.blocks[1:], self.neuron_slices):
            errs = _row_norms(blk.pre_err, blk.size, squared=False)
            if errs.size and np.any(errs):
                tj = np.abs(t[sl])
                ab, cc = (np.abs(v) for v in blk.sector())
                rows = _row_norms(blk.pre, blk.size)
                total += 2 * float(np.sum(tj * ab * (2 * rows * errs + errs ** 2)))
                total += float(np.linalg.norm(cc * tj * errs))
        return total * (1 + 1e-10)  # covers the rounding of these few sums of non-negative terms

    # ---- dense / banded assembly ----------------------------------------------------------
    def assemble(self, parts: dict[tuple[int, int], np.ndarray], first: int = 0, banded: int | None = None) -> np.ndarray:
        """Blocks ``>= first`` of ``parts`` as a dense symmetric matrix (``banded=None``) or in
        LAPACK lower band storage with ``banded`` sub-diagonals."""
        off = self.offsets
        base = off[first]
        n = off[-1] - base
        if banded is None:
            mat = np.zeros((n, n))
            for (r, c), m in parts.items():
                if c < first:
                    continue
                rs, cs = slice(off[r] - base, off[r + 1] - base), slice(off[c] - base, off[c + 1] - base)
                mat[rs, cs] += m
                if r != c:
                    mat[cs, rs] += m.T
            return mat
        ab = np.zeros((banded + 1, n))
        for (r, c), m in parts.items():
            if c < first:
                continue
            i = np.arange(off[r], off[r + 1])[:, None] - base
            k = np.arange(off[c], off[c + 1])[None, :] - base
            d = i - k
            keep = (d >= 0) & (d <= banded)
            ii, kk = np.broadcast_to(i, d.shape)[keep], np.broadcast_to(k, d.shape)[keep]
            np.add.at(ab, (ii - kk, kk), m[keep])
        return ab

    def dense_N(self, rho: float, t: np.ndarray, tau: float = 0.0) -> np.ndarray:
        return self.assemble(self.blocks_of_N(rho, t, tau))

    # ---- the least rho for given multipliers -------------------------------------------------
    def schur(self, t: np.ndarray, tau: float = 0.0, *, gradient: bool = False, top: int = 1) -> "SchurResult":
        """Least ``rho`` with ``N(rho, t) - tau I >= 0`` (``inf`` when ``N_hh - tau I`` is not
        positive definite): ``tau`` plus the largest eigenvalue of the Schur complement
        ``Q = N_hx^T (N_hh - tau I)^{-1} N_hx - N_xx^0`` on the input block.

        With ``gradient``, also the ``top`` largest eigenvalues of ``Q`` and their gradients in
        ``t``: for a unit eigenvector ``u``, ``z = (u, -(N_hh - tau I)^{-1} N_hx u)`` and
        ``d lambda / d t_i = -z^T (dN / dt_i) z = -2a_ib_i p_i^2 + 2(a_i+b_i) p_i q_i - 2 q_i^2`` with
        ``p = A_j z``, ``q = z_j`` (neuron ``i`` of activation ``j``); for the largest one this
        is the gradient of ``rho*`` where it is differentiable."""
        parts = self.blocks_of_N(0.0, t, tau)
        n0 = self.blocks[0].size
        nh = self.size - n0
        bw = self.bandwidth(1)
        use_band = nh > 600 and 3 * bw < nh
        hh = self.assemble(parts, first=1, banded=bw if use_band else None)
        hx = np.zeros((nh, n0))
        off = self.offsets
        for (r, c), m in parts.items():
            if c == 0 and r > 0:
                hx[off[r] - n0:off[r + 1] - n0] += m
        try:
            fac = sla.cholesky_banded(hh, lower=True) if use_band else sla.cho_factor(hh, lower=True)
        except (np.linalg.LinAlgError, ValueError):
            return SchurResult(math.inf, None, None)

        def solve(b: np.ndarray) -> np.ndarray:
            return sla.cho_solve_banded((fac, True), b) if use_band else sla.cho_solve(fac, b)

        nxx0 = parts[(0, 0)] + tau * np.eye(n0)  # parts[(0,0)] = N_xx^0 - tau I at rho = 0
        if gradient and n0 > LANCZOS_MIN:
            # iterate on Q without forming it: two triangular solves per product (Lanczos)
            k = min(top, n0 - 2)
            qop = spla.LinearOperator((n0, n0), dtype=np.float64,
                                      matvec=lambda v: hx.T @ solve(hx @ v) - nxx0 @ v)
            v0 = np.random.default_rng(0).standard_normal(n0)
            lam, u = spla.eigsh(qop, k=k, which="LA", tol=1e-10, v0=v0, ncv=min(n0, max(2 * k + 1, 20)))
            order = np.argsort(lam)
            lam, u = lam[order], u[:, order]
        elif n0 > nh and not use_band and not np.any(nxx0):
            # the nonzero eigenvalues of hx^T hh^{-1} hx: the generalised problem (hx hx^T, hh)
            k = min(top, nh)
            lam, v = sla.eigh(hx @ hx.T, hh, subset_by_index=[nh - k, nh - 1])
            u = hx.T @ v
            u /= np.maximum(np.linalg.norm(u, axis=0), 1e-300)
        else:
            k = min(top, n0)
            q = hx.T @ solve(hx) - nxx0
            lam, u = sla.eigh(0.5 * (q + q.T), subset_by_index=[n0 - k, n0 - 1])
        lam, u = lam[::-1] + tau, u[:, ::-1]
        if not gradient:
            return SchurResult(float(lam[0]), None, None)
        z = np.concatenate([u, -solve(hx @ u)], 0)
        grads = self.gradient_at(z)
        return SchurResult(float(lam[0]), grads[:, 0], z[:, 0], lam, grads, z)

    def gradient_at(self, z: np.ndarray) -> np.ndarray:
        """``-z^T (dN/dt_i) z / ||z_x||^2`` for every neuron ``i``; ``z`` of shape ``(N,)`` or ``(N, k)``."""
        off = self.offsets
        grads = []
        for p, q, blk in self.block_parts(z):
            ab, cc = (v.reshape(-1, *([1] * (q.ndim - 1))) for v in blk.sector())
            grads.append(-2 * ab * p * p + 2 * cc * p * q - 2 * q * q)
        zx = z[off[0]:off[1]]
        return np.concatenate(grads) / np.sum(zx * zx, axis=0)

    def block_parts(self, z: np.ndarray):
        """``(p_j, q_j, block_j)`` for every activation block ``j`` of a vector ``z`` of the LMI's
        order (shape ``(N,)`` or ``(N, k)``): ``p_j = sum_r W_jr z_r`` its pre-activation part and
        ``q_j`` its output part."""
        off = self.offsets
        zb = [z[off[i]:off[i + 1]] for i in range(len(self.blocks))]
        for j, blk in enumerate(self.blocks[1:], start=1):
            yield sum(m @ zb[r] for r, m in blk.pre.items()), zb[j], blk

    def rescaled(self, d: list[float], d_out: float) -> "LipschitzLMI":
        """The same LMI with block ``j`` in units of ``d[j]`` and the output in units of ``d_out``
        (``d[0] = 1``; powers of two keep it exact, see the module docstring)."""
        blocks = [BasisBlock(self.blocks[0].name, self.blocks[0].size)]
        for j, b in enumerate(self.blocks[1:], start=1):
            blocks.append(BasisBlock(b.name, b.size, b.lo, b.hi, {k: m * (d[k] / d[j]) for k, m in b.pre.items()},
                                     {k: e * (d[k] / d[j]) for k, e in b.pre_err.items()}))
        out = {k: m * (d[k] / d_out) for k, m in self.out.items()}
        out_err = {k: e * (d[k] / d_out) for k, e in self.out_err.items()}
        return LipschitzLMI(blocks, out, self.scale * d_out, out_err, self.solving_only, self.eliminated)

    def reduced(self) -> "LipschitzLMI":
        """An equivalent LMI whose input block has one variable per row of the maps that read ``x``,
        when they have fewer rows ``p`` than ``x`` has entries ``n`` (else the same maps).

        Every term of ``M`` reads ``x`` only through ``X x`` (``X``, ``p x n``, stacks those maps)
        except ``-rho ||x||^2``. Take any ``Q`` (``n x p``) with orthonormal columns whose range holds
        the rows of ``X``, and write ``x = Q y + x_perp`` with ``Q^T x_perp = 0``: then
        ``X x_perp = 0`` and ``||x||^2 = ||y||^2 + ||x_perp||^2``, so the quadratic form of ``M`` at
        ``(x, w)`` is that of the LMI in ``y`` (maps ``X Q``) at ``(y, w)`` minus
        ``rho ||x_perp||^2 <= 0``: for ``rho >= 0``, ``M <= 0`` iff the LMI in ``y`` is, the same
        ``rho*(t)`` for every ``t``. The thin Householder QR ``X^T = Q R`` gives such a ``Q`` (its
        range holds ``range(X^T)``, whatever the rank of ``X``), and ``X Q = R^T``: only ``R`` is
        formed (``2 n p^2 - 2 p^3 / 3`` flops: OVAL21 base's 2048 x 3072 first layer in 1.6-1.8 s,
        where its SVD took 13-21 s). A rank below ``p`` is not exploited (its directions only carry
        ``-rho ||y||^2``). The result is equivalent in exact arithmetic only, so it is marked
        ``solving_only``: certificates are checked on the full LMI (:mod:`~lipbound.methods.sdp_verify`)."""
        readers = [b.pre[0] for b in self.blocks[1:] if 0 in b.pre] + ([self.out[0]] if 0 in self.out else [])
        rows = sum(m.shape[0] for m in readers)
        n = self.blocks[0].size
        maps = [b.pre for b in self.blocks[1:]] + [self.out]
        if 0 < rows < n:
            rt = np.linalg.qr(np.concatenate(readers, 0).T, mode="r").T  # X Q = R^T, p x p
            cuts = iter(np.split(rt, np.cumsum([m.shape[0] for m in readers])[:-1], 0))
            maps = [{k: (next(cuts) if k == 0 else m) for k, m in pre.items()} for pre in maps]
        blocks = [BasisBlock(self.blocks[0].name, min(rows, n) if rows else n)]
        blocks += [BasisBlock(b.name, b.size, b.lo, b.hi, pre) for b, pre in zip(self.blocks[1:], maps)]
        return LipschitzLMI(blocks, maps[-1], self.scale, solving_only=True, eliminated=self.eliminated)


@dataclass
class SchurResult:
    """``rho`` (least feasible), the gradient ``grad`` of ``rho*`` and null vector ``z``; with
    ``top > 1`` also the largest eigenvalues ``lams`` of the Schur complement, their ``grads`` and
    their vectors ``zs`` (one column each)."""

    rho: float
    grad: np.ndarray | None
    z: np.ndarray | None
    lams: np.ndarray | None = None
    grads: np.ndarray | None = None
    zs: np.ndarray | None = None


def _row_norms(maps: dict[int, np.ndarray], rows: int, squared: bool = True) -> np.ndarray:
    """Per row (``rows`` of them), the Euclidean norm of the row of the whole map ``[P_k]_k``
    (``squared=True``: the maps are matrices) or of the per-row bounds ``(e_ik)_k`` of its blocks'
    errors (vectors); zeros when there is no map (a pre-activation constant on the region)."""
    sq = sum((np.einsum("ij,ij->i", m, m) if squared else m * m) for m in maps.values())
    return np.sqrt(sq) if isinstance(sq, np.ndarray) else np.zeros(rows)


def pow2(x: float) -> float:
    """The power of two nearest to ``x`` (1 for 0 or non-finite)."""
    if not (x > 0 and math.isfinite(x)):
        return 1.0
    return 2.0 ** round(math.log2(x))
