"""LipSDP-Neuron on a sub-region, warm-started from a checked certificate of a larger one.

**Setting.** A branch-and-bound node (:mod:`lipbound.methods.neuron_bab`) is a sub-region of its
parent's: every neuron's slope interval shrinks, and some unstable neurons become stable (the split
neuron, and those its split stabilises). Its parent's LipSDP certificate is a pair ``(rho, t)``
with ``N(rho, t) >= 0`` on the parent's LMI (:mod:`lipbound.methods.lmi`).

**Why the parent's multipliers are a feasible start.** Folding the neurons that became stable
(:func:`lipbound.methods.lmi_fold.fold`, same units) gives the child's LMI as the restriction of
the parent's quadratic form to ``dw_i = s_i dv_i``, where those neurons' sector terms vanish; the
other neurons keep their sectors (a ReLU's unstable sector is ``[0, 1]`` on every node; a neuron
whose interval only narrowed keeps the parent's sector, which still holds every secant slope of
the child). So ``(rho, t_kept)`` is feasible for the child, and ``rho*(t_kept) <= rho``.

**The bound.** From ``t_kept``, at most ``max_iter`` L-BFGS iterations of the first-order solver
(:func:`~lipbound.methods.lipsdp_first_order.solve_first_order`, on the reduced LMI) lower
``rho*``; whatever they reach is then checked in float64 by
:func:`~lipbound.methods.sdp_verify.certify` on the folded LMI (its rounding bounds carried by
the fold), with ``t_kept`` as the check's strictly feasible fallback. Only a completed proof
certifies, so the warm start affects tightness and time, never soundness. On mnistfc_256x2 (box
9_0.05), 50-100 iterations from the parent's multipliers (0.4-0.8 s) came within 0.1-0.5% of a
full solve of the child (2-12 s); the parent's multipliers alone did not move the bound at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import NotApplicable
from .lipsdp_first_order import solve_first_order
from .lmi import LipschitzLMI
from .lmi_fold import fold
from .sdp_verify import CertificateRejected, certify

__all__ = ["SdpState", "warm_bound"]


@dataclass
class SdpState:
    """A checked certificate: ``value`` (certified), the LMI it was proved on and its multipliers
    ``t``, and ``live``, per activation layer, the mask of the neurons that are basis variables of
    that LMI (unstable there, in the LMI's order: one block per layer with a live neuron)."""

    value: float
    lmi: LipschitzLMI
    t: np.ndarray
    live: list[np.ndarray]


def warm_bound(parent: SdpState, live: list[np.ndarray], slopes: list[np.ndarray], *, max_iter: int,
               seconds: float) -> SdpState | None:
    """The checked LipSDP bound of a sub-region of ``parent``'s whose unstable neurons are ``live``
    (per layer, a subset of the parent's) and whose stable neurons have the slopes ``slopes`` (per
    layer; read where a parent's live neuron became stable), from ``parent``'s multipliers (module
    doc); None when it does not apply (a live neuron the parent had stable, no live neuron left)
    or nothing could be proved."""
    if len(live) != len(parent.live) or any((c & ~p).any() for c, p in zip(live, parent.live)):
        return None
    if not any(c.any() for c in live):
        return None
    stable, block = {}, 0
    for c, p, s in zip(live, parent.live, slopes):
        if not p.any():
            continue
        block += 1
        gone = np.flatnonzero(~c[p])
        stable[block] = (gone, np.asarray(s, dtype=np.float64)[p][gone])
    child, kept = fold(parent.lmi, stable)
    t = parent.t[kept]
    red = child.reduced()
    try:
        t_fo, rho_fo, _ = solve_first_order(red, t0=t, max_iter=max_iter, time_budget=seconds, dual=False)
        cert = certify(child, t_fo, claimed_rho=rho_fo, interior=t, search_schur=red.schur)
    except (NotApplicable, CertificateRejected):
        return None
    return SdpState(cert.value, child, cert.t, [c.copy() for c in live])

