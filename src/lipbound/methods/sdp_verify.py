"""Checking a Lipschitz LMI certificate in float64 before calling its value certified.

A solver (interior point, first-order, or a closed-form recursion) returns multipliers ``t`` and a
``rho``; neither is trusted. :func:`certify`:

1. clips ``t`` to ``t >= 0`` (the quadratic constraints hold only for non-negative multipliers) and
   rejects non-finite values;
2. recomputes, for these ``t``, the least ``rho`` with ``N(rho, t) - tau I >= 0``
   (:meth:`~lipbound.methods.lmi.LipschitzLMI.schur`: Schur complement on the input block), for a
   margin ``tau`` that covers rounding (step 3); the claimed ``rho`` only sets the size of that
   margin, so an inaccurate solver answer can only cost tightness, never validity;
3. **proves** ``N(rho, t) >= 0`` by a Cholesky factorisation in float64 of ``N(rho, t) - c I``
   (dense, or banded for chains): after Demmel (1989) and Rump (2006, *Verification of positive
   definiteness*), a floating-point Cholesky factorisation of a symmetric ``A - c I`` that
   completes, with ``c >= gamma_{w+1} trace|A| / (1 - gamma_{w+1})`` (``w`` the number of terms in
   each inner product, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53``), shows that ``A`` is positive
   definite. ``c`` used here is four times that, plus ``gamma_n`` times a bound of the rounding
   made when the entries of ``N`` are formed (:meth:`~lipbound.methods.lmi.LipschitzLMI.abs_scale`).
   ``tau = 2c`` leaves room for it; if the factorisation still fails, ``tau`` grows by 4x (at most
   six times) and otherwise the certificate is rejected (:class:`CertificateRejected`);
4. returns ``L = scale * sqrt(rho)``, widened by the library's relative margin ``CERTIFIED_RTOL``
   for the square root and the product.

The LMI entries are formed from the network's weights in float64 (the weights themselves are taken
as exact); as elsewhere in lipbound, the bound is certified given exact arithmetic for the weights'
products, with rounding covered by the margins above.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from ..errors import LipboundError
from ..linalg.spectral import CERTIFIED_RTOL
from .lmi import LipschitzLMI

_U = 2.0 ** -53


class CertificateRejected(LipboundError):
    """The multipliers do not make the LMI feasible for any ``rho`` that float64 can prove."""


@dataclass
class Certificate:
    """A checked LMI certificate: ``value = scale * sqrt(rho)`` (widened) is a certified upper
    bound of ``L(f)``. ``claimed_rho`` is what the solver said (None if nothing), ``tau`` the
    margin used, ``shift`` the Cholesky shift, ``attempts`` how many margins were tried."""

    value: float
    rho: float
    claimed_rho: float | None
    tau: float
    shift: float
    attempts: int
    seconds: float
    t: np.ndarray

    def summary(self) -> dict:
        return {"verified": True, "rho": self.rho, "claimed_rho": self.claimed_rho, "tau": self.tau,
                "cholesky_shift": self.shift, "verify_attempts": self.attempts, "verify_seconds": self.seconds}


def _gamma(k: int) -> float:
    return k * _U / (1 - k * _U)


def cholesky_shift(lmi: LipschitzLMI, rho: float, t: np.ndarray, width: int) -> float:
    """The shift ``c`` of step 3 for ``N(rho, t)`` with ``width`` terms per inner product."""
    parts = lmi.blocks_of_N(rho, t)
    trace = sum(float(np.abs(np.diag(m)).sum()) for (r, c), m in parts.items() if r == c)
    g = _gamma(width + 1)
    return 4.0 * g / (1 - g) * trace + _gamma(lmi.size) * lmi.abs_scale(rho, t)


def _layout(lmi: LipschitzLMI) -> tuple[int | None, int]:
    """(band width or None for dense, terms per inner product) of the full ``N``."""
    bw = lmi.bandwidth(0)
    if lmi.size > 600 and 3 * bw < lmi.size:
        return bw, bw + 1
    return None, lmi.size


def is_certificate(lmi: LipschitzLMI, rho: float, t: np.ndarray) -> bool:
    """True when float64 proves ``N(rho, t) = -M(rho, t) >= 0`` with ``t >= 0`` (step 3)."""
    t = np.asarray(t, dtype=np.float64)
    if not (np.all(np.isfinite(t)) and math.isfinite(rho)) or np.any(t < 0):
        return False
    band, width = _layout(lmi)
    c = cholesky_shift(lmi, rho, t, width)
    mat = lmi.assemble(lmi.blocks_of_N(rho, t, c), banded=band)
    try:
        if band is None:
            sla.cholesky(mat, lower=True, check_finite=True)
        else:
            sla.cholesky_banded(mat, lower=True, check_finite=True)
    except (np.linalg.LinAlgError, ValueError):
        return False
    return True


def certify(lmi: LipschitzLMI, t: np.ndarray, *, claimed_rho: float | None = None, max_attempts: int = 6) -> Certificate:
    """Check the multipliers ``t`` and return the certified bound they give (see module doc).

    Raises :class:`CertificateRejected` when no ``rho`` can be proved for these multipliers."""
    t0 = time.perf_counter()
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.shape[0] != lmi.n_neurons:
        raise CertificateRejected(f"expected {lmi.n_neurons} multipliers, got {t.shape[0]}")
    if not np.all(np.isfinite(t)):
        raise CertificateRejected("the multipliers are not finite")
    t = np.maximum(t, 0.0)
    # the size of rho sets the rounding margin: the claim when there is a plausible one, else recomputed
    rho0 = claimed_rho if claimed_rho is not None and math.isfinite(claimed_rho) and claimed_rho > 0 else lmi.schur(t).rho
    if not math.isfinite(rho0):
        raise CertificateRejected("the neuron block of the LMI is not positive definite at these multipliers")
    _, width = _layout(lmi)
    c0 = cholesky_shift(lmi, max(rho0, 0.0), t, width)
    tau = 2.0 * c0
    for attempt in range(1, max_attempts + 1):
        rho = lmi.schur(t, tau).rho
        if math.isfinite(rho):
            rho = max(rho, tau) * (1 + 1e-12)
            if is_certificate(lmi, rho, t):
                value = lmi.scale * math.sqrt(rho) * (1 + CERTIFIED_RTOL)
                return Certificate(value, rho, claimed_rho, tau, cholesky_shift(lmi, rho, t, width), attempt,
                                   time.perf_counter() - t0, t)
        elif attempt == 1 and not math.isfinite(lmi.schur(t).rho):
            raise CertificateRejected("the neuron block of the LMI is not positive definite at these multipliers")
        tau *= 4.0
    raise CertificateRejected(f"float64 could not prove the LMI feasible at these multipliers "
                              f"(least rho {rho0:.6g}; {max_attempts} margins tried)")
