"""SeqLip (paper, section on sequential networks; DESIGN §5): a tighter bound for the sequential
chains of a network, composed with AutoLip over the rest of the graph.

**Chains.** In the fused graph (:meth:`~lipbound.graph.ir.Graph.fused`) a *chain* is a maximal
sequence ``M_1, s_1, M_2, ..., s_{K-1}, M_K`` of affine nodes ``M_i`` separated by element-wise
activations ``s_i`` whose derivatives (and difference quotients) lie in ``[a_i, b_i]``, each node
but the last read only by the next one. Max pooling, additions, concatenations, an activation
followed by anything but an affine node, and a node read twice end a chain. The chain maps the
value ``x`` of the node ``M_1`` reads to the value of ``M_K``, and for any two inputs
``f(x) - f(y) = M_K D_{K-1} ... D_1 M_1 (x - y)`` with ``D_i`` diagonal, entries in
``[a_i, b_i]`` (the difference quotients of each activation), so its Lipschitz constant is at
most ``max_D ||M_K D_{K-1} ... D_1 M_1||_2``.

**On a region** (``Graph.region``, the activations' ``pre`` bounds set by
:func:`lipbound.methods.propagation.localize`) each neuron ``j`` of ``s_i`` gets its own slope
interval ``[lo_j, hi_j]`` (:meth:`~lipbound.graph.ir.Activation.slope_bounds`); with no region
every neuron gets ``[a_i, b_i]`` and the numbers are the global ones. Why the bound then holds for
all pairs ``x, y`` of a convex region ``X``: along the segment from ``x`` to ``y`` (inside ``X``)
each neuron's input stays in its ``[l_j, u_j]``, so ``s(z_x) - s(z_y) = d_j (z_x - z_y)`` with the
secant slope ``d_j`` in ``[lo_j, hi_j]``, and ``f(x) - f(y) = M_K D_{K-1} ... D_1 M_1 (x - y)`` with
every ``D_i`` in the per-neuron slope box. SeqLip bounds the maximum of the norm over that box, so
it bounds ``||f(x) - f(y)|| / ||x - y||`` on ``X``. A **stable** neuron (``lo_j = hi_j``, e.g. a
ReLU stably on or off) is a constant of its pair, not a branching variable
(:func:`~lipbound.methods.seqlip_solvers.certified_pair`), so a pair with few unstable neurons is
solved exactly however wide its layer.

**SeqLip.** With SVDs ``M_i = U_i S_i V_i^T`` and ``T_1 = S_1``, ``T_K = S_K``,
``T_i = S_i^{1/2}`` otherwise (the middle ``S_i`` split in two halves), sub-multiplicativity
gives::

    max_D ||M_K D_{K-1} ... D_1 M_1|| <= prod_{i=1}^{K-1} max_{D_i} ||T_{i+1} V_{i+1}^T D_i U_i T_i||

(``U_K`` and ``V_1^T`` are isometries and drop out; note ``V^T``, not ``V`` as in the 2018 code).
A chain of one affine node is just its norm. Each factor is a *pair* problem solved by
:mod:`~lipbound.methods.seqlip_solvers`; the chain's constant replaces the product of its AutoLip
factors in AutoLip's propagation (:func:`~lipbound.methods.autolip.propagate`), so every model
AutoLip supports gets a SeqLip number, never above AutoLip's.

**Three solvers** (each a registered method):

* ``"seqlip"`` — **certified upper bound**. Dense float64 SVDs of the chain's layers (:mod:`~lipbound.methods.seqlip_spectra`) (materialised
  when ``in * out <= svd_limit`` and the SVD's cost is at most ``SVD_FLOPS``); each pair's maximum over activation patterns solved exactly
  (enumeration up to ``enumerate_max`` neurons, branch and bound with a convex relaxation beyond)
  or bounded from above when its work cap ``pair_work`` is spent (the relaxation's bound), or
  when the wall-clock caps ``pair_budget`` / ``time_budget`` cut it short (``details`` marks the
  pair ``cut``). A pair that cannot do better (layer too
  large for an SVD, or a bound no better) keeps its **AutoLip factor**
  ``||T_{i+1}|| max_j max(|lo_j|, |hi_j|) ||T_i||`` with certified layer norms (globally
  ``max(|a_i|, |b_i|)``: the product of those factors over a chain is exactly AutoLip's), or, with
  per-neuron slopes and the SVDs at hand, the diag-scaled factor
  ``||T_{i+1} V_{i+1}^T L^{1/2}|| ||L^{1/2} U_i T_i||`` (``L = diag(max(|lo_j|, |hi_j|))``) when
  smaller. ``details`` says which pairs were ``exact``,
  ``bounded`` or ``fallback``. A rounding margin (``CERTIFIED_RTOL`` per pair, plus ``1e-12`` of
  the chain's AutoLip product) covers float64 arithmetic.
* ``"seqlip-greedy"`` — **estimate**: the paper's greedy SeqLip on the dense SVDs (each pair's
  value is the norm at a vertex, never above the exact pair maximum, so the result never exceeds
  the certified SeqLip), implemented with rank-one updates and warm-started power iterations.
* ``"seqlip-topk"`` — **estimate**: the paper's heuristic for layers too large for an SVD: the
  top ``topk`` singular triplets of each layer of a chain from the block power method
  (:func:`~lipbound.linalg.spectral.power_method`) on the operator at its true input size, then
  the greedy. With exact triplets each truncated pair matrix is a sub-block of the full one (in
  the singular bases), so dropping the tail of the spectra can only lower each pair's value:
  top-k is below the full-spectrum SeqLip, and far below it when the spectra are flat.

For both estimates a pair whose layers cannot be used falls back to its certified AutoLip factor,
as in ``"seqlip"``.

**Same seed, same numbers.** What is computed depends on the counts and work caps only
(``enumerate_max``, ``pair_work``, ``svd_limit``, ``topk_iter``, the greedy's own stopping rule)
and on a plan made from the layers' sizes and ``time_budget`` (:mod:`~lipbound.methods.work_plan`):
the layer norms get :data:`NORMS_SHARE` of it, the chains' SVDs (or top-k block power steps, the
same count for every layer) :data:`SPECTRA_SHARE`, by predicted seconds; an SVD left out leaves its
pairs their AutoLip factors (``"work"``). The wall-clock budgets are outer caps
(:mod:`~lipbound.methods.budget`); a pair's budget counts its SVDs. Each pair row has a
``stopped_by`` and ``details["stopped_by"]`` is the most telling of them: ``"converged"`` (every
pair solved or bounded to the end), ``"work"`` (a work cap bounded a pair, or left it its AutoLip
factor), ``"iterations"`` (an iteration count ended a power method or greedy) or ``"time"``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import InvalidInput
from ..graph.ir import Activation, Affine, Graph, Node
from ..graph.walk import GraphInterpreter
from ..linalg.spectral import CERTIFIED_RTOL
from ..report import Result
from . import seqlip_solvers as solvers
from .autolip import BUDGET_CUT, layer_norms, propagate
from .budget import Clock, stopped_by
from .seqlip_spectra import SVD_FLOPS, SVD_LIMIT, _SVD_CACHE, TopK, _dense_svd, _Factors, _topk_svd
from .work_plan import Allowance, gram_step_seconds, power_steps, svd_seconds

__all__ = ["seqlip", "sequential_chains", "Chain", "SOLVERS"]

SOLVERS = ("certified", "greedy", "topk")
NORMS_SHARE = 0.25  # of ``time_budget``: the plan of the layer norms (AutoLip's part, the fallbacks)
SPECTRA_SHARE = 0.5  # of ``time_budget``: the plan of the chains' SVDs or top-k block power methods


@dataclass
class Chain:
    """A maximal sequential chain of the fused graph: ``affines[0]``, ``activations[0]``, ...,
    ``affines[-1]``; ``start`` is the node the first affine node reads."""

    affines: list[str]
    activations: list[str]
    start: str

    @property
    def end(self) -> str:
        return self.affines[-1]

    @property
    def interior(self) -> list[str]:
        """Every node of the chain but the last (each read only by the next)."""
        return self.affines[:-1] + self.activations


def sequential_chains(graph: Graph) -> list[Chain]:
    """The maximal chains of affine nodes separated by activations, in the fused graph, in
    topological order (chains of one affine node included)."""
    g = graph.fused()
    finder = _ChainFinder(g)
    finder.run(g)
    return finder.chains


class _ChainFinder(GraphInterpreter["Chain | None"]):
    """:func:`sequential_chains` as a walk: an affine node's value is the chain ending at it; an
    activation's is the chain it continues (it reads the chain's last affine node, read by nothing
    else), else None; any other node ends chains (None). An affine node continues the chain of the
    activation it reads when that activation is read by nothing else, and starts a chain otherwise.
    "Read by nothing else" also excludes the graph's output."""

    name = "SeqLip's chain finder"

    def __init__(self, g: Graph) -> None:
        self.single_user = {n for n, users in g.users().items() if len(users) == 1 and n != g.output}
        self.chains: list[Chain] = []

    def visit_affine(self, node: Affine, chain: Chain | None) -> Chain:
        src = node.inputs[0]
        if chain is not None and chain.end != src and src in self.single_user:  # src: an activation
            chain.activations.append(src)
            chain.affines.append(node.name)
            return chain
        self.chains.append(Chain([node.name], [], src))
        return self.chains[-1]

    def visit_activation(self, node: Activation, chain: Chain | None) -> Chain | None:
        continues = chain is not None and chain.end == node.inputs[0] and chain.end in self.single_user
        return chain if continues else None

    def _ends_chains(self, node: Node, *chains: Chain | None) -> None:
        return None

    visit_input = visit_maxpool = visit_add = visit_concat = _ends_chains


# ---- the method ------------------------------------------------------------------------------

def seqlip(graph: Graph, *, solver: str = "certified", seed: int = 0, progress: bool = False,
           time_budget: float = 300.0, pair_budget: float = 60.0, enumerate_max: int = 20,
           pair_work: float = solvers.PAIR_WORK, svd_limit: int = SVD_LIMIT,
           topk: int = 200, topk_iter: int = 100, topk_tol: float = 1e-4, topk_oversample: int = 8,
           topk_dtype: torch.dtype = torch.float64, greedy: str = "auto", **power_options: Any) -> Result:
    """SeqLip on ``graph`` (module docstring): the sequential chains get SeqLip, the rest AutoLip.

    Args:
        graph: the model's graph (:func:`lipbound.as_graph`).
        solver: ``"certified"`` (method ``"seqlip"``, a certified upper bound), ``"greedy"``
            (``"seqlip-greedy"``, an estimate) or ``"topk"`` (``"seqlip-topk"``, an estimate).
        seed: seeds the start vectors of the power methods and greedy subspaces.
        progress: progress bars on stderr: the layer norms, the pairs, and each top-k block power method.
        time_budget: seconds for the whole call: it sets the plan of the layer norms and the
            chains' spectra (module doc), and it is the outer cap: once spent, the remaining
            layers get their cheap certified norms, the certified solver's remaining pairs keep
            their AutoLip factors (``details["pairs"]["fallback"]`` counts them) and the
            estimates stop their greedy searches and block power methods where they are.
        pair_budget: seconds per pair (at most what is left of ``time_budget``), an outer cap for
            every solver: the certified solver's greedy start, enumeration and branch and bound (a
            pair cut short keeps a certified bound: the relaxation's, or its AutoLip factor; its
            row says ``cut``), and the estimates' greedy searches.
        enumerate_max: most free (unstable) neurons of a pair solved by exhaustive enumeration
            (``2^n`` patterns; stable neurons are constants).
        pair_work: the certified solver's work cap per pair, in floating-point operations of its
            branch and bound (:func:`~lipbound.methods.seqlip_solvers.certified_pair`); a pair
            whose one relaxation step costs more keeps its AutoLip factor.
        svd_limit: largest ``in * out`` of a layer materialised for a dense SVD (and at most
            ``SVD_FLOPS`` for ``in * out * min(in, out)``).
        topk: singular triplets kept per layer by ``"topk"``; ``topk_iter``, ``topk_tol``,
            ``topk_oversample`` (extra block vectors) and ``topk_dtype`` tune its power method.
        greedy: ``"best"`` (the paper's best-improvement greedy), ``"sweep"`` (first-improvement
            passes, the paper's top-k routine) or ``"auto"`` (best up to 16384 neurons).
        **power_options: passed to the layer norms of the AutoLip part (``k``, ``max_iter``, ``tol``).

    Returns:
        A :class:`~lipbound.report.Result`; ``details["chains"]`` lists every chain with its
        constant, its ``product`` of pair values before the clamp to its AutoLip product (so
        tests can see that the clamp never acts), its AutoLip product and each pair (status,
        value, AutoLip factor, neurons and unstable neurons, seconds, solver counters, ``cut`` when a budget stopped it); ``details["pairs"]`` counts
        the pairs by status.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if time_budget < 0 or pair_budget < 0 or enumerate_max < 0 or not pair_work > 0 or topk < 1:
        raise InvalidInput("time_budget, pair_budget and enumerate_max must be >= 0, pair_work > 0 and topk >= 1")
    t0 = time.perf_counter()
    clock = Clock(time_budget)
    deadline = clock.deadline()
    g = graph.fused()
    norms = layer_norms(graph, seed=seed, progress=progress, time_budget=NORMS_SHARE * time_budget, clock=clock,
                        **power_options)
    gen = torch.Generator().manual_seed(seed)
    chains = [c for c in sequential_chains(g) if len(c.affines) > 1]
    allowance = Allowance(SPECTRA_SHARE * time_budget)
    ops = {g.nodes[a].op for c in chains for a in c.affines}
    steps = topk_iter if solver != "topk" else power_steps(  # the same planned block power steps for every layer
        (gram_step_seconds(op, min(topk + topk_oversample, op.in_numel)) for op in ops), allowance.left, topk_iter)
    top = TopK(topk, steps, topk_tol, topk_oversample, topk_dtype, planned=steps < topk_iter)
    n_pairs = sum(len(c.activations) for c in chains)
    bar = tqdm(total=n_pairs, desc=f"seqlip ({solver})", unit="pair", disable=not progress, leave=False)
    chain_rows = []
    constants: dict[str, tuple[str, float, list[str]]] = {}
    counts = {"exact": 0, "bounded": 0, "fallback": 0, "greedy": 0}
    for chain in chains:
        row = _solve_chain(g, chain, norms, solver=solver, gen=gen, bar=bar, pair_budget=pair_budget, deadline=deadline,
                           allowance=allowance, progress=progress, enumerate_max=enumerate_max, pair_work=pair_work,
                           svd_limit=svd_limit, top=top, greedy=greedy)
        for p in row["pairs"]:
            counts[p["status"]] += 1
        chain_rows.append(row)
        constants[chain.end] = (chain.start, row["constant"], chain.interior)
    bar.close()
    # never above AutoLip: equal when every pair falls back, up to the order of products (the rows
    # are those of the smaller value, so their running bound at the output is the result's value)
    value, rows = min(propagate(g, norms, certified=True, chains=constants), propagate(g, norms, certified=True),
                      key=lambda value_rows: value_rows[0])
    name = {"certified": "seqlip", "greedy": "seqlip-greedy", "topk": "seqlip-topk"}[solver]
    kind = "certified_upper" if solver == "certified" else "estimate"
    details = {"solver": solver, "pairs": counts, "chains": chain_rows,
               "stopped_by": stopped_by([p["stopped_by"] for row in chain_rows for p in row["pairs"]]
                                        + ["time"] * any(n.how.startswith(BUDGET_CUT) for n in norms.values())),
               "options": {"time_budget": time_budget, "pair_budget": pair_budget, "enumerate_max": enumerate_max,
                           "pair_work": pair_work, "svd_limit": svd_limit,
                           **({"topk": topk, "topk_iter": topk_iter} if solver == "topk" else {}),
                           **({"greedy": greedy} if solver != "certified" else {})}}
    return Result(name, value, kind, time.perf_counter() - t0, details=details, layers=rows)


def _solve_chain(g: Graph, chain: Chain, norms: dict, *, solver: str, gen: torch.Generator, bar,
                 pair_budget: float, deadline: float, allowance: Allowance, progress: bool, enumerate_max: int,
                 pair_work: float, svd_limit: int, top: TopK, greedy: str) -> dict:
    K = len(chain.affines)
    nodes = [g.nodes[a] for a in chain.affines]
    uppers = [norms[a].upper for a in chain.affines]

    def t_scale(i: int) -> float:  # certified ||T_i||
        return uppers[i] if i in (0, K - 1) else math.sqrt(uppers[i])

    computed: dict[int, _Factors | None] = {}

    def factors(i: int) -> _Factors | None:  # computed when first needed
        if i not in computed:
            op = nodes[i].op
            bar.set_postfix_str(f"spectrum of {chain.affines[i]}")
            if solver == "topk":
                computed[i] = _topk_svd(op, top, gen, deadline, progress=progress, label=chain.affines[i])
            elif "dense" in _SVD_CACHE.get(op, {}) or allowance.take(svd_seconds(op.in_numel, op.out_numel)):
                computed[i] = _dense_svd(op, svd_limit)
            else:  # the plan leaves it out: predicted not to fit in the SVDs' share of the budget
                computed[i] = None
        return computed[i]
    pairs, slopes = [], []
    for i, act_name in enumerate(chain.activations):
        act = g.nodes[act_name]
        lo, hi = (t.reshape(-1) for t in act.slope_bounds())
        lip = torch.maximum(lo.abs(), hi.abs())  # each neuron's Lipschitz constant on the region
        unstable = int((hi > lo).sum())
        slopes.append(float(lip.max()))
        fallback = t_scale(i) * slopes[-1] * t_scale(i + 1)
        row = {"between": [chain.affines[i], chain.affines[i + 1]], "activation": act.label,
               "slope": [float(lo.min()), float(hi.max())], "neurons": nodes[i].op.out_numel,
               "unstable": unstable, "autolip_factor": fallback}
        bar.set_postfix_str(f"{act_name} ({unstable}/{row['neurons']} unstable neurons)")
        t1 = time.perf_counter()
        left = deadline - time.perf_counter()
        if not bool(lip.any()):  # every slope 0: the chain is constant after it
            row.update(status="exact", value=0.0, stopped_by="converged")
        elif left <= 0:
            row.update(status="fallback", value=fallback, reason="time_budget spent", stopped_by="time")
        elif solver == "certified" and unstable > enumerate_max and solvers.relaxation_flops(
                min(nodes[i + 1].op.in_numel, nodes[i + 1].op.out_numel),
                min(nodes[i].op.in_numel, nodes[i].op.out_numel), unstable) > pair_work:
            row.update(status="fallback", value=fallback, stopped_by="work",
                       reason="too wide for pair_work (one relaxation step costs more)")
        elif (fi := factors(i)) is None or (fj := factors(i + 1)) is None:
            too_big = [chain.affines[k] for k in (i, i + 1) if factors(k) is None]
            row.update(status="fallback", value=fallback, stopped_by="work",
                       reason=f"no dense SVD of {', '.join(too_big)} (too large: svd_limit {svd_limit} "
                              f"entries or {SVD_FLOPS:.0e} flops, or predicted not to fit in {SPECTRA_SHARE:g} "
                              f"of the time budget){'; try seqlip-topk' if solver == 'greedy' else ''}")
        else:
            A, B = _pair_matrices(fi, fj, i, K)
            lo, hi, lip = lo.to(A.device), hi.to(A.device), lip.to(A.device)
            if bool((lip != lip[0]).any()):  # per-neuron slopes: the diag-scaled factor is tighter
                scaled = _scaled_factor(A, B, lip) * (1 + CERTIFIED_RTOL)
                row["scaled_factor"] = scaled
                fallback = min(fallback, scaled)
            budget = min(pair_budget, max(0.0, deadline - time.perf_counter()))  # after the SVDs
            if solver == "certified":
                sol = solvers.certified_pair(A, B, lo, hi, enumerate_max=enumerate_max, work=pair_work,
                                             time_budget=budget, generator=gen)
                cert = sol.upper * (1 + CERTIFIED_RTOL)
                row.update(pattern_value=sol.lower, solver=sol.info.pop("solver", None), info=sol.info)
                if cert < fallback:
                    row.update(status=sol.status, value=cert)
                else:
                    row.update(status="fallback", value=fallback,
                               reason=sol.info.pop("reason", "the certified bound is not below it"))
            else:
                sol = solvers.greedy_pair(A, B, lo, hi, strategy=greedy, generator=gen, deadline=t1 + budget)
                row.update(status="greedy", value=min(sol.upper, fallback), info=sol.info)
            row["stopped_by"] = _pair_stop(sol.info.get("stopped"), fi, fj)
            if row["stopped_by"] == "time":
                row["cut"] = f"stopped after {budget:.3g} s (pair_budget or the call's time_budget)"
            if sol.pattern is not None and sol.pattern.numel() <= 64:
                row["pattern"] = sol.pattern.int().tolist()
            row["spectra"] = [fi.how, fj.how]
        row["seconds"] = time.perf_counter() - t1
        pairs.append(row)
        bar.update(1)
    autolip_product = math.prod(uppers) * math.prod(slopes)  # certified norms, the region's slopes
    product = math.prod(p["value"] for p in pairs)
    if solver == "certified":
        # rounding of the SVDs: an absolute margin relative to the chain's global AutoLip product
        margin = 1e-12 * math.prod(uppers) * math.prod(g.nodes[s].lipschitz for s in chain.activations)
        constant = min(product + margin, autolip_product)
    else:
        constant = min(product, autolip_product)
    return {"affines": chain.affines, "activations": chain.activations, "start": chain.start,
            "constant": constant, "product": product, "autolip": autolip_product, "pairs": pairs}


_STOPS = {None: "converged", "work": "work", "max_rounds": "iterations", "time_budget": "time", "deadline": "time"}


def _pair_stop(stopped: str | None, fi: _Factors, fj: _Factors) -> str:
    """A pair's ``stopped_by`` (:mod:`~lipbound.methods.budget`): from its solver's
    ``info["stopped"]`` and the power methods of its two layers' spectra."""
    return stopped_by([_STOPS[stopped], fi.stopped_by, fj.stopped_by])


def _scaled_factor(A: torch.Tensor, B: torch.Tensor, lip: torch.Tensor) -> float:
    """``||A diag(l)^{1/2}|| ||diag(l)^{1/2} B||`` (``l = lip``): an upper bound of
    ``||A diag(d) B||`` for every ``|d_j| <= l_j``, since ``A diag(d) B = (A L^{1/2}) E (L^{1/2} B)``
    with ``E = diag(d_j / l_j)`` (0 where ``l_j = 0``), ``||E|| <= 1``. It is the pair's AutoLip
    factor ``||A|| max_j l_j ||B||`` at most, and far below it when few neurons are active."""
    r = lip.sqrt()
    return torch.linalg.matrix_norm(A * r, ord=2).item() * torch.linalg.matrix_norm(r[:, None] * B, ord=2).item()


def _pair_matrices(fi: _Factors, fj: _Factors, i: int, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = T_{i+1} V_{i+1}^T`` (``r_{i+1} x n``) and ``B = U_i T_i`` (``n x r_i``) for the pair
    between layers ``i`` and ``i + 1`` (0-based) of a chain of ``K`` layers."""
    ti = fi.s if i == 0 else fi.s.clamp_min(0).sqrt()
    tj = fj.s if i + 1 == K - 1 else fj.s.clamp_min(0).sqrt()
    A = tj[:, None] * fj.V.T
    B = fi.U * ti[None, :]
    return A, B

