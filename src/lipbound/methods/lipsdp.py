"""LipSDP (Fazlyab et al., NeurIPS 2019) with open solvers and checked certificates.

**What is bounded.** ``L(f)`` for the Euclidean norm on input and output, for networks made of
affine maps (dense layers, and small convolutions once materialised), element-wise activations
with slopes in any ``[a, b]`` (ReLU, leaky ReLU, tanh, sigmoid; and, with ``a < 0 < b``, GELU, SiLU,
Mish, Hardswish, ELU with ``alpha < 0``, LeakyReLU with a negative slope, Abs: the sector
constraint of :mod:`lipbound.methods.lmi` holds for any ``a <= b`` on every solver path), sums of
branches (residual blocks) and concatenations. The LMI ``M(rho, t) <= 0`` of :mod:`lipbound.methods.lmi` with one
multiplier per neuron is **LipSDP-Neuron**; with one multiplier per activation node it is
**LipSDP-Layer** (``variant="layer"``). On a residual net the LMI couples all blocks at once, as
GLipSDP (Pauli et al. 2024) does, rather than multiplying per-block bounds; its optimum is that of
GLipSDP's block formulation (:mod:`lipbound.methods.lmi`, *Residual blocks*). GLipSDP's published
20.956 on FC-R18 bounds the blocks without their ReLU after the sum; on that function lipsdp gives
20.9561, on the trained FC-R18 22.006 (``benchmarks/results/sdp_residual.md``). Biases cancel in
every increment ``f(x) - f(y)``, so they do not enter.

**Local constants.** Every neuron has its own sector ``[lo_i, hi_i]``
(:meth:`~lipbound.graph.ir.Activation.slope_bounds`): the node's global range without a region,
the neuron's slope interval on a localized graph. Why the local value is sound: for ``x, y`` in a
convex region, each neuron's input stays in its bounds along the segment, so
``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with the secant slope ``d_i`` in ``[lo_i, hi_i]``; the
sector constraint ``(dphi_i - lo_i dz_i)(hi_i dz_i - dphi_i) >= 0`` then holds for every pair in
the region, and the checked ``sqrt(rho)`` bounds ``||f(x) - f(y)|| / ||x - y||`` over all of them
(:mod:`lipbound.methods.lmi`). Stable neurons (``lo_i == hi_i``) are eliminated before solving
(:mod:`lipbound.methods.lmi_build`): the LMI keeps only the unstable ones, which is what makes local
LipSDP fast (``details["eliminated_neurons"]``, ``details["lmi_order"]``). LipSDP-Layer shares one
multiplier ``t_j`` among the neurons of a node but keeps their own sectors: ``t_j`` times the sum of
the per-neuron constraints is still ``>= 0``, so it never needs the node's hull ``[min lo, max hi]``.

**Solving.** Minimise ``rho`` over ``t >= 0`` subject to the LMI.

* ``solver="clarabel"`` / ``"scs"``: the SDP through cvxpy (optional extra ``lipbound[sdp]``), on
  the equivalent LMI whose input block is reduced to the rows of the maps that read the input
  (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`). Interior point is accurate but its cost
  grows fast with the LMI order (seconds at order ~100, minutes at ~200).
* ``solver="first-order"``: the eigenvalue form of the same problem (as in LipDiff, Wang et al.
  2024): for fixed ``t`` the least feasible ``rho`` is ``rho*(t) = lambda_max(N_hx^T N_hh(t)^{-1}
  N_hx - N_xx)`` (Schur complement on the input block), a convex function of ``t`` on
  ``{N_hh(t) > 0}`` whose gradient comes from the null vector of ``N(rho*, t)``. It is minimised by
  L-BFGS over ``log t`` from the closed-form multipliers of :mod:`lipbound.methods.eclipse`, on a
  soft maximum of the top eigenvalues whose temperature decreases to 0, with one Cholesky
  factorisation of the neuron block per step (for chains, a block elimination layer by layer,
  :mod:`lipbound.methods.lipsdp_chain`; banded otherwise) and the top eigenvalues from a
  dense eigensolver or, for large input blocks, Lanczos (``scipy.sparse.linalg.eigsh``) on the
  Schur complement applied through triangular solves. Memory is that of the neuron block
  (dense, or banded for chains) and of the layers' matrices; 1534 x 1534 for a 784-500-200-50-10
  MLP. It stops at ``time_budget``; whatever it reached is then checked.
  Where ``a + b = 0`` (Abs, LeakyReLU(-1)) the neuron block decouples from the input and the
  optimum lies where that block is singular, on the edge of the solver's domain: it then stays
  near its start (the eclipse-fast multipliers); the interior-point path reaches the optimum.
* ``solver="chordal"``: for chains (MLPs), interior point on the chordal decomposition of the
  block-tridiagonal LMI (Chordal-LipSDP; :mod:`lipbound.methods.lipsdp_chordal`): one PSD cone per
  pair of consecutive layers, so its cost grows linearly with depth.
* ``solver="ipm"``: lipbound's own primal-dual interior point (HKM direction, Mehrotra
  predictor-corrector; :mod:`lipbound.methods.lipsdp_ipm`, no extra dependency): the Newton
  matrix from the rank-two constraint terms, a block-bidiagonal factorisation for chains, every
  iterate's multipliers strictly feasible, the dual bound from its primal iterate.
* ``solver="blocks"``: chains too large to assemble (CNNs such as LeNet5 and 2C2F), first order
  with a block Cholesky check (:mod:`lipbound.methods.lipsdp_conv`).
* ``solver="auto"`` (default): such chains go to ``"blocks"``; otherwise, with cvxpy installed,
  Clarabel when the reduced LMI has order <= ``ipm_max_order``; ``"ipm"`` up to reduced order
  ``IPM_CHAIN_MAX_ORDER`` for chains (MLPs), and for other LMIs (residual nets, localized MLPs) when
  its dense solve is predicted to fit the budget (:func:`ipm_routes`); first-order otherwise.

**Dual bound and gap.** Each solver path also reports ``details["sdp_lower"]``, a lower bound of
the SDP's optimum by weak duality (a dual feasible matrix built from the interior-point solver's
dual, or from the first-order solver's top eigenvectors, then repaired to be feasible:
:mod:`lipbound.methods.lipsdp_dual`), and ``details["sdp_gap"] = value / sdp_lower - 1``: no
multipliers of this LMI can certify less than ``sdp_lower`` (up to the float64 rounding of that
computation: it is a diagnostic, not a bound of ``L(f)``). ``details["stopped_by"]`` says
whether the time budget (``"time"``), the iteration cap (``"iterations"``) or convergence ended it.

**Certified only once checked.** Whatever the solver returns (``rho``, ``t``) is an estimate until
:func:`~lipbound.methods.sdp_verify.certify` has recomputed the least ``rho`` for the clipped
multipliers with a margin and proved the LMI by a float64 Cholesky factorisation; only then is the
result ``certified_upper``. When the solver's multipliers leave no room for the margin (an optimum
where the neuron block is singular, or, on localized LMIs, a few multipliers grown so large that
the rounding margin, which scales with them, exceeds the neuron block's least eigenvalue), the
check searches other multipliers: the solver's with their largest entries capped, then mixed with
the strictly feasible eclipse-fast multipliers (``certify(..., interior=...)``), down to those
multipliers themselves (the start's certificate). ``details["verify_candidate"]`` says which were
proved. Only if none can be proved is the solver's value returned as an ``estimate`` with
``details["verified"] = False``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InvalidInput, NotApplicable
from ..graph.ir import Graph
from ..report import Result
from .eclipse import balanced, fast_multipliers
from .lmi import LipschitzLMI
from .lmi_build import lmi_of_graph
from .machine import DENSE_IPM_SECONDS
from .lipsdp_chordal import solve_chordal
from .lipsdp_conv import lipsdp_blocks, routes_to_blocks
from .lipsdp_first_order import expand, rss_mb, solve_first_order, stopped_by
from .lipsdp_ipm import solve_ipm
from .lipsdp_dual import gap, psd_factor, repaired_dual
from .sdp_verify import SEARCH_EVALUATIONS, Certificate, CertificateRejected, certify, solving_margin
from .work_plan import interior_evaluations, lmi_factor_seconds

VARIANTS = ("neuron", "layer")
SOLVERS = ("auto", "clarabel", "scs", "chordal", "first-order", "ipm", "blocks")


def lipsdp(graph: Graph, *, variant: str = "neuron", solver: str = "auto", seed: int = 0, progress: bool = False,
           time_budget: float = 300.0, lbfgs_iter: int = 3000, ipm_max_order: int = 60, max_size: int = 20000) -> Result:
    """LipSDP-Neuron (or -Layer) bound of ``L(f)``, certified after a float64 check.

    Args:
        graph: the network (see the module docstring for what it may contain).
        variant: ``"neuron"`` (one multiplier per neuron) or ``"layer"`` (one per activation node).
        solver: ``"auto"``, ``"clarabel"``, ``"scs"`` (interior point / splitting through cvxpy,
            extra ``lipbound[sdp]``), ``"chordal"`` (interior point on the chordal decomposition of
            a chain's LMI, :mod:`lipbound.methods.lipsdp_chordal`, same extra), ``"first-order"``
            or ``"ipm"`` (a primal-dual interior point on the rank-two constraint terms,
            :mod:`lipbound.methods.lipsdp_ipm`; both without extra dependency) or ``"blocks"``
            (first order on a network too large to assemble, chain or residual, checked by a block
            Cholesky: CNNs, :mod:`lipbound.methods.lipsdp_conv`, :mod:`lipbound.methods.lipsdp_banded`;
            ``"auto"`` picks it for the networks that the assembled LMI's work cap refuses).
        time_budget: seconds for the whole call; the solver gets what the LMI's construction left
            (it stops earlier when converged; what it reached is then checked).
        lbfgs_iter: most L-BFGS iterations of the first-order solver.
        ipm_max_order: largest reduced LMI order sent to cvxpy by ``solver="auto"``.
        max_size: refuse (:class:`~lipbound.errors.NotApplicable`) LMIs of larger order.

    Returns:
        A :class:`~lipbound.report.Result`; ``details`` holds the solver, its status, value and
        time, ``stopped_by`` (``"time"``, ``"iterations"`` or ``"converged"``), the check
        (``verified``, ``rho``, margins, time), ``sdp_lower`` (a lower bound of the SDP's optimum,
        :mod:`lipbound.methods.lipsdp_dual`) and ``sdp_gap`` (``value / sdp_lower - 1``: how much
        the certified value could still fall by solving the SDP exactly), and ``rss_peak_mb``, the
        process's peak resident memory when the method ended (an upper bound of what it used).
    """
    return lipsdp_certificate(graph, variant=variant, solver=solver, time_budget=time_budget, lbfgs_iter=lbfgs_iter,
                              ipm_max_order=ipm_max_order, max_size=max_size)[0]


def lipsdp_certificate(graph: Graph, *, variant: str = "neuron", solver: str = "auto", time_budget: float = 300.0,
                       lbfgs_iter: int = 3000, ipm_max_order: int = 60,
                       max_size: int = 20000) -> tuple[Result, LipschitzLMI | None, Certificate | None]:
    """:func:`lipsdp`'s result with the (balanced) LMI it checked and its checked certificate (None
    when not certified, or on the ``"blocks"`` path): the multipliers a warm start reuses
    (:mod:`lipbound.methods.lipsdp_warm`)."""
    if variant not in VARIANTS:
        raise InvalidInput(f"variant must be one of {VARIANTS}, got {variant!r}")
    if solver not in SOLVERS:
        raise InvalidInput(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "blocks" or (solver == "auto" and routes_to_blocks(graph)):  # CNN chains: lipsdp_conv
        return lipsdp_blocks(graph, variant=variant, time_budget=time_budget, lbfgs_iter=lbfgs_iter), None, None
    start = time.perf_counter()
    lmi = balanced(lmi_of_graph(graph, max_size=max_size))
    red = lmi.reduced()
    grid, evaluations = interior_evaluations(lmi, time_budget)  # planned from sizes (work_plan)
    # strictly feasible: the first-order start and the check's fallback
    interior, _ = fast_multipliers(lmi, grid=grid, evaluations=evaluations)
    automatic = solver == "auto"
    if automatic:
        solver = _auto_solver(red, ipm_max_order, time_budget)
    t_solve = time.perf_counter()
    # the budget is for the whole call, the check's predicted seconds included (its proof on the
    # full LMI, its search for provable multipliers on the reduced one: sdp_verify.certify)
    check = lmi_factor_seconds(lmi) + SEARCH_EVALUATIONS * lmi_factor_seconds(red)
    left = max(time_budget - (t_solve - start) - check, 1e-3)
    if solver == "first-order":
        t, claimed, info = solve_first_order(red, variant=variant, time_budget=left, max_iter=lbfgs_iter,
                                             t0=interior)
    elif solver in ("ipm", "chordal"):
        if solver == "chordal":
            _import_cvxpy("clarabel")
        try:
            t, claimed, info = (solve_ipm(red, variant=variant, time_budget=left, t0=interior,
                                          margin=solving_margin(lmi, interior)) if solver == "ipm"
                                else solve_chordal(red, variant=variant, time_budget=left))
        except NotApplicable as exc:  # e.g. lost to rounding: auto falls back to the first-order solver
            if not automatic:
                raise
            left = max(time_budget - (time.perf_counter() - start), 1e-3)
            t, claimed, info = solve_first_order(red, variant=variant, time_budget=left, max_iter=lbfgs_iter,
                                                 t0=interior)
            solver, info["fallback_from"] = "first-order", f"{solver}: {exc}"
    else:
        t, claimed, info = solve_cvxpy(red, variant=variant, solver=solver, time_budget=left)
    info.update(solver=solver, solver_seconds=time.perf_counter() - t_solve, lmi_order=lmi.size,
                stopped_by=stopped_by(info["solver_status"]),
                reduced_order=red.size, eliminated_neurons=lmi.eliminated)
    name = "lipsdp" if variant == "neuron" else "lipsdp-layer"
    claimed_value = lmi.scale * math.sqrt(max(claimed, 0.0))
    info["solver_value"] = claimed_value
    info["sdp_lower"] = lmi.scale * math.sqrt(max(info.pop("dual_rho", 0.0), 0.0))
    cert, rejected = _best_certificate(lmi, red, info.pop("candidates", None) or [(t, claimed)], interior)
    if cert is None:
        info.update(verified=False, reason=str(rejected), rss_peak_mb=rss_mb())
        return Result(name, claimed_value, "estimate", time.perf_counter() - start, details=info), lmi, None
    info.update(cert.summary())
    info["rss_peak_mb"] = rss_mb()
    info["sdp_gap"] = gap(cert.value, info["sdp_lower"])
    return Result(name, cert.value, "certified_upper", time.perf_counter() - start, details=info), lmi, cert


def _best_certificate(lmi: LipschitzLMI, red: LipschitzLMI, candidates: list, interior: np.ndarray):
    """The least checked value over the solver's candidate ``(t, claimed rho)`` pairs (the interior
    point offers its last iterates: the most converged one can sit so near the cone's boundary that
    the check's rounding margin costs more than a slightly more central one loses), with the last
    rejection when none passes. The check's search evaluates on the reduced LMI ``red``."""
    best, rejected = None, None
    for t, claimed in candidates:
        try:
            cert = certify(lmi, t, claimed_rho=claimed, interior=interior, search_schur=red.schur)
        except CertificateRejected as exc:
            rejected = exc
            continue
        best = cert if best is None or cert.value < best.value else best
    return best, rejected


IPM_CHAIN_MAX_ORDER = 3000  # chains up to this reduced order go to the primal-dual interior point (dense X: ~10 n^2 floats)


def _auto_solver(red: LipschitzLMI, ipm_max_order: int, time_budget: float) -> str:
    """Interior point through cvxpy (Clarabel) on the whole LMI when it is small; lipbound's
    primal-dual interior point (:mod:`lipbound.methods.lipsdp_ipm`, no extra dependency) where
    :func:`ipm_routes` sends it; first order otherwise. Every path returns a checked value within
    ``time_budget`` (the interior point's iterates are all feasible)."""
    if red.size <= ipm_max_order and _cvxpy_available():
        return "clarabel"
    if ipm_routes(red.size, red.is_chain(), time_budget):
        return "ipm"
    return "first-order"


def ipm_routes(order: int, chain: bool, time_budget: float) -> bool:
    """Whether ``solver="auto"`` sends a reduced LMI of ``order`` to lipbound's interior point: up to
    ``IPM_CHAIN_MAX_ORDER``, a chain always (block-bidiagonal solves; it supersedes the chordal path
    there: exact on GLipSDP's Scalability MLPs where chordal stopped at a 15% gap), any other LMI
    (dense factorisations: residual nets, and every localized MLP, whose stable neurons folded into
    the maps that read them join non-neighbouring blocks) when its whole solve, predicted at
    :data:`~.machine.DENSE_IPM_SECONDS` per ``order^3``, fits half of ``time_budget`` (the rest: the
    start, the check, and a margin; measured on residual MLPs with 60 s: at order 1696 it converged in
    21 s where first order was cut at 44 s, at 2112 and 2632, cut by the clock, it ended 4-12% above
    first order's value). Sizes and budget only (the cost model routes by the same rule:
    :func:`~.cost.lipsdp_path`)."""
    return order <= IPM_CHAIN_MAX_ORDER and (chain or 2 * DENSE_IPM_SECONDS * order ** 3 <= time_budget)


def _cvxpy_available() -> bool:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


# ---- the problem data as coefficient matrices -----------------------------------------------------
def _coefficients(lmi: LipschitzLMI, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``N(rho, t) = C0 + rho E + sum_k u_k F_k`` with ``u`` the free multipliers of the variant:
    returns ``(C0, E, F)`` with ``F`` of shape ``(n*n, k)`` (vectorised, row-major). ``N`` is
    affine in ``(rho, t)``, so each coefficient is a difference of two assemblies of ``N``
    (:meth:`~lipbound.methods.lmi.LipschitzLMI.dense_N`, the same matrix the check factorises)."""
    zeros = np.zeros(lmi.n_neurons)
    c0 = lmi.dense_N(0.0, zeros)
    e = lmi.dense_N(1.0, zeros) - c0
    units = np.eye(lmi.n_neurons) if variant == "neuron" else np.stack([expand(lmi, u, variant) for u in
                                                                         np.eye(len(lmi.blocks) - 1)])
    f = np.stack([(lmi.dense_N(0.0, u) - c0).reshape(-1) for u in units], 1)
    return c0, e, f


def _import_cvxpy(solver: str):
    try:
        import cvxpy as cp
    except ImportError:
        raise NotApplicable(f"solver {solver!r} needs cvxpy: pip install 'lipbound[sdp]' "
                            "(or use solver='first-order')") from None
    name = {"clarabel": "CLARABEL", "scs": "SCS"}[solver]
    if name not in cp.installed_solvers():
        raise NotApplicable(f"solver {solver!r} is not installed: pip install 'lipbound[sdp]' "
                            "(or use solver='first-order')")
    return cp, name


def solve_cvxpy(lmi: LipschitzLMI, *, variant: str = "neuron", solver: str = "clarabel",
                time_budget: float = 300.0) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho`` s.t. ``N(rho, t) >= 0``, ``t >= 0`` with cvxpy; Clarabel falls back to SCS
    when it fails; each solver gets the time left of ``time_budget``. Returns
    ``(t per neuron, rho, info)``; nothing here is trusted yet."""
    cp, name = _import_cvxpy(solver)
    c0, e, f = _coefficients(lmi, variant)
    n = lmi.size
    rho = cp.Variable()
    u = cp.Variable(f.shape[1], nonneg=True)
    expr = c0 + rho * e + cp.reshape(f @ u, (n, n), order="C")
    sym = 0.5 * (expr + expr.T)
    lmi_constraint = sym >> 0
    problem = cp.Problem(cp.Minimize(rho), [lmi_constraint])
    tried = []
    deadline = time.perf_counter() + time_budget
    for solver_name in ([name, "SCS"] if name == "CLARABEL" and "SCS" in cp.installed_solvers() else [name]):
        left = max(deadline - time.perf_counter(), 1e-3)
        limit = {"time_limit": left} if solver_name == "CLARABEL" else {"time_limit_secs": left}
        try:
            problem.solve(solver=solver_name, **limit)
        except cp.error.SolverError as exc:
            tried.append(f"{solver_name}: {exc}")
            continue
        tried.append(f"{solver_name}: {problem.status}")
        if problem.status in ("optimal", "optimal_inaccurate") and u.value is not None:
            dual = lmi_constraint.dual_value
            dual_rho = repaired_dual(lmi, psd_factor(np.asarray(dual))) if dual is not None else 0.0
            return (np.maximum(expand(lmi, u.value, variant), 0.0), float(rho.value),
                    {"solver_status": problem.status, "solver_used": solver_name, "tried": tried,
                     "dual_rho": dual_rho})
    raise NotApplicable(f"the SDP solver failed ({'; '.join(tried)})")
