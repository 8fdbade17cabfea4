"""Block elimination and block Cholesky check of a Lipschitz LMI with sparse block structure:
chains (block tridiagonal) and residual nets (block banded), never assembled.

**Block structure.** The LMI ``N(rho, t)`` of :mod:`lipbound.methods.lmi` has one block per basis
variable (the input, then each activation node in topological order). Block ``(j, r)``, ``r < j``,
can be nonzero only when activation ``j`` reads block ``r`` (its off-diagonal term
``-diag((a + b) t_j) A_jr``), when activation ``j`` reads both ``r`` and ``c`` and has
``a b != 0`` (its term ``2 A_jr^T diag(a b t_j) A_jc``), or when the output reads both
(:class:`BlockStructure`, the same rules as
:meth:`~lipbound.methods.lmi.LipschitzLMI.blocks_of_N`). A chain gives a block-tridiagonal
pattern; a residual block ``x -> relu(x + B(x))`` makes its outer activation read the block two
back (the skip), a block band of width 2.

**Elimination, last block first.** Eliminating block ``j`` (Cholesky ``L_j`` of its current
diagonal block ``S_j``, ``H_j = L_j^{-1} C_j`` with ``C_j`` its blocks towards its *neighbours*
``nb(j)``: the blocks ``k < j`` still coupled to it) subtracts ``H_j^T H_j`` from the blocks among
``nb(j)``, which couples every pair of them (fill). :meth:`BlockStructure.neighbours` tracks this
symbolically; in a block band no fill leaves the band. ``N_hh - tau I > 0`` iff every ``S_j``,
``j >= 1``, is positive definite, and what is left on the input block is ``rho I + S_0(0)``, so
the least feasible ``rho`` is ``lambda_max(-S_0)`` (:func:`banded_schur`: the same function of
``t`` as :meth:`~lipbound.methods.lmi.LipschitzLMI.schur`); the null vector follows by back
substitution, ``z_0 = u``, ``z_j = -L_j^{-T} H_j z_nb(j)`` for ``j = 1, 2, ...``. Only the solver
uses this; the value is trusted only once the check below proves it.

**Why the check is sound** (:func:`banded_cholesky_proves`). Permuting the blocks (last first) is
a congruence, so ``N >= c I`` iff the permuted matrix is. The elimination above run to block 0 *is*
the right-looking block Cholesky factorisation of the permuted matrix: each entry of a factor
block ``H_j^T`` is a forward substitution and each entry of ``H_j^T H_j`` one part of the inner
products that Cholesky subtracts (grouped by block, in some order). Demmel's bound (Higham, ASNA
Thm 10.3) holds for any order of these inner products with ``gamma_{w+2}``, ``w`` the most entries
of a row of the factor on and left of its diagonal: for a row of block ``k``, its own block plus
every block ``j > k`` with ``k`` in ``nb(j)`` (:meth:`BlockStructure.row_width`; for a chain
``n_k + n_{k+1}``). So the shift ``c`` of :func:`~lipbound.methods.sdp_verify.cholesky_shift`
with that ``w`` (which also covers the rounding of assembling the blocks and of the materialised
layer matrices) makes a completed factorisation a proof that ``N(rho, t) >= 0``, exactly as for
the dense and banded checks of :mod:`lipbound.methods.sdp_verify`.

**Cost** (:meth:`BlockStructure.work`): ``sum_j (n_j^3 / 3 + n_j^2 p_j + n_j p_j^2)`` flops per
elimination, ``p_j`` the total size of ``nb(j)``, plus ``n_0^3 / 3`` for the input block's
Cholesky in the check (its top eigenvalues, by Lanczos for large input blocks, cost ``O(n_0^2)``
per product).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from ..errors import NotApplicable
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input
from .lmi import LANCZOS_MIN, LipschitzLMI, SchurResult
from .sdp_verify import cholesky_shift

Parts = dict[tuple[int, int], np.ndarray]


@dataclass(frozen=True)
class BlockStructure:
    """Block sizes, the blocks each activation's pre-activation reads (``reads[0]`` is empty: the
    input), whether its sectors have ``a b != 0`` somewhere (``coupled``), and the blocks the
    output reads."""

    sizes: tuple[int, ...]
    reads: tuple[frozenset[int], ...]
    coupled: tuple[bool, ...]
    out_reads: frozenset[int]

    def pattern(self) -> set[tuple[int, int]]:
        """Blocks ``(r, c)``, ``r >= c``, of ``N`` that may be nonzero (module docstring)."""
        pairs = {(j, j) for j in range(len(self.sizes))}
        for j, reads in enumerate(self.reads):
            pairs |= {(j, r) for r in reads}
            if self.coupled[j]:
                pairs |= {(max(r, c), min(r, c)) for r in reads for c in reads}
        return pairs | {(max(r, c), min(r, c)) for r in self.out_reads for c in self.out_reads}

    def neighbours(self) -> list[list[int]]:
        """``nb(j)``: the blocks ``k < j`` coupled to block ``j`` when it is eliminated (last block
        first), fill included; ``nb(0)`` is empty."""
        adj: list[set[int]] = [set() for _ in self.sizes]
        for r, c in self.pattern():
            if r != c:
                adj[r].add(c)
                adj[c].add(r)
        nbs: list[list[int]] = [[] for _ in self.sizes]
        for j in range(len(self.sizes) - 1, 0, -1):
            nbs[j] = sorted(k for k in adj[j] if k < j)
            for a in nbs[j]:
                adj[a].update(b for b in nbs[j] if b != a)
        return nbs

    def row_width(self) -> int:
        """Most entries of a row of the block Cholesky factor (last block first) on and left of its
        diagonal: block ``k``'s own size plus those of every block ``j > k`` with ``k`` in ``nb(j)``."""
        nbs = self.neighbours()
        return max(n + sum(self.sizes[j] for j in range(k + 1, len(self.sizes)) if k in nbs[j])
                   for k, n in enumerate(self.sizes))

    def bandwidth(self) -> int:
        """Lower bandwidth of the assembled ``N`` (flat indices)."""
        off = np.cumsum([0, *self.sizes])
        return max([max(self.sizes) - 1] + [int(off[r + 1] - 1 - off[c]) for r, c in self.pattern() if r != c])

    def work(self) -> float:
        """Flops of one elimination and the input block's Cholesky (module docstring)."""
        nbs = self.neighbours()
        total = self.sizes[0] ** 3 / 3
        for j in range(1, len(self.sizes)):
            n, p = self.sizes[j], sum(self.sizes[k] for k in nbs[j])
            total += n ** 3 / 3 + n * n * p + n * p * p
        return total

    def entries(self) -> int:
        """float64 entries of the off-diagonal blocks, the largest diagonal one and the largest update."""
        nbs = self.neighbours()
        coupling = sum(self.sizes[j] * self.sizes[k] for j, nb in enumerate(nbs) for k in nb)
        update = max((sum(self.sizes[k] for k in nb) ** 2 for nb in nbs), default=0)
        return coupling + max(max(self.sizes) ** 2, update)


def structure_of_lmi(lmi: LipschitzLMI) -> BlockStructure:
    """The block structure of an LMI's data."""
    return BlockStructure(tuple(lmi.sizes), (frozenset(),) + tuple(frozenset(b.pre) for b in lmi.blocks[1:]),
                          (False,) + tuple(bool(np.any(b.sector()[0])) for b in lmi.blocks[1:]),
                          frozenset(lmi.out))


def structure_of_graph(graph: Graph) -> BlockStructure | None:
    """The block structure the LMI of ``graph`` will have at most, from its shapes alone (every
    neuron counted, the input block unreduced), without materialising a layer; None for a graph
    with a node the LMI does not take (max pooling)."""
    g = graph.fused()
    deps: dict[str, frozenset[int]] = {}
    sizes, reads, coupled = [], [frozenset()], [False]
    for node in g:
        if isinstance(node, Input):
            deps[node.name] = frozenset({0})
            sizes.append(math.prod(node.shape))
        elif isinstance(node, Affine):
            deps[node.name] = deps[node.inputs[0]]
        elif isinstance(node, (Add, Concat)):
            deps[node.name] = frozenset().union(*(deps[i] for i in node.inputs))
        elif isinstance(node, Activation):
            lo, hi = node.slope_bounds()
            reads.append(deps[node.inputs[0]])
            coupled.append(bool((lo * hi != 0).any()))
            deps[node.name] = frozenset({len(sizes)})
            sizes.append(math.prod(node.shape))
        else:
            return None
    return BlockStructure(tuple(sizes), tuple(reads), tuple(coupled), deps[g.output])


def _eliminate(lmi: LipschitzLMI, parts: Parts, last: int, checked: bool) -> tuple[dict, Parts] | None:
    """Eliminate blocks ``m, m-1, ..., last`` of the symmetric matrix given by ``parts`` (module
    docstring). Returns ``({j: (L_j, H_j, nb(j))}, the blocks left)``, or None when a pivot block
    is not positive definite (``checked``: LAPACK also rejects non-finite input)."""
    structure = structure_of_lmi(lmi)
    if not set(parts) <= structure.pattern():
        raise NotApplicable("the LMI has blocks outside its structure: it cannot be eliminated block by block")
    nbs = structure.neighbours()
    sizes = lmi.sizes
    a = dict(parts)
    steps = {}
    for j in range(len(sizes) - 1, last - 1, -1):
        try:
            factor = sla.cholesky(a.pop((j, j)), lower=True, check_finite=checked)
        except (np.linalg.LinAlgError, ValueError):
            return None
        if not np.all(np.isfinite(factor)):
            return None
        cols = nbs[j]
        half = None
        if cols:
            coupling = np.concatenate([a.pop((j, k), np.zeros((sizes[j], sizes[k]))) for k in cols], 1)
            half = sla.solve_triangular(factor, coupling, lower=True, check_finite=checked)
            update = half.T @ half
            off = np.cumsum([0] + [sizes[k] for k in cols])
            for x, r in enumerate(cols):
                for y, c in enumerate(cols[:x + 1]):
                    blk = update[off[x]:off[x + 1], off[y]:off[y + 1]]
                    a[(r, c)] = a[(r, c)] - blk if (r, c) in a else -blk
        steps[j] = (factor, half, cols)
    return steps, a


def banded_schur(lmi: LipschitzLMI, t: np.ndarray, tau: float = 0.0, *, gradient: bool = False,
                 top: int = 1) -> SchurResult:
    """Same contract as :meth:`~lipbound.methods.lmi.LipschitzLMI.schur`, by block elimination
    (module docstring); any block structure, chains and residual nets included."""
    done = _eliminate(lmi, lmi.blocks_of_N(0.0, t, tau), 1, checked=False)
    if done is None:
        return SchurResult(math.inf, None, None)
    steps, left = done
    lam, u = _top_eigenpairs(-left[(0, 0)], top)
    if not gradient:
        return SchurResult(float(lam[0]), None, None)
    zs = [u]
    for j in range(1, len(lmi.blocks)):
        factor, half, cols = steps[j]
        rhs = half @ np.concatenate([zs[c] for c in cols], 0)
        zs.append(-sla.solve_triangular(factor, rhs, lower=True, trans="T", check_finite=False))
    z = np.concatenate(zs, 0)
    grads = lmi.gradient_at(z)
    return SchurResult(float(lam[0]), grads[:, 0], z[:, 0], lam, grads, z)


def _top_eigenpairs(q: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``top`` largest eigenvalues (decreasing) and eigenvectors of the symmetric part of ``q``:
    dense for small orders, Lanczos (ARPACK, fixed start, as :meth:`~lipbound.methods.lmi.
    LipschitzLMI.schur` does) above ``LANCZOS_MIN``. Only the solver's value depends on them; the
    check proves whatever ``rho`` it is given."""
    n = q.shape[0]
    sym = 0.5 * (q + q.T)
    k = min(top, n)
    if n <= LANCZOS_MIN:
        lam, u = sla.eigh(sym, subset_by_index=[n - k, n - 1])
    else:
        v0 = np.random.default_rng(0).standard_normal(n)
        lam, u = spla.eigsh(sym, k=k, which="LA", tol=1e-10, v0=v0, ncv=min(n, max(2 * k + 1, 20)))
        order = np.argsort(lam)
        lam, u = lam[order], u[:, order]
    return lam[::-1], u[:, ::-1]


def banded_row_width(lmi: LipschitzLMI) -> int:
    """:meth:`BlockStructure.row_width` of the LMI's structure."""
    return structure_of_lmi(lmi).row_width()


def banded_cholesky_proves(lmi: LipschitzLMI, rho: float, t: np.ndarray) -> bool:
    """True when float64 proves ``N(rho, t) >= 0`` by the block Cholesky factorisation of the
    module docstring, with the rounding shift of :func:`~lipbound.methods.sdp_verify.cholesky_shift`
    for :func:`banded_row_width`."""
    t = np.asarray(t, dtype=np.float64)
    if lmi.solving_only or not (np.all(np.isfinite(t)) and math.isfinite(rho)) or np.any(t < 0):
        return False
    parts = lmi.blocks_of_N(rho, t, cholesky_shift(lmi, rho, t, banded_row_width(lmi)))
    return _eliminate(lmi, parts, 0, checked=True) is not None
