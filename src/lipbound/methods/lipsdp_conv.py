"""LipSDP on networks too large to assemble (CNNs such as LeNet5, 2C2F, OVAL21, and residual CNNs
such as ResNet-2B): block elimination to solve, block Cholesky to check.

**Structure.** The LMI has one block per basis variable, of the layers' sizes (LeNet5: 784, 4704,
1600, 120, 84; ResNet-2B: 3072, 2048, then 1024 per activation of its two residual blocks, 100).
A chain (convolutions, average pooling, dense layers, element-wise activations, one after the
other) gives a block-tridiagonal LMI (:mod:`lipbound.methods.lipsdp_chain`); a residual block
``x -> relu(x + B(x))`` makes its outer activation read the block two back, a block band
(:class:`~lipbound.methods.lipsdp_banded.BlockStructure`). Each off-diagonal block is
``-diag((a + b) t_j) A_jr`` with ``A_jr`` a layer's matrix (a convolution materialised once, in
float64, with a bound of its rounding error: :mod:`lipbound.methods.lmi_build`). The assembled LMI
(order 7,292 for LeNet5) would have a bandwidth close to its order, so the dense path refuses it on
work; here nothing larger than a block and the blocks of its neighbours is ever formed:

* **solving**: the first-order LipSDP solver of :mod:`lipbound.methods.lipsdp` (L-BFGS on
  ``rho*(t)`` over ``log t``, per-neuron multipliers, or per layer with ``variant="layer"``), each
  evaluation by the block elimination of :func:`~lipbound.methods.lipsdp_banded.banded_schur`,
  started from ECLipsE-Fast's closed-form multipliers
  (:func:`~lipbound.methods.eclipse.fast_multipliers` at ``theta = 1``), which are strictly feasible;
* **checking** (:func:`~lipbound.methods.lipsdp_banded.banded_cholesky_proves`, through
  :func:`~lipbound.methods.sdp_verify.certify`): ``N(rho, t) - c I`` is factorised by a block
  Cholesky in the order last block first, with Demmel's bound for the factor's row width ``w``
  (a block plus the later blocks that are eliminated onto it: ``n_j + n_{j+1}`` for a chain, up to
  three blocks for a residual block). The soundness argument is in
  :mod:`lipbound.methods.lipsdp_banded`; ``rho`` itself comes from the elimination and is only
  trusted once proved. The value is ``scale * sqrt(rho)`` widened by ``CERTIFIED_RTOL``,
  ``certified_upper``; if no margin can be proved it is an ``estimate``.

**Max pooling** is not part of an LMI (:mod:`lipbound.methods.lmi_build` refuses it); networks
with max pooling get their bound from AutoLip, which multiplies by the pooling's factor between
affine chains.

**Cost**, from the graph's shapes before anything is materialised, at
:data:`~lipbound.methods.machine.BLOCKS_RATE` flops per second: an evaluation costs
:meth:`~lipbound.methods.lipsdp_banded.BlockStructure.work` flops (``sum_j (n_j^3 / 3 + n_j^2 p_j +
n_j p_j^2)`` with ``p_j`` the size of the blocks block ``j`` is eliminated onto, and the input
block's eigenvalues); the **checked start** (:func:`start_seconds`) costs the layer matrices
(:data:`~lipbound.methods.machine.MATERIALISE_SECONDS` per float64 entry), one ECLipsE-Fast recursion
(:func:`~lipbound.methods.eclipse.recursion_work`: dense inverses of the neuron blocks, which dominate
on wide layers; the balancing's recursion is the start's, :func:`~lipbound.methods.eclipse.balanced`)
and its check (``START_CHECK_EVALUATIONS`` evaluations).

**Plan** (:func:`blocks_plan`, sizes and budget only, so the same network and budget take the same
path on every machine):

* ``"refused"`` (:class:`~lipbound.errors.NotApplicable`, so that AutoLip's certified bound stands):
  the layers' dense matrices and largest blocks need more than ``max_entries`` float64 entries, or
  the checked start does not fit the budget (the Scalability CNNs with 16 channels: 12,544 neurons
  per layer);
* ``"start"``: the budget holds the start and its check but not the solver: the checked ECLipsE-Fast
  start is returned (``stopped_by == "work"``, ``iterations == 0``): a certificate, since
  :func:`~lipbound.methods.sdp_verify.certify` proves it like any other multipliers;
* ``"solve"``: the budget also holds the reduced LMI when it pays for itself (:func:`reduced_structure`,
  :func:`reduce_seconds`: the triangular factor of a QR of the maps that read the input, 2.5 s
  predicted on OVAL21 base, where an SVD took 13-21 s), ``SOLVE_MIN_EVALUATIONS`` evaluations, the solver's last step
  (``FINAL_EVALUATIONS``: gradients, top eigenvectors; and the dual bound,
  :data:`~lipbound.methods.machine.DUAL_SECONDS`: :func:`final_seconds`) and the check after the solver
  (``CHECK_EVALUATIONS``: ``rho*`` of the solver's multipliers and the block Cholesky proof), all
  counted at the full LMI's size: the wall clock then caps the solver's L-BFGS (``stopped_by == "time"``), keeping the
  predicted time of the check (:func:`check_seconds`: from the built LMI's sizes, after the stable
  neurons of a localized graph are eliminated). The check's search for provable multipliers is
  capped from the budget too (:func:`search_evaluations`: one evaluation in ``SEARCH_SHARE`` of
  those beyond the least solve budget, at most :data:`~lipbound.methods.sdp_verify.SEARCH_EVALUATIONS`),
  so that the reserve is what the check does, not its worst case (measured: about one evaluation
  when the solver's multipliers are proved as they are);
  only the solver and the search use the reduced LMI (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`:
  the same ``rho*(t)`` in exact arithmetic, so the check on the full LMI proves its multipliers as
  well as the full LMI's; on OVAL21 base an evaluation costs 1.6 s instead of 3.1 s nominal), so the
  start plan does not build it.

**Time.** The plan is priced at nominal rates; a loaded machine runs them 2-3 times slower (OVAL21
base's start: 12 s predicted, 66 s measured with five busy processes on two cores), so the wall
clock (:class:`~lipbound.methods.budget.Clock` of ``time_budget``, at least ``LEAST_DEADLINE``)
caps every step: before building the LMI and before the reduction (steps nothing stops inside),
the step's predicted seconds times the pace measured on the steps already taken must fit in what is
left; before the recursion and the check (stopped between blocks, below), their nominal prediction (:meth:`~lipbound.methods.budget.Clock.affords`; ``details["steps"]`` records each
step's prediction, pace and seconds); on the ``"solve"`` plan, the solver runs only when its least
work and the check still fit at that pace (else the start is checked, ``stopped_by == "time"``); the recursion and the block eliminations (the
solver's evaluations, the check's ``rho*`` and its proof) also stop between blocks once the clock
expires (:func:`~lipbound.methods.budget.checkpoint`); the solver's share keeps the check's and its last step's
predicted time at that pace (never below their nominal price: a step faster than
its price says little about the check; OVAL21 base at pace 0.6: check predicted 4.7 s, measured 5.3 s).
When the clock stops a step, no certificate was proved, and the
result is AutoLip's certified bound (:func:`_time_cut`: ``details["fallback"] == "autolip"``,
``stopped_by == "time"``, ``verified`` False), never the cut step's unchecked value.

Measured on one core of the shared 2-core CPU (load 4-5; ``benchmarks/results/sdp_cnn.md``):
evaluations ran at 1.7-4e10 flops/s, recursions at 1.9-3.4e10, the start's check at 2.1-3.8e10,
materialising at 0.4-0.9e-7 s per entry.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Callable, TypeVar

from ..errors import NotApplicable
from ..graph.ir import Graph
from ..report import Result
from .autolip import autolip
from .budget import Clock, TimeUp, cancel_after
from .eclipse import balanced, fast_multipliers, recursion_work
from .lipsdp_banded import (BlockStructure, banded_cholesky_proves, banded_row_width, banded_schur,
                            structure_of_graph, structure_of_lmi)
from .lmi_build import MAX_WORK, lmi_of_graph
from .lipsdp_dual import gap
from .sdp_verify import SEARCH_EVALUATIONS, CertificateRejected, certify
from .lipsdp_first_order import rss_mb, solve_first_order, stopped_by
from .machine import BLOCKS_RATE, DUAL_SECONDS, MATERIALISE_SECONDS
from .work_plan import qr_seconds

START_CHECK_EVALUATIONS = 2  # the start's check: rho* of its multipliers and the block Cholesky proof
CHECK_EVALUATIONS = 2  # the check after the solver: rho* of the solver's multipliers and the proof
FINAL_EVALUATIONS = 3  # the solver's last step beyond its own reserve: gradients, top eigenvectors, dual bound
#: the least deadline of the clock (seconds): a budget below it (microseconds, in tests of the plan)
#: still lets the planned steps of a small network finish, an overrun of at most this
LEAST_DEADLINE = 0.5
SOLVE_MIN_EVALUATIONS = 2  # evaluations the budget must hold beyond the start and the check for the solver to run
SEARCH_SHARE = 4  # the check's search gets one evaluation in this many of those the budget holds beyond the minimum
PLANS = ("refused", "start", "solve")
T = TypeVar("T")  # :func:`blocks_plan`
MAX_ENTRIES = 3e8  # float64 entries of the layers' matrices and the largest block (2.4 GB)


def check_seconds(full: BlockStructure, solving: BlockStructure, search: int) -> float:
    """Predicted seconds of the check after the solver (:func:`~lipbound.methods.sdp_verify.certify`):
    its proof on the full LMI (structure ``full``), ``rho*`` of the solver's multipliers and at most
    ``search`` more (the search for multipliers it can prove) on the LMI the solver used
    (``solving``: the reduced one, or ``full``), at :data:`~lipbound.methods.machine.BLOCKS_RATE`.
    Given the built LMI's structures (after the stable neurons' elimination), a localized graph's
    smaller LMI is priced as such."""
    return (full.work() + (CHECK_EVALUATIONS - 1 + search) * solving.work()) / BLOCKS_RATE


def final_seconds(solving: BlockStructure) -> float:
    """Predicted seconds of the solver's last step, which its own clock does not cover
    (:func:`~lipbound.methods.lipsdp_first_order.solve_first_order` keeps only two plain evaluations
    for it): ``FINAL_EVALUATIONS`` of the LMI it solves (the reduced one, or the full one when the
    reduction does not pay: gradients, top eigenvectors) and the dual bound's fixed cost ``DUAL_SECONDS``."""
    return FINAL_EVALUATIONS * solving.work() / BLOCKS_RATE + DUAL_SECONDS


def solver_seconds(full: BlockStructure, search: int) -> float:
    """Predicted seconds of the least solver run and the check after it on an LMI of structure
    ``full``: the reduced LMI when it pays (:func:`reduce_seconds`), ``SOLVE_MIN_EVALUATIONS`` of the
    LMI the solver uses (:func:`solving_structure`), its last step (:func:`final_seconds`) and the
    check (:func:`check_seconds`)."""
    solving = solving_structure(full)
    return (reduce_seconds(full) + SOLVE_MIN_EVALUATIONS * solving.work() / BLOCKS_RATE + final_seconds(solving)
            + check_seconds(full, solving, search))


def chain_orders(structure: BlockStructure | None) -> list[int] | None:
    """The block orders ``[input, activation 1, ...]`` of a chain's LMI from its block structure
    (:func:`~lipbound.methods.lipsdp_banded.structure_of_graph`: every neuron counted but those
    of constant output; an upper bound of the dense path's orders, which also fold the other stable
    neurons), or None if the graph is not a chain of affine nodes and
    activations."""
    if structure is None:
        return None
    m = len(structure.sizes) - 1
    chain = all(reads == {j - 1} for j, reads in enumerate(structure.reads) if j) and structure.out_reads == {m}
    return list(structure.sizes) if chain else None


def start_flops(structure: BlockStructure) -> float:
    """Flops of the checked start on an LMI of this structure: one ECLipsE-Fast recursion and
    ``START_CHECK_EVALUATIONS`` evaluations."""
    return recursion_work(structure) + START_CHECK_EVALUATIONS * structure.work()


def start_seconds(structure: BlockStructure) -> float:
    """Predicted seconds of the checked start (module doc, *Cost*): its layer matrices
    (``MATERIALISE_SECONDS`` per entry) and :func:`start_flops` at ``BLOCKS_RATE``."""
    return structure.entries() * MATERIALISE_SECONDS + start_flops(structure) / BLOCKS_RATE


def solve_seconds(structure: BlockStructure) -> float:
    """The least budget in which the solver runs (module doc, *Plan*): the start's set-up (its check
    is replaced by the one after the solver) and :func:`solver_seconds` without the search
    (:func:`search_evaluations` is 0 at this budget). Each evaluation is priced on the LMI that
    takes it: the solver's and its last step's on the reduced LMI when the reduction pays, the
    proof on the full one."""
    setup = start_seconds(structure) - START_CHECK_EVALUATIONS * structure.work() / BLOCKS_RATE
    return setup + solver_seconds(structure, 0)


def reduced_structure(structure: BlockStructure) -> BlockStructure | None:
    """The block structure of the reduced LMI (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`: the
    input block cut to the rows of the maps that read it), or None when the reduction does not pay
    for itself: when those maps have at least as many rows as the input has entries (nothing to cut),
    or when its QR (:func:`reduce_seconds`) costs more than it saves on the least evaluations of the
    ``"solve"`` plan (``SOLVE_MIN_EVALUATIONS + FINAL_EVALUATIONS`` of the reduced LMI instead of the
    full one; more evaluations only save more). Sizes only, like the plan. The rows are counted
    from the blocks that read the input; the output's few rows, when it reads the input too, are
    left out (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced` stacks them as well)."""
    n = structure.sizes[0]
    rows = sum(size for size, reads in zip(structure.sizes, structure.reads) if 0 in reads)
    if not 0 < rows < n:
        return None
    cut = BlockStructure((rows, *structure.sizes[1:]), structure.reads, structure.coupled, structure.out_reads)
    saved = (SOLVE_MIN_EVALUATIONS + FINAL_EVALUATIONS) * (structure.work() - cut.work()) / BLOCKS_RATE
    return cut if qr_seconds(n, rows) < saved else None


def solving_structure(structure: BlockStructure) -> BlockStructure:
    """The structure of the LMI the solver works on: :func:`reduced_structure`, or ``structure``
    itself when the reduction does not pay."""
    return reduced_structure(structure) or structure


def reduce_seconds(structure: BlockStructure) -> float:
    """Predicted seconds of the reduced LMI: the QR of the maps that read the input
    (:func:`~lipbound.methods.work_plan.qr_seconds` of the input's entries by their rows; OVAL21
    base: 3072 x 2048, 2.5 s at :data:`~lipbound.methods.machine.QR_RATE`, 0.7-1.8 s measured),
    0 when :func:`reduced_structure` leaves the LMI unreduced."""
    cut = reduced_structure(structure)
    return 0.0 if cut is None else qr_seconds(structure.sizes[0], cut.sizes[0])


def search_evaluations(structure: BlockStructure, time_budget: float) -> int:
    """The cap of the check's search for provable multipliers (:func:`~lipbound.methods.sdp_verify.
    certify`) on the ``"solve"`` plan: one evaluation in ``SEARCH_SHARE`` of those the budget holds
    beyond :func:`solve_seconds` (evaluations of the LMI the search uses, :func:`solving_structure`),
    at most :data:`~lipbound.methods.sdp_verify.SEARCH_EVALUATIONS` (0 below the solve plan: the
    start's multipliers are strictly feasible and proved as they are).
    Sizes and budget only, like the plan."""
    spare = (time_budget - solve_seconds(structure)) / (solving_structure(structure).work() / BLOCKS_RATE)
    return min(SEARCH_EVALUATIONS, max(0, int(spare // SEARCH_SHARE)))


def blocks_plan(structure: BlockStructure, time_budget: float, max_entries: float = MAX_ENTRIES) -> str:
    """``"refused"``, ``"start"`` or ``"solve"``: what :func:`lipsdp_blocks` does with ``time_budget``
    seconds on a network of this structure (module doc, *Plan*; sizes only)."""
    if blocks_refusal(structure, time_budget, max_entries) is not None:
        return "refused"
    return "solve" if time_budget >= solve_seconds(structure) else "start"


def routes_to_blocks(graph: Graph, max_work: float = MAX_WORK) -> bool:
    """True for a network whose assembled LMI the dense and banded paths would refuse on work
    (``order * bandwidth^2 > max_work``): ``solver="auto"`` sends it here."""
    return structure_routes_to_blocks(structure_of_graph(graph), max_work)


def structure_routes_to_blocks(structure: BlockStructure | None, max_work: float = MAX_WORK) -> bool:
    """:func:`routes_to_blocks` from the graph's block structure (None: no LMI takes the graph)."""
    if structure is None or len(structure.sizes) < 2:
        return False
    return sum(structure.sizes) * (structure.bandwidth() + 1) ** 2 > max_work


def blocks_refusal(structure: BlockStructure, time_budget: float, max_entries: float = MAX_ENTRIES) -> str | None:
    """Why :func:`lipsdp_blocks` refuses a network of this block structure with ``time_budget``
    seconds (its matrices exceed ``max_entries`` float64 entries, or its checked start,
    :func:`start_seconds`, exceeds the budget), or None: decided from sizes alone (the cost model
    reads the same rule)."""
    entries = structure.entries()
    if entries > max_entries:
        return (f"the LMI's layer matrices and blocks need {entries:.2g} float64 entries "
                f"(> max_entries {max_entries:.2g}); autolip's bound stands")
    seconds = start_seconds(structure)
    if seconds > time_budget:
        return (f"the ECLipsE-Fast start of the network's LMI and its check take about {seconds:.0f} s: "
                f"they would not fit in {time_budget:.0f} s; autolip's bound stands")
    return None


def lipsdp_blocks(graph: Graph, *, variant: str = "neuron", time_budget: float = 300.0, lbfgs_iter: int = 3000,
                  max_size: int = 100000, max_entries: float = MAX_ENTRIES) -> Result:
    """LipSDP-Neuron (or -Layer) of a network too large to assemble (a chain or a residual CNN),
    certified by the block Cholesky check (module docstring). Same ``details`` as
    :func:`~lipbound.methods.lipsdp.lipsdp`, with ``solver="blocks"``, ``start_value`` (the
    checked-to-be ECLipsE-Fast start's value, not certified by itself),
    ``estimated_evaluation_seconds`` (from the work estimate: the plan of the module doc). Raises
    :class:`~lipbound.errors.NotApplicable` for a graph with a node the LMI does not take (max
    pooling), or one too large for ``max_entries`` or for the time budget.

    **The clock** (module doc, *Time*): when ``time_budget`` runs out before a certificate is
    proved, the result is AutoLip's certified bound (:func:`_time_cut`, ``stopped_by == "time"``)."""

    start = time.perf_counter()
    structure = structure_of_graph(graph)
    if structure is None:
        raise NotApplicable("solver 'blocks' needs affine layers, activations, sums and concatenations (no max "
                            "pooling)")
    plan = blocks_plan(structure, time_budget, max_entries)
    if plan == "refused":
        raise NotApplicable(blocks_refusal(structure, time_budget, max_entries))
    name = "lipsdp" if variant == "neuron" else "lipsdp-layer"
    info: dict = {"solver": "blocks", "plan": plan, "estimated_evaluation_seconds": structure.work() / BLOCKS_RATE}
    clock = Clock(max(time_budget, LEAST_DEADLINE))
    try:
        with cancel_after(clock):
            return _planned_run(graph, structure, plan, clock, info, name, variant=variant, lbfgs_iter=lbfgs_iter,
                                max_size=max_size, start=start)
    except TimeUp:
        return _time_cut(graph, name, clock, info, start)


def _planned_run(graph: Graph, structure: BlockStructure, plan: str, clock: Clock, info: dict, name: str, *,
                 variant: str, lbfgs_iter: int, max_size: int, start: float) -> Result:
    """The steps of the ``"start"`` or ``"solve"`` plan under ``clock`` (raises
    :class:`~lipbound.methods.budget.TimeUp` when a step would not finish, or did not, in time)."""
    lmi = _step(clock, info, "build", structure.entries() * MATERIALISE_SECONDS,
                lambda: lmi_of_graph(graph, max_size=max_size, max_work=math.inf, eliminate="constant"))
    lmi = _step(clock, info, "recursion", recursion_work(structure) / BLOCKS_RATE, lambda: balanced(lmi),
                interruptible=True)
    interior, rho_start = fast_multipliers(lmi, grid=0, evaluations=1)  # theta = 1 only: balanced's run, reused
    t_solve = time.perf_counter()
    built = structure_of_lmi(lmi)  # after the stable neurons' elimination: a localized graph's LMI is smaller
    search = search_evaluations(structure, clock.seconds) if plan == "solve" else 0
    # the plan's solver (sizes only) runs when the clock, at the pace measured so far, still holds its
    # least work and the check; otherwise the start is checked, and the clock says it cut the plan
    planned = plan == "solve" and clock.affords(solver_seconds(built, search))
    reduce = planned and reduced_structure(built) is not None  # the solver's and the search's LMI, when it pays
    red = _step(clock, info, "reduce", reduce_seconds(built), lmi.reduced) if reduce else None
    solving = lmi if red is None else red
    used = structure_of_lmi(solving)
    search = search if planned else 0  # the search runs after the solver only
    check = check_seconds(built, used, search) if planned else START_CHECK_EVALUATIONS * built.work() / BLOCKS_RATE
    if planned:  # the clock caps the solver, keeping its last step's and the check's time at the pace measured so far
        left = clock.left() - (final_seconds(used) + check) * max(clock.pace(), 1.0)  # never below the nominal price
        t, claimed, info_solver = solve_first_order(solving, variant=variant, time_budget=max(left, 0.0),
                                                    max_iter=lbfgs_iter, t0=interior,
                                                    schur=partial(banded_schur, solving))
    else:  # the plan, or the clock, leaves the solver out
        t, claimed, info_solver = interior, rho_start, {"solver_status": "not planned", "iterations": 0}
    info.update(info_solver)
    info.update(solver="blocks", solver_seconds=time.perf_counter() - t_solve, lmi_order=lmi.size,
                stopped_by="time" if clock.cut else stopped_by(info["solver_status"]) if planned else "work",
                reduced_order=None if red is None else red.size, check_search=search,
                eliminated_neurons=lmi.eliminated, start_value=lmi.scale * math.sqrt(rho_start))
    info["solver_value"] = lmi.scale * math.sqrt(max(claimed, 0.0))
    info["sdp_lower"] = lmi.scale * math.sqrt(max(info.pop("dual_rho", 0.0), 0.0))
    try:
        cert = _step(clock, info, "check", check, lambda: certify(
            lmi, t, claimed_rho=claimed, interior=interior, search=search, schur=partial(banded_schur, lmi),
            search_schur=partial(banded_schur, solving),
            prove=partial(banded_cholesky_proves, lmi), width=banded_row_width(lmi)), interruptible=True)
    except CertificateRejected as exc:
        info.update(verified=False, reason=str(exc), rss_peak_mb=rss_mb())
        return Result(name, info["solver_value"], "estimate", time.perf_counter() - start, details=info)
    info.update(cert.summary())
    info.update(rss_peak_mb=rss_mb(), sdp_gap=gap(cert.value, info["sdp_lower"]))
    return Result(name, cert.value, "certified_upper", time.perf_counter() - start, details=info)


def _step(clock: Clock, info: dict, name: str, predicted: float, run: Callable[[], T], *,
          interruptible: bool = False) -> T:
    """``run()`` as the step ``name`` predicted at ``predicted`` nominal seconds: not started when the
    clock cannot afford it (:meth:`~lipbound.methods.budget.Clock.affords`; raises
    :class:`~lipbound.methods.budget.TimeUp`), timed for the pace otherwise. A step that cannot be
    stopped inside (the LMI's build, its QR) is priced at the pace measured so far; an
    ``interruptible`` one (the recursion, the check: :func:`~lipbound.methods.budget.checkpoint`
    between blocks) at the nominal rates, since another kind of step's pace mispredicts it (ResNet-2B:
    the build at 2.75x its price, the recursion near 1x) and the clock stops it anyway.
    ``info["steps"]`` records each step's predicted and measured seconds, and the pace, as it goes."""
    steps = info.setdefault("steps", {})
    steps[name] = {"predicted_s": predicted, "pace": clock.pace()}
    if not clock.affords(predicted, paced=not interruptible):
        raise TimeUp
    t0 = time.perf_counter()
    with clock.timed(predicted):
        out = run()
    steps[name]["seconds"] = time.perf_counter() - t0
    return out


def _time_cut(graph: Graph, name: str, clock: Clock, info: dict, start: float) -> Result:
    """The result of a call whose clock ran out before a certificate was proved: AutoLip's certified
    bound (:func:`~lipbound.methods.autolip.autolip`, in the seconds left: its layers past the
    deadline get their cheap structural bounds), never the unchecked value of the cut step."""
    bound = autolip(graph, certified=True, time_budget=max(clock.left(), 0.0))
    cut = next((name for name, step in info.get("steps", {}).items() if "seconds" not in step), "the solver")
    info.update(stopped_by="time", verified=False, fallback="autolip", rss_peak_mb=rss_mb(),
                reason=f"the time budget ({clock.seconds:.3g} s) ran out at step {cut!r}, before a certificate "
                       "was proved: autolip's bound")
    return Result(name, bound.value, "certified_upper", time.perf_counter() - start, details=info)
