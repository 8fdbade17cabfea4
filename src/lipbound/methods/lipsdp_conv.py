"""LipSDP on chains too large to assemble (CNNs such as LeNet5, 2C2F): block elimination to solve,
block Cholesky to check.

**Structure.** A chain (convolutions, average pooling, dense layers and element-wise activations,
one after the other) gives the block-tridiagonal LMI of :mod:`lipbound.methods.lipsdp_chain`:
diagonal blocks of the layers' sizes (LeNet5: 784, 4704, 1600, 120, 84; 2C2F: 784, 3136, 1568,
100), off-diagonal blocks ``C_j = -diag((a_j + b_j) t_j) W_j`` with ``W_j`` the layer's matrix
(a convolution materialised once, in float64, with a bound of its rounding error:
:mod:`lipbound.methods.lmi_build`). The assembled LMI (order 7,292 for LeNet5) would have a
bandwidth close to its order, so the dense path refuses it on work; here nothing larger than
one block, or two neighbouring ones, is ever formed:

* **solving**: the first-order LipSDP solver of :mod:`lipbound.methods.lipsdp` (L-BFGS on
  ``rho*(t)`` over ``log t``, per-neuron multipliers, or per layer with ``variant="layer"``), each
  evaluation by the layer-by-layer elimination of :func:`~lipbound.methods.lipsdp_chain.chain_schur`
  (``O(sum n_j^3)``), started from ECLipsE-Fast's closed-form multipliers
  (:func:`~lipbound.methods.eclipse.fast_multipliers` at ``theta = 1``), which are strictly feasible;
* **checking** (:func:`block_cholesky_proves`, through :func:`~lipbound.methods.sdp_verify.certify`):
  ``N(rho, t) - c I`` is factorised by a block Cholesky in the order last block first,
  ``L_mm = chol(A_mm)``, ``H_j = L_jj^{-1} A_(j, j-1)``, ``L_(j-1)(j-1) = chol(A_(j-1)(j-1) - H_j^T H_j)``.

**Why the check is sound.** Permuting the blocks (last first) is a congruence, so ``N >= c I`` iff
the permuted matrix is. The block factorisation above *is* the Cholesky factorisation of the
permuted matrix: a block-tridiagonal matrix has no fill outside the blocks ``(j, j)`` and
``(j - 1, j)`` of its factor, each entry of ``L_(j-1, j) = H_j^T`` is one forward substitution and
each entry of ``H_j^T H_j`` one of the inner products that Cholesky subtracts, computed by BLAS in
some order. Demmel's bound (Higham, ASNA Thm 10.3) holds for any order of these inner products,
with ``gamma_{w+2}`` for ``w`` the most entries of a row of the factor on and left of its
diagonal: ``w = max_j (n_j + n_{j+1})`` here (:func:`row_width`). So the shift ``c`` of
:func:`~lipbound.methods.sdp_verify.cholesky_shift` with that ``w`` (which also covers the rounding
of assembling the blocks and of the materialised layer matrices) makes a completed factorisation a
proof that ``N(rho, t) >= 0``, exactly as for the dense and banded checks; ``rho`` itself comes from
the elimination and is only trusted once proved. The value is ``scale * sqrt(rho)`` widened by
``CERTIFIED_RTOL``, ``certified_upper``; if no margin can be proved it is an ``estimate``.

**Max pooling** is not part of an LMI (:mod:`lipbound.methods.lmi_build` refuses it); networks
with max pooling get their bound from AutoLip, which multiplies by the pooling's factor between
affine chains. **Cost**: an evaluation costs about ``sum_j (n_j^3 / 3 + n_j^2 n_{j-1} + n_j
n_{j-1}^2)`` flops; the method refuses (:class:`~lipbound.errors.NotApplicable`) a chain whose
start and check alone (about ``SETUP_EVALUATIONS`` evaluations) would not fit in the time budget at
``WORK_RATE`` flops per second (the Scalability CNNs with 16 channels: 12,544 neurons per layer),
so that AutoLip's certified bound stands for them; and a chain whose layers' dense matrices would
not fit in ``max_entries`` float64 entries in all.
"""

from __future__ import annotations

import math
import time
from functools import partial

import numpy as np
import scipy.linalg as sla

from ..errors import NotApplicable
from ..graph.ir import Activation, Affine, Graph, Input
from ..report import Result
from .eclipse import balanced, fast_multipliers
from .lipsdp_chain import chain_schur
from .lmi import LipschitzLMI
from .lmi_build import MAX_WORK, lmi_of_graph
from .lipsdp_dual import gap
from .sdp_verify import CertificateRejected, certify, cholesky_shift
from .lipsdp_first_order import rss_mb, solve_first_order, stopped_by

WORK_RATE = 1e10  # float64 flops per second (measured ~1.2e10: chain_schur on LeNet5, one core of the shared CPU)
SETUP_EVALUATIONS = 8  # balancing, start, first and last evaluation, and the check, in evaluations' work
CHECK_EVALUATIONS = 5  # the solver's last evaluation (top eigenvectors, dual bound) and the check
MAX_ENTRIES = 3e8  # float64 entries of the layers' matrices and the largest block (2.4 GB)


def chain_orders(graph: Graph) -> list[int] | None:
    """The block orders ``[input, activation 1, ...]`` of a chain's LMI from the fused graph's
    shapes (every neuron counted: an upper bound when some are stable), or None if the graph is
    not a chain of affine nodes and activations."""
    g = graph.fused()
    orders = []
    for node in g:
        if len(node.inputs) > 1 or not isinstance(node, (Input, Affine, Activation)):
            return None
        if isinstance(node, (Input, Activation)):
            orders.append(math.prod(node.shape))
    return orders


def routes_to_blocks(graph: Graph, max_work: float = MAX_WORK) -> bool:
    """True for a chain whose assembled LMI the dense and banded paths would refuse on work
    (``order * bandwidth^2 > max_work``): ``solver="auto"`` sends it here."""
    orders = chain_orders(graph)
    if orders is None or len(orders) < 2:
        return False
    bandwidth = max(a + b for a, b in zip(orders, orders[1:]))
    return sum(orders) * bandwidth ** 2 > max_work


def evaluation_work(orders: list[int]) -> float:
    """Flops of one layer-by-layer elimination (a Cholesky, a triangular solve and a product per block)."""
    return sum(n ** 3 / 3 + n * n * p + n * p * p for p, n in zip(orders, orders[1:]))


def row_width(lmi: LipschitzLMI) -> int:
    """Most entries of a row of the block Cholesky factor on and left of the diagonal: ``n_j + n_{j+1}``."""
    sizes = lmi.sizes + [0]
    return max(a + b for a, b in zip(sizes, sizes[1:]))


def block_cholesky_proves(lmi: LipschitzLMI, rho: float, t: np.ndarray) -> bool:
    """True when float64 proves ``N(rho, t) >= 0`` for a chain's LMI by the block Cholesky
    factorisation of the module docstring, with the rounding shift of
    :func:`~lipbound.methods.sdp_verify.cholesky_shift` for :func:`row_width`."""
    t = np.asarray(t, dtype=np.float64)
    if lmi.solving_only or not (np.all(np.isfinite(t)) and math.isfinite(rho)) or np.any(t < 0):
        return False
    m = len(lmi.blocks) - 1
    parts = lmi.blocks_of_N(rho, t, cholesky_shift(lmi, rho, t, row_width(lmi)))
    pattern = {(j, j) for j in range(m + 1)} | {(j, j - 1) for j in range(1, m + 1)}
    if not set(parts) <= pattern:
        raise NotApplicable("the block Cholesky check needs a chain's (block-tridiagonal) LMI")
    update = None
    for j in range(m, -1, -1):
        diag = parts[(j, j)] if update is None else parts[(j, j)] - update
        try:
            factor = sla.cholesky(diag, lower=True, check_finite=True)
        except (np.linalg.LinAlgError, ValueError):
            return False
        if j > 0:
            half = sla.solve_triangular(factor, parts[(j, j - 1)], lower=True, check_finite=True)
            update = half.T @ half
    return True


def lipsdp_blocks(graph: Graph, *, variant: str = "neuron", time_budget: float = 300.0, lbfgs_iter: int = 3000,
                  max_size: int = 100000, max_entries: float = MAX_ENTRIES) -> Result:
    """LipSDP-Neuron (or -Layer) of a chain too large to assemble, certified by the block Cholesky
    check (module docstring). Same ``details`` as :func:`~lipbound.methods.lipsdp.lipsdp`, with
    ``solver="blocks"``, ``start_value`` (the checked-to-be ECLipsE-Fast start's value, not
    certified by itself) and ``estimated_evaluation_seconds``. Raises
    :class:`~lipbound.errors.NotApplicable` for a graph that is not a chain, or one too large for
    ``max_entries`` or for the time budget."""

    start = time.perf_counter()
    orders = chain_orders(graph)
    if orders is None:
        raise NotApplicable("solver 'blocks' needs a chain of affine layers and activations (no sums, "
                            "concatenations or max pooling)")
    entries = sum(a * b for a, b in zip(orders, orders[1:])) + max(orders) ** 2
    if entries > max_entries:
        raise NotApplicable(f"the chain's layer matrices and blocks need {entries:.2g} float64 entries "
                            f"(> max_entries {max_entries:.2g}); autolip's bound stands")
    seconds = evaluation_work(orders) / WORK_RATE
    if SETUP_EVALUATIONS * seconds > time_budget:
        raise NotApplicable(f"one evaluation of the chain's LMI takes about {seconds:.0f} s: its start and check "
                            f"would not fit in {time_budget:.0f} s; autolip's bound stands")
    lmi = lmi_of_graph(graph, max_size=max_size, max_work=math.inf, eliminate="constant")
    if not lmi.is_chain():
        raise NotApplicable("the network's LMI is not a chain (solver 'blocks')")
    lmi = balanced(lmi)
    interior, rho_start = fast_multipliers(lmi, grid=0, evaluations=1)  # theta = 1 only
    t_solve = time.perf_counter()
    left = time_budget - (t_solve - start) - CHECK_EVALUATIONS * seconds  # keep time for the last step and the check
    red = lmi.reduced()
    if left > 2 * seconds:
        t, claimed, info = solve_first_order(red, variant=variant, time_budget=left, max_iter=lbfgs_iter, t0=interior)
    else:
        t, claimed, info = interior, rho_start, {"solver_status": "time limit", "iterations": 0}
    info.update(solver="blocks", solver_seconds=time.perf_counter() - t_solve, lmi_order=lmi.size,
                stopped_by=stopped_by(info["solver_status"]), reduced_order=red.size,
                eliminated_neurons=lmi.eliminated, estimated_evaluation_seconds=seconds,
                start_value=lmi.scale * math.sqrt(rho_start))
    name = "lipsdp" if variant == "neuron" else "lipsdp-layer"
    info["solver_value"] = lmi.scale * math.sqrt(max(claimed, 0.0))
    info["sdp_lower"] = lmi.scale * math.sqrt(max(info.pop("dual_rho", 0.0), 0.0))
    try:
        cert = certify(lmi, t, claimed_rho=claimed, interior=interior, schur=partial(chain_schur, lmi),
                       prove=partial(block_cholesky_proves, lmi), width=row_width(lmi))
    except CertificateRejected as exc:
        info.update(verified=False, reason=str(exc), rss_peak_mb=rss_mb())
        return Result(name, info["solver_value"], "estimate", time.perf_counter() - start, details=info)
    info.update(cert.summary())
    info.update(rss_peak_mb=rss_mb(), sdp_gap=gap(cert.value, info["sdp_lower"]))
    return Result(name, cert.value, "certified_upper", time.perf_counter() - start, details=info)
