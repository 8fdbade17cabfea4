"""What a method computes within a time budget, decided from predicted work only.

A method given ``time_budget`` seconds decides *before it starts* which expensive steps it takes
(the SVD of a materialised layer, how many power steps each layer gets), from the sizes of the
layers and fixed rates: the same graph and the same budget give the same plan, hence the same
numbers, on a fast or a loaded machine. The wall clock (:class:`~lipbound.methods.budget.Clock`)
stays the outer cap: it only stops what the plan started when the machine is slower than the
rates assume, and the result then says ``stopped_by == "time"``. A step the plan left out is a
deterministic work cap (``stopped_by == "work"``).

The rates (:mod:`lipbound.methods.machine`, their one home: meaning, unit and measurement) are
conservative (a slow, shared core), so that the clock rarely has to act. A step is priced as:

* the certified norm of a materialised layer: ``m n min(m, n)`` at :data:`~.machine.SVD_RATE`
  (or :data:`~.machine.GRAM_RATE` for the Gram + Cholesky certificate);
* the triangular factor of a QR: ``2 m n^2 - 2 n^3 / 3`` flops at :data:`~.machine.QR_RATE`;
* matrix products: multiply-accumulates at :data:`~.machine.MATMUL_RATE`;
* one pass of factorisations of an LMI: flops at :data:`~.machine.FACTOR_RATE`;
* power steps: ``2 k`` passes of :func:`~lipbound.methods.budget.op_macs` multiply-accumulates,
  at :data:`~.machine.POWER_SECONDS` each.
"""

from __future__ import annotations

import math
from typing import Iterable

from ..linalg.dense_gram import CHOLESKY_MIN_SIDE
from ..linalg.linear_operator import LinearOperator
from ..linalg.operators import Dense
from .budget import op_macs
from .machine import FACTOR_RATE, GRAM_RATE, MATMUL_RATE, POWER_SECONDS, QR_RATE, SVD_RATE

__all__ = ["Allowance", "svd_seconds", "qr_seconds", "macs_seconds", "dense_norm_seconds", "gram_step_seconds",
           "power_steps", "lmi_factor_seconds", "interior_evaluations"]

INTERIOR_SHARE = 0.2
INTERIOR_FLOOR = 0.1


class Allowance:
    """Predicted seconds a call may still spend on planned steps; :meth:`take` spends them in the
    (deterministic) order the steps are asked for."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def take(self, seconds: float) -> bool:
        """Spend ``seconds`` if they fit in what is left; False (nothing spent) otherwise."""
        if seconds > self.left:
            return False
        self.left -= seconds
        return True


def svd_seconds(m: int, n: int) -> float:
    """Predicted seconds of the float64 SVD of an ``m x n`` matrix."""
    return m * n * min(m, n) / SVD_RATE


def qr_seconds(m: int, n: int) -> float:
    """Predicted seconds of the triangular factor ``R`` of the float64 Householder QR of an ``m x n``
    matrix, ``m >= n`` (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`)."""
    return (2 * m * n * n - 2 * n ** 3 / 3) / QR_RATE


def macs_seconds(macs: float) -> float:
    """Predicted seconds of ``macs`` float64 multiply-accumulates in matrix products."""
    return macs / MATMUL_RATE


def dense_norm_seconds(op: LinearOperator) -> float:
    """Predicted seconds of the certified norm of ``op``'s materialised matrix, the way
    :func:`~lipbound.linalg.spectral.certified_norm` takes it (the Gram + Cholesky certificate
    for wide matrices when ``Dense.method`` allows it, else the SVD)."""
    m, n = op.out_numel, op.in_numel
    gram = Dense.method != "svd" and min(m, n) >= CHOLESKY_MIN_SIDE
    return m * n * min(m, n) / GRAM_RATE if gram else svd_seconds(m, n)


def gram_step_seconds(op: LinearOperator, k: int) -> float:
    """Predicted seconds of one power step on ``k`` vectors: a forward and a backward pass each."""
    return 2 * k * op_macs(op) * POWER_SECONDS


def power_steps(step_seconds: Iterable[float], seconds: float, max_iter: int) -> int:
    """The power steps every layer may take so that all of them fit in ``seconds``: ``max_iter``,
    or fewer when ``sum(step_seconds) * max_iter`` would not fit (at least 1)."""
    total = sum(step_seconds)
    if total <= 0 or not math.isfinite(seconds):
        return max_iter
    return max(1, min(max_iter, int(seconds / total)))


def lmi_factor_seconds(lmi) -> float:
    """Predicted seconds of one pass of factorisations over a Lipschitz LMI
    (:class:`~lipbound.methods.lmi.LipschitzLMI`, its block ``sizes``): a chain is eliminated
    block by block (``n^3 + n^2 k + n k^2`` flops for a block of ``n`` after one of ``k``), any
    other LMI is factorised whole. It prices one run of ECLipsE's recursion, one evaluation of the
    first-order solver and the float64 check (:func:`~lipbound.methods.sdp_verify.certify`)."""
    sizes = lmi.sizes
    if lmi.is_chain():
        flops = sum(n ** 3 + n * n * k + n * k * k for k, n in zip(sizes, sizes[1:]))
    else:
        flops = sum(sizes) ** 3
    return flops / FACTOR_RATE


def interior_evaluations(lmi, seconds: float, grid: int = 7, evaluations: int = 14) -> tuple[int, int]:
    """``(grid, evaluations)`` for :func:`~lipbound.methods.eclipse.fast_multipliers` so that its
    recursions fit in :data:`INTERIOR_SHARE` of ``seconds`` (or in :data:`INTERIOR_FLOOR` seconds, a
    negligible overrun, for small LMIs on tiny budgets): all of them, or fewer (at least the one at
    ``theta = 1``), the grid first."""
    each = lmi_factor_seconds(lmi)
    allowed = max(INTERIOR_SHARE * seconds, INTERIOR_FLOOR)
    fit = evaluations if each <= 0 or not math.isfinite(seconds) else int(allowed / each)
    fit = max(1, min(evaluations, fit))
    return min(grid, fit - 1), fit
