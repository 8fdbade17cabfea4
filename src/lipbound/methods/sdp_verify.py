"""Checking a Lipschitz LMI certificate in float64 before calling its value certified.

A solver (interior point, first-order, or a closed-form recursion) returns multipliers ``t`` and a
``rho``; neither is trusted. :func:`certify`:

1. clips ``t`` to ``t >= 0`` (the quadratic constraints hold only for non-negative multipliers) and
   rejects non-finite values;
2. recomputes, for these ``t``, the least ``rho`` with ``N(rho, t) - tau I >= 0``
   (:meth:`~lipbound.methods.lmi.LipschitzLMI.schur`: Schur complement on the input block), for a
   margin ``tau`` that covers rounding (step 3); the claimed ``rho`` only sets the size of that
   margin, so an inaccurate solver answer can only cost tightness, never validity;
3. **proves** ``N(rho, t) >= 0`` by a Cholesky factorisation in float64 of the assembled
   ``A = fl(N^(rho, t) - c I)`` (dense, or banded for chains), with the shift ``c`` of
   :func:`cholesky_shift`; if it fails, ``tau`` grows by 4x (at most ``max_attempts`` proofs) and
   otherwise the certificate is rejected (:class:`CertificateRejected`). When the margin leaves
   the solver's multipliers no room (their neuron block's least eigenvalue is below ``tau``),
   steps 2-3 run on other multipliers: the solver's with their largest entries capped, or mixed
   with strictly feasible ones (:func:`certify`); any ``t >= 0`` that step 3 proves is a
   certificate, so this choice costs nothing in soundness;
4. returns ``L = scale * sqrt(rho)``, widened by the library's relative margin ``CERTIFIED_RTOL``
   for the square root and the product (``scale`` is a power of two).

**Why a completed factorisation proves ``N >= 0``.** Let every row of ``A`` have at most ``w``
entries on and left of the diagonal (``w = n`` dense, the band width plus one banded). If the
float64 Cholesky factorisation of ``A`` runs to completion (every pivot ``> 0``), its computed
factor satisfies ``G^T G = A + D`` with ``|D| <= gamma_{w+2} |G^T| |G|`` (Demmel 1989; Higham,
ASNA Thm 10.3, with one more rounding for LAPACK's division by a pivot through its reciprocal;
the bound holds for any order of the inner products, so for blocked LAPACK and BLAS, though not
for Strassen-type products, which they do not use). Column by column
``(|G^T| |G|)_ik <= ||g_i|| ||g_k||`` and ``||g_i||^2 <= a_ii / (1 - gamma)``, so
``||D||_2 <= gamma / (1 - gamma) trace(A)`` and ``A >= -gamma / (1 - gamma) trace(A) I``
(Rump, *Verification of positive definiteness*, BIT 2006, who adds ``4 n (2n + 2 + max a_ii) eta``,
``eta = 2^-1074``, for underflow). Then, with ``N`` the LMI of the exact maps,

    N - c I = A + (fl error of the assembly) + (N - N^)  >=  -(gamma' trace + E_asm + E_data) I,

where ``E_asm <= gamma_W (abs_scale + c sqrt(n))`` bounds the rounding of forming the entries
(:meth:`~lipbound.methods.lmi.LipschitzLMI.abs_scale`, ``gamma_W`` its
:attr:`~lipbound.methods.lmi.LipschitzLMI.assembly_gamma`) and ``E_data`` the rounding of the maps
themselves (:meth:`~lipbound.methods.lmi.LipschitzLMI.data_margin`). So ``N >= 0`` whenever
``c (1 - gamma_W sqrt(n)) >= gamma' trace + gamma_W abs_scale + E_data + underflow``;
:func:`cholesky_shift` takes twice that. An LMI marked ``solving_only`` (the reduced one: its input block cut to the rows of the maps that read
the input) is
never checked.

**Per-neuron sectors, local constants.** The matrix checked is the LMI's own assembly
(:meth:`~lipbound.methods.lmi.LipschitzLMI.blocks_of_N`), with each unstable neuron's sector
``[lo_i, hi_i]`` (the global range, or its slope interval on a localized graph; stable neurons are
folded into the linear maps by :mod:`lipbound.methods.lmi_build`), and the rounding bounds take
each neuron's own ``|lo_i hi_i|``, ``|lo_i + hi_i|`` and multiplier ``t_i`` with its row's norms. A checked certificate on a localized
graph bounds ``||f(x) - f(y)|| / ||x - y||`` for every pair in its (convex) region
(:mod:`lipbound.methods.lmi`, *Local constants*).

The graph's operators are taken as exact; everything lipbound computes from them is covered
above, so the value is certified given exact arithmetic for the operators themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.linalg as sla

from ..errors import LipboundError
from ..linalg.spectral import CERTIFIED_RTOL
from .float_error import gamma
from ..linalg.float_units import ETA64
from .line_search import golden_section
from .lmi import LipschitzLMI


class CertificateRejected(LipboundError):
    """The multipliers do not make the LMI feasible for any ``rho`` that float64 can prove."""


@dataclass
class Certificate:
    """A checked LMI certificate: ``value = scale * sqrt(rho)`` (widened) is a certified upper
    bound of ``L(f)``. ``claimed_rho`` is what the solver said (None if nothing), ``tau`` the
    margin used, ``shift`` the Cholesky shift, ``attempts`` how many proofs were tried, ``t`` the
    multipliers proved, ``how`` which they are (``"solver"``, ``"cap c"``, ``"mix lam"``,
    ``"interior"``: :func:`certify`) and ``searched`` how many multipliers were evaluated."""

    value: float
    rho: float
    claimed_rho: float | None
    tau: float
    shift: float
    attempts: int
    seconds: float
    t: np.ndarray
    how: str = "solver"
    searched: int = 1

    def summary(self) -> dict:
        return {"verified": True, "rho": self.rho, "claimed_rho": self.claimed_rho, "tau": self.tau,
                "cholesky_shift": self.shift, "verify_attempts": self.attempts, "verify_seconds": self.seconds,
                "verify_candidate": self.how, "verify_searched": self.searched}


def cholesky_shift(lmi: LipschitzLMI, rho: float, t: np.ndarray, width: int) -> float:
    """The shift ``c`` of step 3 for ``N(rho, t)`` with ``width`` entries per row of the factor:
    twice the least ``c`` of the module docstring's condition."""
    diag = [np.abs(d) for d in diagonal_of_N(lmi, rho, t)]
    n = lmi.size
    trace = sum(float(d.sum()) for d in diag) * (1 + gamma(n))
    g = gamma(width + 2)
    g_asm = lmi.assembly_gamma
    underflow = 4 * n * (2 * n + 2 + max(float(d.max()) for d in diag if d.size)) * ETA64
    need = g / (1 - g) * trace + g_asm * lmi.abs_scale(rho, t) + lmi.data_margin(t) + underflow
    return 2.0 * need / (1 - g_asm * math.sqrt(n))


def diagonal_of_N(lmi: LipschitzLMI, rho: float, t: np.ndarray) -> list[np.ndarray]:
    """The diagonal of ``N(rho, t)`` block by block, the entries that
    :meth:`~lipbound.methods.lmi.LipschitzLMI.blocks_of_N` assembles there (``rho`` on the input,
    minus the squared column norms of the output maps, plus ``2 a_i b_i t_i`` times the squared
    entries of each activation's pre-activation maps, ``2 t`` on the neurons), without the
    off-diagonal blocks: the shift of :func:`cholesky_shift` needs only these."""
    diag = [np.zeros(size) for size in lmi.sizes]
    diag[0] += rho
    for r, ar in lmi.out.items():
        diag[r] -= np.einsum("ij,ij->j", ar, ar)
    for j, (blk, sl) in enumerate(zip(lmi.blocks[1:], lmi.neuron_slices), start=1):
        ab, _ = blk.sector()
        if np.any(ab):
            for r, ar in blk.pre.items():
                diag[r] += 2.0 * np.einsum("i,ij,ij->j", t[sl] * ab, ar, ar)
        diag[j] += 2.0 * t[sl]
    return diag


def check_margin(lmi: LipschitzLMI, rho: float, t: np.ndarray, width: int | None = None) -> float:
    """The margin ``tau`` of :func:`certify`'s first attempt at ``(rho, t)``: twice the Cholesky
    shift of step 3 (the other half absorbs the rounding of the Schur complement that sets ``rho``)."""
    return 2.0 * cholesky_shift(lmi, rho, t, width or _layout(lmi)[1])


def solving_margin(lmi: LipschitzLMI, t0: np.ndarray) -> float:
    """A margin for a solver to keep (``N(rho, t) - margin I >= 0``: the interior point's ``margin``,
    :mod:`lipbound.methods.lipsdp_ipm`) so that :func:`certify` passes on its first attempt: twice
    :func:`check_margin` at the strictly feasible ``t0`` and its least ``rho``.

    Why it is needed: at LipSDP's optimum on a deep net the neuron block of ``N`` has eigenvalues
    far below any margin that float64 can prove (~1e-12 against ~1e-10 on GLipSDP's 65-layer MLPs),
    so the optimum itself cannot be certified; moving it afterwards (towards ``interior``) costs
    2-3% there. Asking the solver for ``N >= margin I`` instead costs about ``margin trace(X*)``
    (``X*`` the dual optimum; measured 0.1% on mlp_L65_W16). Twice the check's margin: the check's
    own shift is evaluated at the solver's final point, where it is smaller than at ``t0`` on the
    nets measured; a margin too small only sends the check to its later attempts."""
    rho0 = lmi.schur(t0).rho
    return 2.0 * check_margin(lmi, rho0, t0) if math.isfinite(rho0) else 0.0


def _layout(lmi: LipschitzLMI) -> tuple[int | None, int]:
    """(band width or None for dense, terms per inner product) of the full ``N``."""
    bw = lmi.bandwidth(0)
    if lmi.size > 600 and 3 * bw < lmi.size:
        return bw, bw + 1
    return None, lmi.size


def is_certificate(lmi: LipschitzLMI, rho: float, t: np.ndarray) -> bool:
    """True when float64 proves ``N(rho, t) = -M(rho, t) >= 0`` with ``t >= 0`` (step 3)."""
    t = np.asarray(t, dtype=np.float64)
    if lmi.solving_only or not (np.all(np.isfinite(t)) and math.isfinite(rho)) or np.any(t < 0):
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


SEARCH_EVALUATIONS = 12  # evaluations of rho* the check may spend on moving the multipliers (caps, mixing)
MIX_STEPS = 6  # mixing weights tried towards the interior: 10^(k/2 - 2.5), k < MIX_STEPS (the last is 1)
NEAR = 1e-3  # the margin costing less than this fraction of rho, the solver's multipliers are kept as they are


@dataclass
class _Candidate:
    """Multipliers ``t`` (all ``>= 0``) with the margin ``tau`` sized for them and the least ``rho``
    with ``N(rho, t) - tau I >= 0`` as the search evaluated it (``inf``: none); ``how`` names them."""

    rho: float
    t: np.ndarray
    tau: float
    how: str


def certify(lmi: LipschitzLMI, t: np.ndarray, *, claimed_rho: float | None = None, interior: np.ndarray | None = None,
            max_attempts: int = 6, search: int = SEARCH_EVALUATIONS, schur: Callable | None = None,
            search_schur: Callable | None = None, prove: Callable | None = None,
            width: int | None = None) -> Certificate:
    """Check the multipliers ``t`` and return the certified bound they give (see module doc).

    **Moving the multipliers.** Any ``t >= 0`` that the proof accepts gives a certified value, so
    the check may try other multipliers than the solver's. The solver's own are kept when their
    margin ``tau`` costs under ``NEAR`` of ``rho``. Otherwise (at most ``search`` evaluations of
    ``rho*``, each with the margin :func:`check_margin` sized for its own multipliers):

    1. **caps** ``min(t, c)``, ``log c`` by golden-section search between the logs of the median
       and the largest entry of ``t`` (leaving ``MIX_STEPS`` evaluations to step 2 when there is an
       ``interior``): a first-order solver
       drives the multipliers of a few neurons to 1e4-1e5 times the median for a negligible gain
       in ``rho*``, and the margin grows with them (the trace term of the Cholesky proof, and the
       rounding bounds :meth:`~lipbound.methods.lmi.LipschitzLMI.data_margin` and ``abs_scale``
       on those neurons' rows), until it can exceed the least eigenvalue of the neuron block
       (measured on ResNet-2B's localized LMI, when those bounds took each block's largest
       multiplier: margin 0.0123 against 0.00068; capped at ``c = 300`` the margin was 5e-5 and
       ``rho*`` rose by 0.4%);
    2. **mixing** ``(1 - lam) t_c + lam interior`` with the best capped ``t_c``, for
       ``lam = 10^(k/2 - 2.5)``, ``k < MIX_STEPS`` (the last, ``lam = 1``, is ``interior`` itself);
       ``interior`` (optional: multipliers at which the neuron block of ``N`` is positive definite,
       :func:`~lipbound.methods.eclipse.fast_multipliers`) is in the interior of the cone, and,
       ``rho*`` being convex in ``t``, the mix costs at most ``lam (rho*(interior) - rho*(t))``.

    The mixing stops at its first value that is worse than the best finite one before it. When
    nothing finite is found, ``interior`` itself is tried (the start's certificate rather than
    none). The least values are then proved in turn (``max_attempts`` proofs at most): one whose
    proof fails comes back with four times its margin. Only a completed proof certifies (step 3 of
    the module doc), so which multipliers are tried never affects soundness, only tightness.

    ``schur(t, tau)``, ``prove(rho, t)`` and ``width`` replace :meth:`~lipbound.methods.lmi.
    LipschitzLMI.schur`, :func:`is_certificate` and its factor's row width for a structure that
    has its own factorisation (chains too large to assemble: :mod:`lipbound.methods.lipsdp_conv`);
    ``prove`` must be a proof of the same kind (step 3). ``search_schur`` evaluates the candidates
    (default ``schur``): the reduced LMI's (:meth:`~lipbound.methods.lmi.LipschitzLMI.reduced`, the
    same ``rho*`` at a fraction of the cost) is enough there, since only the proof certifies.

    Raises :class:`CertificateRejected` when no ``rho`` can be proved for these multipliers."""
    schur = schur or lmi.schur
    search_schur = search_schur or schur
    prove = prove or partial(is_certificate, lmi)
    t0 = time.perf_counter()
    if lmi.solving_only:
        raise CertificateRejected("this LMI is only close to the network's (reduced for solving): check the full one")
    t = _multipliers(lmi, t)
    if interior is not None:
        interior = _multipliers(lmi, interior)
    # the size of rho sets the rounding margin: the claim when there is a plausible one, else recomputed
    plausible = claimed_rho is not None and math.isfinite(claimed_rho) and claimed_rho > 0
    rho0 = claimed_rho if plausible else schur(t).rho
    if not math.isfinite(rho0) and interior is None:
        raise CertificateRejected("the neuron block of the LMI is not positive definite at these multipliers")
    width = width or _layout(lmi)[1]
    size_rho = rho0 if math.isfinite(rho0) else schur(interior).rho

    def candidate(tk: np.ndarray, how: str, tau: float | None = None) -> _Candidate:
        tau = check_margin(lmi, size_rho, tk, width) if tau is None else tau
        return _Candidate(search_schur(tk, tau).rho, tk, tau, how)

    tried = [candidate(t, "solver")]
    if not tried[0].rho <= rho0 * (1 + NEAR):
        tried += _search(t, interior, candidate, search, tried[0])
    pool = sorted((c for c in tried if math.isfinite(c.rho)), key=lambda c: c.rho)
    if not pool and interior is not None and not any(c.how == "interior" for c in tried):
        pool = [c for c in [candidate(interior, "interior")] if math.isfinite(c.rho)]
    proofs = 0
    while pool and proofs < max_attempts:
        c = pool.pop(0)
        proofs += 1
        rho = max(c.rho, c.tau) * (1 + 1e-12)
        if prove(rho, c.t):
            value = lmi.scale * math.sqrt(rho) * (1 + CERTIFIED_RTOL)
            return Certificate(value, rho, claimed_rho, c.tau, cholesky_shift(lmi, rho, c.t, width), proofs,
                               time.perf_counter() - t0, c.t, c.how, len(tried))
        wider = candidate(c.t, c.how, 4.0 * c.tau)
        if math.isfinite(wider.rho):
            pool = sorted(pool + [wider], key=lambda k: k.rho)
    if not math.isfinite(schur(t).rho) and interior is None:
        raise CertificateRejected("the neuron block of the LMI is not positive definite at these multipliers")
    raise CertificateRejected(f"float64 could not prove the LMI feasible at these multipliers "
                              f"(least rho {rho0:.6g}; {len(tried)} multipliers searched, {proofs} proofs tried)")


def _search(t: np.ndarray, interior: np.ndarray | None, candidate: Callable, evaluations: int,
            first: _Candidate) -> list[_Candidate]:
    """The candidates of :func:`certify`'s search (caps, then mixing), at most ``evaluations``."""
    out: list[_Candidate] = []
    lams = [10.0 ** (k / 2 - 2.5) for k in range(MIX_STEPS)]  # 0.003 ... 1 (1: interior itself)

    def walk(points, best: _Candidate | None, limit: int) -> _Candidate | None:
        for tk, how in points:
            if len(out) >= limit:
                break
            c = candidate(tk, how)
            out.append(c)
            if best is not None and not c.rho < best.rho:
                break
            if math.isfinite(c.rho):
                best = c
        return best

    top, floor = float(t.max()), float(np.median(t))
    best = first if math.isfinite(first.rho) else None
    if top > floor > 0:
        best = _golden_caps(t, math.log(floor), math.log(top), candidate, out,
                            evaluations - (len(lams) if interior is not None else 0), best)
    if interior is not None:
        base = t if best is None else best.t
        walk((((1 - lam) * base + lam * interior, f"mix {lam:.3g}") if lam < 1 else (interior, "interior")
              for lam in lams), best, evaluations)
    return out


def _golden_caps(t: np.ndarray, lo: float, hi: float, candidate: Callable, out: list[_Candidate], limit: int,
                 best: _Candidate | None) -> _Candidate | None:
    """Golden-section search of ``rho`` over the caps ``min(t, e^u)``, ``u`` in ``[lo, hi]``, until
    ``out`` holds ``limit`` candidates; ties (both infinite: the margin still too large, or the
    caps too low to be feasible) go to the lower caps. Returns the best finite one (or ``best``)."""
    cache: dict[float, _Candidate] = {}

    def rho_at(u: float) -> float:
        if u not in cache:
            c = math.exp(u)
            cache[u] = candidate(np.minimum(t, c), f"cap {c:.3g}")
            out.append(cache[u])
        return cache[u].rho

    golden_section(rho_at, lo, hi, lambda a, b: len(out) + 2 - (a in cache) - (b in cache) <= limit)
    for c in cache.values():
        if math.isfinite(c.rho) and (best is None or c.rho < best.rho):
            best = c
    return best


def _multipliers(lmi: LipschitzLMI, t: np.ndarray) -> np.ndarray:
    """``t`` as a float64 vector of the right length, clipped to ``t >= 0`` (step 1)."""
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.shape[0] != lmi.n_neurons:
        raise CertificateRejected(f"expected {lmi.n_neurons} multipliers, got {t.shape[0]}")
    if not np.all(np.isfinite(t)):
        raise CertificateRejected("the multipliers are not finite")
    return np.maximum(t, 0.0)
