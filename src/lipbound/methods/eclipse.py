"""A fast compositional certified bound: sequential closed-form LMI multipliers (ECLipsE-Fast family).

**Maths.** Take the LMI of :mod:`lipbound.methods.lmi` in the form ``N(rho, t) = -M(rho, t) >= 0``
and give each activation node ``j`` one scalar multiplier ``t_j >= 0`` for all its neurons. By
homogeneity, ``N(rho, t) = rho K(t / rho) - A_out^T A_out``, where ``K(s)`` has the blocks

* ``I`` on the input block, ``2 s_j I`` on the block of activation ``j``;
* ``-(a_j + b_j) s_j A_{j,r}`` between activation ``j`` and each block ``r`` it reads;
* ``+2 a_j b_j s_j A_j^T A_j`` on the blocks it reads (negative semidefinite when ``a_j < 0 < b_j``:
  GELU, SiLU, Mish, Hardswish, LeakyReLU with a negative slope, Abs).

Any ``a_j <= b_j`` is handled, through a **loop transformation** per activation: with
``v_j = A_j xi`` and ``w_j = w~_j + a_j v_j``, the three terms of activation ``j`` in the quadratic
form ``xi^T K xi`` are ``2 a b s |v|^2 - 2 (a + b) s v.w + 2 s |w|^2 = -2 (b - a) s v.w~ + 2 s |w~|^2``,
the terms of an activation with slopes in ``[0, b_j - a_j]``. So adding activation ``j`` to the
form of the blocks before it, ``K_<j``, gives ``K_<=j = S^{-T} K~_<=j S^{-1}`` with
``K~_<=j = [[K_<j, -(b_j - a_j) s_j A_j^T], [-(b_j - a_j) s_j A_j, 2 s_j I]]`` and
``S = [[I, 0], [a_j A_j, I]]``: ``K_<=j > 0`` iff ``K~_<=j > 0``, and
``K_<=j^{-1} = S K~_<=j^{-1} S^T``. For ``a_j = 0`` (ReLU, sigmoid, tanh) nothing changes.

**Per-neuron sectors.** Everything above and below holds with ``a_j``, ``b_j`` the *diagonal
matrices* of the sector ends of activation ``j``'s neurons (the loop transformation is per neuron;
``b_j - a_j`` becomes ``diag(b - a)``, so ``G_j = diag(b - a) A_j K_<j^{-1} A_j^T diag(b - a)``).
Globally every neuron has its node's range; on a region each neuron has its slope interval
(:meth:`~lipbound.graph.ir.Activation.slope_bounds`), and the stable ones are already folded into
the linear maps by the builder (:mod:`lipbound.methods.lmi_build`). **Why the local value is
sound:** for ``x, y`` in a convex region, each neuron's input stays in its bounds along the
segment, so its increment is its pre-activation's times a secant slope in its interval, and the
sector constraints hold for every such pair: the certified value bounds
``||f(x) - f(y)|| / ||x - y||`` over all pairs in the region (:mod:`lipbound.methods.lmi`).

*Claim.* If ``K(s) > 0``, then ``N(rho, rho s) >= 0`` for ``rho = lambda_max(A_out K(s)^{-1} A_out^T)``,
so ``L(f) <= scale * sqrt(rho)``. *Proof.* ``rho K - A_out^T A_out >= 0`` iff
``I - rho^{-1/2} K^{-1/2} A_out^T A_out K^{-1/2} rho^{-1/2} >= 0`` iff
``||A_out K^{-1/2}||^2 <= rho``, and ``||A_out K^{-1/2}||^2 = lambda_max(A_out K^{-1} A_out^T)``;
then the S-procedure of :mod:`lipbound.methods.lmi` applies with the multipliers ``t = rho s >= 0``.

*Choosing ``s`` in closed form, in topological order.* Build the form one activation at a time
and eliminate the blocks one by one (block ``LDL^T``). When activation ``j`` is reached, the form
``K_<j`` of the blocks before it does not involve ``s_j`` or later multipliers, and the Schur
complement of ``K_<j`` in ``K~_<=j`` is ``D_j = 2 s_j I - s_j^2 G_j`` with
``G_j = (b_j - a_j)^2 A_j K_<j^{-1} A_j^T`` (the transformed coordinates do not change ``K_<j``). With ``g_j = ||G_j||_2``,
``D_j >= (2 s_j - s_j^2 g_j) I``, maximal at ``s_j = 1 / g_j`` where ``D_j >= s_j I > 0``; so by
induction every ``K_<=j`` is positive definite, and so is ``K``. Only the blocks of ``K^{-1}`` among
blocks still read later are kept (``(K^{-1})`` restricted to a set of blocks is the inverse of the
Schur complement onto them), so a chain keeps one ``n_j x n_j`` matrix ``X_j^{-1}``: this is the
recursion ``X_0 = I``, ``s_j = 1 / ||W_j X_{j-1}^{-1} W_j^T||`` (for ReLU), ``X_j = 2 s_j I - s_j^2
W_j X_{j-1}^{-1} W_j^T``, ``L = sqrt(||W_K X_{K-1}^{-1} W_K^T||)`` of ECLipsE-Fast (Xu &
Sivaranjani, 2024), here derived for any graph of affine maps, sums, concatenations and slope-
restricted activations (residual blocks included). The greedy choice ``s_j = 1 / g_j`` is not the best for
the final ``rho``: ``s_j = theta / g_j`` with one ``theta`` in ``(0, 2)`` for all activations (for
all residual-branch activations in a graph whose earlier blocks stay in use, where eliminating
block ``j`` also inflates the kept blocks of ``K^{-1}`` by a term proportional to ``s_j``) is chosen
by a short search on the final ``rho`` (a grid, then golden section), ``theta = 1`` included; any
``0 < theta < 2`` keeps ``D_j >= s_j (2 - theta) I > 0``, so every choice is valid. On the LipSDP
files this comes within 0.2% of the LipSDP-Layer optimum; LipSDP-Neuron (one multiplier per
neuron) is tighter still, by 5-10% on one hidden layer and by up to 4x on deep random nets.

*Never above the AutoLip product (chains with slopes in [0, 1]).* ``X_j >= s_j I`` and
``s_j >= 1 / (||W_j||^2 ||X_{j-1}^{-1}||)`` give ``||X_j^{-1}|| <= prod_{i<=j} ||W_i||^2`` and
``rho <= prod ||W_i||^2``; ``theta = 1`` is always among the candidates, and the check below
only lowers ``rho``.

**Strictly feasible multipliers.** At ``t = rho s`` the matrix ``N`` is singular, and when
``a_j + b_j = 0`` (Abs, LeakyReLU(-1)) the input block decouples and its null vector can lie in
the neuron block, where the check needs a margin. Since ``K(s) > 0``,
``N(rho', rho' s) >= (rho' - rho) K(s) > 0`` for ``rho' > rho``: the multipliers returned are
``t = (1 + INTERIOR) rho s``, feasible for ``rho (1 + INTERIOR)``.

**Verification.** The multipliers ``t`` go through the same check as LipSDP
(:func:`~lipbound.methods.sdp_verify.certify`): the least ``rho`` for them is recomputed (it is
at most the recursion's, often lower) and proved in float64 by a Cholesky factorisation. Cost: one
eigenvalue problem and a few products per activation (``O(sum n_j^3)`` for a chain), plus the
check (a banded Cholesky for chains).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse.linalg as spla

from ..graph.ir import Graph
from ..report import Result
from .budget import Clock, checkpoint, stopped_by
from .line_search import golden_section
from .lmi import LipschitzLMI, pow2
from .lmi_build import lmi_of_graph
from .sdp_verify import CertificateRejected, certify

if TYPE_CHECKING:
    from .lipsdp_banded import BlockStructure


INTERIOR = 1e-6  # relative step into the interior of the feasible set (see "Strictly feasible multipliers")


def fast_multipliers(lmi: LipschitzLMI, *, grid: int = 7, evaluations: int = 14,
                     clock: Clock | None = None) -> tuple[np.ndarray, float]:
    """The multipliers ``t`` (one per neuron, strictly feasible) and ``rho`` of the recursion above, for the best
    ``theta`` found on ``log theta``: ``grid`` points spread over the range, then golden-section
    search between the best one's neighbours, ``evaluations`` runs of :func:`_recursion` in all
    (``theta = 1``, ECLipsE-Fast's choice, is always one of them; ``rho(theta)`` rises steeply
    near ``theta = 2``, where a golden-section search alone can miss the minimum). The search
    stops early when ``clock`` (:class:`~lipbound.methods.budget.Clock`) expires, which the clock
    then remembers (``clock.cut``). Recursions already run on an LMI of the same content are
    reused (:func:`_runs_of`): the result is the one a fresh call gives, without its cost."""
    chain = lmi.is_chain()
    memo: dict = {}
    runs = _runs_of(lmi)
    cache: dict[float, tuple[np.ndarray, float]] = {}

    def rho_of(u: float) -> float:
        if u not in cache:
            if u not in runs:
                runs[u] = _recursion(lmi, math.exp(u), chain, memo)
            cache[u] = runs[u]
        return cache[u][1]

    rho_of(0.0)
    lo, hi = (math.log(0.3), math.log(1.95)) if chain else (math.log(0.02), math.log(1.9))

    def timed_out() -> bool:
        return clock is not None and clock.expired()

    points = np.linspace(lo, hi, grid).tolist()
    for u in points:
        if timed_out():
            break
        rho_of(u)
    done = [u for u in points if u in cache]
    if done:
        i = int(np.argmin([cache[u][1] for u in done]))
        lo, hi = done[max(i - 1, 0)], done[min(i + 1, len(done) - 1)]
    golden_section(rho_of, lo, hi, lambda a, b: len(cache) + 1 < evaluations and not timed_out())
    t, rho = min(cache.values(), key=lambda v: v[1])
    return t.copy(), rho


MEMO_LMIS = 4  # LMIs whose recursions are remembered (the most recently used ones)
_RUNS: OrderedDict[bytes, dict[float, tuple[np.ndarray, float]]] = OrderedDict()


def _runs_of(lmi: LipschitzLMI) -> dict[float, tuple[np.ndarray, float]]:
    """The recursions already run on an LMI of the same content, by ``log theta``: a default run
    calls :func:`fast_multipliers` in ``eclipse-fast`` and again for lipsdp's start on the same
    LMI. The recursion is a deterministic function of the data that :func:`_fingerprint` hashes,
    so a remembered run is the run a fresh call would make (and every use re-checks the
    multipliers anyway: :func:`~lipbound.methods.sdp_verify.certify`)."""
    key = _fingerprint(lmi)
    runs = _RUNS.pop(key, {})
    _RUNS[key] = runs
    while len(_RUNS) > MEMO_LMIS:
        _RUNS.popitem(last=False)
    return runs


def _fingerprint(lmi: LipschitzLMI) -> bytes:
    """A digest of everything :func:`_recursion` reads: the blocks' sizes, sectors and
    pre-activation maps, and the output map."""
    h = hashlib.blake2b(digest_size=32)

    def add(tag: str, a: np.ndarray | None = None) -> None:
        h.update(tag.encode())
        if a is not None:
            a = np.ascontiguousarray(a, dtype=np.float64)
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())

    for j, blk in enumerate(lmi.blocks):
        add(f"block {j} {blk.size}")
        for name, v in (("lo", blk.lo), ("hi", blk.hi)):
            if v is not None:
                add(name, v)
        for r, m in sorted(blk.pre.items()):
            add(f"pre {r}", m)
    for r, m in sorted(lmi.out.items()):
        add(f"out {r}", m)
    return h.digest()


def balanced(lmi: LipschitzLMI) -> LipschitzLMI:
    """The LMI rescaled so that each block has unit size for the recursion (``d_j``: the power of
    two nearest ``sqrt(max diag (K^{-1})_jj)``, ``d_out`` nearest ``sqrt(rho)``). The AutoLip
    scaling of :func:`~lipbound.methods.lmi.lmi_of_graph` can be off by orders of magnitude on deep
    nets whose true constant is far below the product of norms, which would leave ``rho`` below
    the rounding margins of the check."""
    memo: dict = {}
    t, rho = _recursion(lmi, 1.0, lmi.is_chain(), memo)
    d = [1.0] + [pow2(memo["spread"][j]) for j in range(1, len(lmi.blocks))]
    d_out = pow2(math.sqrt(max(rho, 0.0)))
    out = lmi.rescaled(d, d_out)
    _runs_of(out).setdefault(0.0, _rescaled_run(lmi, t, rho, d, d_out))
    return out


def _rescaled_run(lmi: LipschitzLMI, t: np.ndarray, rho: float, d: list[float],
                  d_out: float) -> tuple[np.ndarray, float]:
    """The recursion at ``theta = 1`` on ``lmi.rescaled(d, d_out)`` from its run ``(t, rho)`` on
    ``lmi``, without running it again. Block ``j`` in units of ``d_j`` and the output in units of
    ``d_out`` make ``N(rho, t)`` congruent (by ``diag(d_j I)``) to ``d_out^2 N'(rho', t')`` with
    ``rho' = rho / d_out^2``, ``t'_j = t_j d_j^2 / d_out^2``; the recursion is equivariant under
    this map: ``K'_<j = D K_<j D``, so ``G'_j = G_j / d_j^2``, ``s'_j = s_j d_j^2``, and the same
    congruence carries every ``D_j``. With powers of two the scaling is exact in floating point up
    to the iterative top eigenvalue, and the multipliers are checked before use anyway."""
    scale = np.concatenate([np.full(blk.size, d[j] ** 2) for j, blk in enumerate(lmi.blocks[1:], start=1)])
    return t * scale / d_out ** 2, rho / d_out ** 2


def _recursion(lmi: LipschitzLMI, theta: float, every_node: bool, memo: dict) -> tuple[np.ndarray, float]:
    """The recursion with ``s_j = theta_j / g_j``: ``theta_j = theta`` for every activation
    (``every_node``, used for chains) or only for an activation some of whose inputs are read
    again later (a residual branch: eliminating it also adds ``w^2 s_j K^{-1} P^T (2 I - s_j G_j)^{-1}
    P K^{-1}`` to those inputs' block of ``K^{-1}``, so a smaller ``s_j`` trades its own block
    against theirs), ``theta_j = 1`` otherwise. ``D_j >= s_j (2 - theta_j) I > 0`` for
    ``0 < theta_j < 2``. Block ``j`` is eliminated in the loop-transformed coordinates
    ``w~_j = w_j - a_j v_j`` (module docstring) and ``K^{-1}`` is mapped back with
    ``S = [[I, 0], [a_j P, I]]``. ``memo`` keeps what does not depend on ``theta`` between calls."""
    last_reader = {0: 0}
    for j, blk in enumerate(lmi.blocks[1:], start=1):
        last_reader[j] = j
        for r in blk.pre:
            last_reader[r] = j
    out_reads = set(lmi.out)
    live = [0]
    kinv = np.eye(lmi.blocks[0].size)
    s = []
    for j, blk in enumerate(lmi.blocks[1:], start=1):
        checkpoint()  # a clock in force may stop the recursion between blocks (budget.cancel_after)
        p = np.concatenate([blk.pre.get(r, np.zeros((blk.size, lmi.blocks[r].size))) for r in live], 1)
        width = (blk.hi - blk.lo)[:, None]  # per neuron, slopes of the transformed activation: [0, width]
        if j == 1:  # K^{-1} is the identity on the input: G_1 and g_1 do not depend on theta
            if "g1" not in memo:
                g1 = (width * p) @ (width * p).T
                memo.update(g1=g1, gn1=_top_eigenvalue(g1))
            pk, g_mat, g = p, memo["g1"], memo["gn1"]
        else:
            pk = p @ kinv
            g_mat = (width * pk) @ (width * p).T
            g = _top_eigenvalue(g_mat)
        reread = any(last_reader[r] > j or r in out_reads for r in blk.pre)
        sj = (theta if reread or every_node else 1.0) / g if g > 0 else 1.0
        s.append(np.full(blk.size, sj))
        b_kinv = -sj * width * pk  # B K^{-1} with B = -s diag(b - a) P
        d = 2 * sj * np.eye(blk.size) - sj * sj * g_mat
        dinv = np.linalg.inv(0.5 * (d + d.T))
        # block inverse of K~ = [[K, B^T], [B, D + B K^{-1} B^T]] on the live blocks and j
        corner = -b_kinv.T @ dinv
        keep = [i for i, r in enumerate(live) if last_reader[r] > j or r in out_reads]
        # the kept blocks of K~^{-1}; a chain keeps none, and skips this product (n_{j-1}^2 n_j)
        x = kinv - corner @ b_kinv if keep or np.any(blk.lo) else None
        if np.any(blk.lo):  # back to w_j = w~_j + diag(a) P xi: K^{-1} = S K~^{-1} S^T
            ap = blk.lo[:, None] * p
            xp = x @ ap.T
            dinv = dinv + ap @ corner + corner.T @ ap.T + ap @ xp
            corner = corner + xp
        memo.setdefault("spread", {})[j] = math.sqrt(max(float(np.max(np.diag(dinv))), 0.0))
        idx = np.concatenate([_flat(lmi, live, i) for i in keep]) if keep else np.zeros(0, dtype=int)
        kinv = np.block([[x[np.ix_(idx, idx)], corner[idx]], [corner[idx].T, dinv]]) if keep else dinv
        live = [live[i] for i in keep] + [j]
    po = np.concatenate([lmi.out.get(r, np.zeros((_rows(lmi), lmi.blocks[r].size))) for r in live], 1)
    q = po @ kinv @ po.T
    rho = float(np.linalg.eigvalsh(0.5 * (q + q.T))[-1])
    return (1 + INTERIOR) * rho * np.concatenate(s), rho


def recursion_work(structure: "BlockStructure") -> float:
    """Flops of one :func:`_recursion` on an LMI of this block structure, from its sizes alone (the
    plan of LipSDP's "blocks" path, :mod:`lipbound.methods.lipsdp_conv`). For activation block ``j``
    of ``n`` neurons, with ``m`` the entries of the blocks still live before it (those read at or
    after ``j``, or by the output): ``P K^{-1}`` (``n m^2`` multiply-adds; none for the first,
    whose ``K^{-1}`` is the identity), ``G_j`` and the corner ``-B^T D^{-1}`` (``n^2 m`` each),
    ``D_j^{-1}`` (``n^3``), and ``K^{-1}`` of the kept blocks (``n m^2``) when some live block is kept;
    two flops per multiply-add. An estimate of the dense products' work, not a bound: the plan
    only reads it to price the recursion (OVAL21 base: 8.8e10 flops, 4.1 s measured on one core)."""
    sizes = structure.sizes
    last = {r: max([j for j, reads in enumerate(structure.reads) if r in reads] + [r]) for r in range(len(sizes))}
    live, macs = [0], 0.0
    for j in range(1, len(sizes)):
        n, m = sizes[j], sum(sizes[r] for r in live)
        kept = [r for r in live if last[r] > j or r in structure.out_reads]
        macs += (n * m * m if j > 1 else 0) + 2 * n * n * m + n ** 3 + (n * m * m if kept else 0)
        live = kept + [j]
    return 2.0 * macs


LANCZOS_ORDER = 500  # symmetric matrices of larger order get their top eigenvalue by Lanczos


def _top_eigenvalue(mat: np.ndarray) -> float:
    """The largest eigenvalue of the symmetric part of ``mat``: dense for small orders, Lanczos
    (ARPACK, fixed start) above ``LANCZOS_ORDER``, whose Ritz value is within ``1e-10`` (relative)
    of it. It only sets ``s_j``: any ``s_j < 2 / lambda_max(G_j)`` keeps ``D_j > 0``, and the
    multipliers are checked afterwards whatever they are."""
    sym = 0.5 * (mat + mat.T)
    if sym.shape[0] <= LANCZOS_ORDER:
        return float(np.linalg.eigvalsh(sym)[-1])
    v0 = np.ones(sym.shape[0]) + np.arange(sym.shape[0]) / sym.shape[0]
    return float(spla.eigsh(sym, k=1, which="LA", tol=1e-10, v0=v0)[0][0])


def _rows(lmi: LipschitzLMI) -> int:
    return next(iter(lmi.out.values())).shape[0]


def _flat(lmi: LipschitzLMI, live: list[int], i: int) -> np.ndarray:
    start = sum(lmi.blocks[r].size for r in live[:i])
    return np.arange(start, start + lmi.blocks[live[i]].size)


def _candidates(graph: Graph, max_size: int) -> list[LipschitzLMI]:
    """The LMI with every stable neuron eliminated and, when it differs, the one that keeps the
    stable neurons of slope ``!= 0`` (equality sectors), so that a chain stays a chain: the
    recursion is tighter on chains (deep nets: ACAS Xu), the smaller LMI wins on shallow ones.
    On a localized graph the global LMI is a candidate too: the recursion's closed-form
    multipliers are not monotone in the slope box (a local value was seen 25% above the global
    one), and any candidate's checked value is a bound on the region."""
    full = lmi_of_graph(graph, max_size=max_size)
    chain = lmi_of_graph(graph, max_size=max_size, eliminate="constant")
    out = [full] if chain.size == full.size else [full, chain]
    if graph.region is not None:
        out.append(lmi_of_graph(graph.without_region(), max_size=max_size))
    return [lmi for lmi in out if lmi.out]  # an LMI whose output reads nothing: f is constant there


def eclipse_fast(graph: Graph, *, seed: int = 0, progress: bool = False, max_size: int = 20000,
                 time_budget: float | None = None) -> Result:
    """Certified upper bound of ``L(f)`` (L2 -> L2) from the sequential closed-form multipliers
    (see the module docstring), checked in float64 before it is reported.

    Applies to graphs of affine maps, element-wise activations with any slope range ``[a, b]``,
    sums and concatenations whose LMI has order (input size + neurons) at most ``max_size``;
    raises :class:`~lipbound.errors.NotApplicable` otherwise. On a localized graph it reads each
    neuron's slope interval, stable neurons eliminated: a certified bound over all pairs in the
    region (module docstring); the recursion runs on both LMIs of :func:`_candidates` and the
    smaller value is checked. ``time_budget`` (seconds) cuts the search over ``theta`` short; the
    recursion at ``theta = 1`` and the check always run; ``details["stopped_by"]`` is ``"time"``
    when it did, else ``"iterations"`` (the search ran its fixed count of evaluations). ``details``: the recursion's value
    (``recursion``), the LMI's order and eliminated stable neurons, the verified ``rho``, timings."""
    t0 = time.perf_counter()
    clock = Clock(math.inf if time_budget is None else time_budget)
    runs = []
    for lmi in _candidates(graph, max_size):
        lmi = balanced(lmi)
        t, rho = fast_multipliers(lmi, clock=clock)
        runs.append((lmi.scale * math.sqrt(max(rho, 0.0)), lmi, t, rho))
    _, lmi, t, rho = min(runs, key=lambda run: run[0])
    t1 = time.perf_counter()
    details: dict[str, Any] = {"recursion": lmi.scale * math.sqrt(max(rho, 0.0)), "lmi_order": lmi.size,
                               "eliminated_neurons": lmi.eliminated, "recursion_seconds": t1 - t0,
                               "stopped_by": stopped_by(["iterations"], clock)}
    try:
        cert = certify(lmi, t, claimed_rho=rho)
    except CertificateRejected as exc:
        details.update(verified=False, reason=str(exc))
        return Result("eclipse-fast", details["recursion"], "estimate", time.perf_counter() - t0, details=details)
    details.update(cert.summary())
    return Result("eclipse-fast", cert.value, "certified_upper", time.perf_counter() - t0, details=details)
