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

**Elimination.** Eliminating block ``j`` (Cholesky ``L_j`` of its current diagonal block
``S_j``, ``H_j = L_j^{-1} C_j`` with ``C_j`` its blocks towards its *neighbours* ``nb(j)``: the
blocks still coupled to it) subtracts ``H_j^T H_j`` from the blocks among ``nb(j)``, which couples
every pair of them (fill). The neuron blocks go first, in the order of
:attr:`BlockStructure.elimination` (greedy on cost: a ReLU block nobody has updated yet has a
*diagonal* ``S_j = diag(2 t_j)``, whose factor is its square root, so it goes early; in a block
band with the last block first, no fill leaves the band), the input block last.
``N_hh - tau I > 0`` iff every ``S_j``, ``j >= 1``, is positive definite, and what is left on the
input block is ``rho I + S_0(0)``, so the least feasible ``rho`` is ``lambda_max(-S_0)``
(:func:`banded_schur`: the same function of ``t`` as :meth:`~lipbound.methods.lmi.LipschitzLMI.
schur`); the null vector follows by back substitution in the reverse order, ``z_0 = u``,
``z_j = -L_j^{-T} H_j z_nb(j)``. Only the solver uses this; the value is trusted only once the
check below proves it.

**Why the check is sound** (:func:`banded_cholesky_proves`). Permuting the blocks into the
elimination order is a congruence, so ``N >= c I`` iff the permuted matrix is. The elimination
above run through the input block *is* the right-looking block Cholesky factorisation of the
permuted matrix: a diagonal pivot block's factor is the square root of its entries (the inner
products Cholesky forms there are empty), each entry of a factor block ``H_j^T`` is a forward
substitution (a division for a diagonal pivot) and each entry of ``H_j^T H_j`` one part of the
inner products that Cholesky subtracts (grouped by block, in some order). Demmel's bound (Higham,
ASNA Thm 10.3) holds for any order of these inner products with ``gamma_{w+2}``, ``w`` the most
entries of a row of the factor on and left of its diagonal: for a row of block ``k``, its own
block plus every block eliminated before ``k`` with ``k`` among its neighbours
(:meth:`BlockStructure.row_width`; ``n_k + n_{k+1}`` for a chain eliminated last block first).
The test suite checks this count against the nonzeros of a dense Cholesky factor of the permuted
pattern. So the shift ``c`` of :func:`~lipbound.methods.sdp_verify.cholesky_shift` with that ``w``
(which also covers the rounding of assembling the blocks and of the materialised layer matrices)
makes a completed factorisation a proof that ``N(rho, t) >= 0``, exactly as for the dense and
banded checks of :mod:`lipbound.methods.sdp_verify`.

**Cost** (:meth:`BlockStructure.work`): ``sum_j (n_j^3 / 3 + n_j^2 p_j + n_j p_j^2)`` flops per
elimination, ``p_j`` the total size of ``nb(j)``, plus ``n_0^3 / 3`` for the input block's
Cholesky in the check (its top eigenvalues, by Lanczos for large input blocks, cost ``O(n_0^2)``
per product).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg as sla
import scipy.sparse.linalg as spla

from ..errors import NotApplicable
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input
from .budget import checkpoint
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

    @cached_property
    def elimination(self) -> tuple[Step, ...]:
        """The order in which blocks are eliminated, each with its neighbours then (fill included)
        and whether its diagonal block is still diagonal; the input block last. Greedy: the
        neuron block whose elimination costs least next (:meth:`work`), the later block on ties
        (last block first on a chain of equal costs)."""
        adj: list[set[int]] = [set() for _ in self.sizes]
        for r, c in self.pattern():
            if r != c:
                adj[r].add(c)
                adj[c].add(r)
        dense = {0} | set(self.out_reads) | {r for j, reads in enumerate(self.reads) if self.coupled[j] for r in reads}
        left = set(range(1, len(self.sizes)))
        steps = []
        while left:
            j = min(left, key=lambda i: (self._cost(i, adj[i], i not in dense), -i))
            nb = tuple(sorted(adj[j]))
            steps.append(Step(j, nb, j not in dense))
            for a in nb:
                adj[a].discard(j)
                adj[a].update(b for b in nb if b != a)
                dense.add(a)
            left.remove(j)
        return tuple(steps) + (Step(0, (), False),)

    def _cost(self, j: int, nb: set[int], diagonal: bool) -> float:
        """Flops of eliminating block ``j`` onto ``nb``: its Cholesky (none when diagonal), ``H_j``, ``H_j^T H_j``."""
        n, p = self.sizes[j], sum(self.sizes[k] for k in nb)
        return (n * p if diagonal else n ** 3 / 3 + n * n * p) + n * p * p

    def row_width(self) -> int:
        """Most entries of a row of the block Cholesky factor (in elimination order) on and left of
        its diagonal: block ``k``'s own size plus those of every block eliminated before it with
        ``k`` among its neighbours."""
        return max(self.sizes[step.block] + sum(self.sizes[s.block] for s in self.elimination[:i] if step.block in s.nb)
                   for i, step in enumerate(self.elimination))

    def bandwidth(self) -> int:
        """Lower bandwidth of the assembled ``N`` (flat indices)."""
        off = np.cumsum([0, *self.sizes])
        return max([max(self.sizes) - 1] + [int(off[r + 1] - 1 - off[c]) for r, c in self.pattern() if r != c])

    def work(self) -> float:
        """Flops of one elimination and the input block's Cholesky (module docstring)."""
        return self.sizes[0] ** 3 / 3 + sum(self._cost(s.block, set(s.nb), s.diagonal) for s in self.elimination)

    def entries(self) -> int:
        """float64 entries of the off-diagonal blocks, the largest diagonal one and the largest update."""
        coupling = sum(self.sizes[s.block] * self.sizes[k] for s in self.elimination for k in s.nb)
        update = max(sum(self.sizes[k] for k in s.nb) ** 2 for s in self.elimination)
        return coupling + max(max(self.sizes) ** 2, update)


@dataclass(frozen=True)
class Step:
    """One block elimination: the ``block``, its neighbours ``nb`` at that point, and whether its
    diagonal block is still diagonal (then its Cholesky factor is the square root of the diagonal)."""

    block: int
    nb: tuple[int, ...]
    diagonal: bool


def structure_of_lmi(lmi: LipschitzLMI) -> BlockStructure:
    """The block structure of an LMI's data."""
    return BlockStructure(tuple(lmi.sizes), (frozenset(),) + tuple(frozenset(b.pre) for b in lmi.blocks[1:]),
                          (False,) + tuple(bool(np.any(b.sector()[0])) for b in lmi.blocks[1:]),
                          frozenset(lmi.out))


def structure_of_graph(graph: Graph) -> BlockStructure | None:
    """The block structure of ``graph``'s LMI as the ``"blocks"`` path builds it
    (:func:`~lipbound.methods.lmi_build.lmi_of_graph` with ``eliminate="constant"``), from shapes and
    slope intervals alone, without materialising a layer: every neuron counted except those of
    constant output (slope interval ``[0, 0]``, e.g. a ReLU stably off on a localized graph), the
    input block unreduced. An activation whose every neuron is constant gives no block, and what
    reads it reads nothing. None for a graph with a node the LMI does not take (max pooling)."""
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
            live = (lo != 0) | (hi != 0)
            size = int(live.sum())
            if size == 0:
                deps[node.name] = frozenset()
                continue
            reads.append(deps[node.inputs[0]])
            coupled.append(bool((lo * hi != 0)[live].any()))
            deps[node.name] = frozenset({len(sizes)})
            sizes.append(size)
        else:
            return None
    return BlockStructure(tuple(sizes), tuple(reads), tuple(coupled), deps[g.output])


def _eliminate(lmi: LipschitzLMI, parts: Parts, through_input: bool, checked: bool) -> tuple[dict, Parts] | None:
    """Eliminate the blocks of the symmetric matrix given by ``parts`` in the order of
    :attr:`BlockStructure.elimination` (module docstring), the input block too if
    ``through_input``. Returns ``({j: (L_j, H_j, step)}, the blocks left)``, or None when a pivot
    block is not positive definite (``checked``: LAPACK also rejects non-finite input). A
    diagonal ``L_j`` is kept as its diagonal (a vector)."""
    structure = structure_of_lmi(lmi)
    if not set(parts) <= structure.pattern():
        raise NotApplicable("the LMI has blocks outside its structure: it cannot be eliminated block by block")
    sizes = lmi.sizes
    a = dict(parts)

    def take(r: int, c: int) -> np.ndarray:
        return a.pop((r, c)) if r >= c else a.pop((c, r)).T

    done = {}
    for step in structure.elimination[:None if through_input else -1]:
        checkpoint()  # a clock in force may stop the elimination between blocks (budget.cancel_after)
        j, cols = step.block, step.nb
        pivot = a.pop((j, j))
        if step.diagonal:
            d = np.diagonal(pivot)
            if np.count_nonzero(pivot) > np.count_nonzero(d):  # the structure said diagonal: never trust it blindly
                raise NotApplicable(f"block {j} of the LMI was expected diagonal and is not")
            if not (np.all(np.isfinite(d)) and np.all(d > 0)):
                return None
            factor = np.sqrt(d)
        else:
            try:
                factor = sla.cholesky(pivot, lower=True, check_finite=checked)
            except (np.linalg.LinAlgError, ValueError):
                return None
            if not np.all(np.isfinite(factor)):
                return None
        half = None
        if cols:
            coupling = np.concatenate([take(j, k) for k in cols], 1)
            half = coupling / factor[:, None] if step.diagonal else \
                sla.solve_triangular(factor, coupling, lower=True, check_finite=checked)
            update = half.T @ half
            off = np.cumsum([0] + [sizes[k] for k in cols])
            for x, r in enumerate(cols):
                for y, c in enumerate(cols[:x + 1]):
                    blk = update[off[x]:off[x + 1], off[y]:off[y + 1]]
                    a[(r, c)] = a[(r, c)] - blk if (r, c) in a else -blk
        done[j] = (factor, half, step)
    return done, a


def banded_schur(lmi: LipschitzLMI, t: np.ndarray, tau: float = 0.0, *, gradient: bool = False,
                 top: int = 1) -> SchurResult:
    """Same contract as :meth:`~lipbound.methods.lmi.LipschitzLMI.schur`, by block elimination
    (module docstring); any block structure, chains and residual nets included."""
    done = _eliminate(lmi, lmi.blocks_of_N(0.0, t, tau), through_input=False, checked=False)
    if done is None:
        return SchurResult(math.inf, None, None)
    steps, left = done
    lam, u = _top_eigenpairs(-left[(0, 0)], top)
    if not gradient:
        return SchurResult(float(lam[0]), None, None)
    zs = {0: u}
    for j in reversed(list(steps)):  # back substitution: every neighbour was eliminated later
        factor, half, step = steps[j]
        rhs = half @ np.concatenate([zs[c] for c in step.nb], 0)
        zs[j] = -(rhs / factor[:, None] if step.diagonal else
                  sla.solve_triangular(factor, rhs, lower=True, trans="T", check_finite=False))
    z = np.concatenate([zs[j] for j in range(len(lmi.blocks))], 0)
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
    return _eliminate(lmi, parts, through_input=True, checked=True) is not None
