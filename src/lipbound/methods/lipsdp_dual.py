"""A lower bound on the LipSDP optimum (weak duality), and the relative gap of a LipSDP bound.

**The primal.** In the notation of :mod:`lipbound.methods.lmi`, LipSDP-Neuron is

    rho_sdp = min rho   s.t.   N(rho, t) = rho E + C_0 + sum_i t_i F_i >= 0,   t >= 0,

with ``E = diag(I_x, 0)`` (the input block), ``C_0 = -A_out^T A_out`` (the output term) and
``F_i = dN / dt_i``, the sector term of neuron ``i``: for a vector ``xi = (x, w_1, ..., w_m)`` with
pre-activation ``p_i = (A_j xi)_i`` and output ``q_i = (w_j)_i`` of neuron ``i`` of activation ``j``,
``xi^T F_i xi = 2 (q_i - a_i p_i)(q_i - b_i p_i)`` (sector ``[a_i, b_i]``).

**The dual, and weak duality.** Let ``Z >= 0`` with ``<E, Z> = trace Z_xx = 1`` and
``<F_i, Z> <= 0`` for every neuron. For any primal feasible ``(rho, t)``,

    rho = rho <E, Z> = <N(rho, t), Z> - <C_0, Z> - sum_i t_i <F_i, Z>  >=  <A_out^T A_out, Z>,

since ``<N, Z> >= 0`` (both PSD) and ``t_i <F_i, Z> <= 0``. So ``<A_out^T A_out, Z>`` is a lower
bound of ``rho_sdp`` and ``scale * sqrt(.)`` one of the LipSDP value. LipSDP-Layer ties the
multipliers of a node, ``t_i = t_j``, so its dual asks only ``sum_{i in j} <F_i, Z> <= 0``, which
the per-neuron conditions imply: the same ``Z`` bounds the (larger) Layer optimum too.

**Making a candidate feasible.** Write ``Z = V V^T`` (columns of ``V``: vectors ``xi_k``;
expectations ``E[.]`` below are sums over the columns). Process the activations in topological
order; for activation ``j`` its pre-activations ``p = A_j xi`` read only earlier, already repaired
blocks. With ``m_i = (a_i + b_i) / 2``, ``h_i = (b_i - a_i) / 2`` and ``r_i = q_i - m_i p_i``,
``(q - a p)(q - b p) = r^2 - h^2 p^2``; replacing ``q_i`` by ``m_i p_i + c_i r_i`` with
``c_i = min(1, h_i sqrt(E[p_i^2] / E[r_i^2]))`` makes ``E[(q_i - a_i p_i)(q_i - b_i p_i)] <= 0``.
The input block is untouched, so the new ``Z' = V' V'^T`` is PSD, has the same ``trace Z_xx`` (then
normalised to 1) and is dual feasible. Candidates ``V``: the interior-point solver's dual matrix,
or, for the first-order solver, the Schur-complement null vectors ``z_k`` at its solution (the
optimality condition of ``rho*(t)``: a convex combination of ``z_k z_k^T`` with
``<F_i, Z> = 0`` where ``t_i > 0``), weighted as described in :func:`first_order_dual`. At the
optimum, complementary slackness makes the repair small; away from it the bound is looser but
still a bound.

The value is computed in float64 and is a diagnostic (how far the certified value can still fall),
not a certified quantity: it is reported as ``details["sdp_lower"]``, never as a bound of ``L(f)``
(LipSDP's optimum is itself only an upper bound of ``L(f)``).
"""

from __future__ import annotations

import math

import numpy as np

from .lmi import LipschitzLMI, SchurResult


def repaired_dual(lmi: LipschitzLMI, vecs: np.ndarray) -> float:
    """A lower bound of the LipSDP-Neuron optimum ``rho_sdp`` of ``lmi`` from a Gram factor ``vecs``
    (shape ``(lmi.size, k)``) of a candidate dual matrix, repaired to be feasible (module docstring).
    Returns 0 when the candidate has no input component."""
    off = lmi.offsets
    xi = [vecs[off[b]:off[b + 1]] for b in range(len(lmi.blocks))]
    norm_x = float(np.sum(xi[0] * xi[0]))
    if not (norm_x > 0 and math.isfinite(norm_x)):
        return 0.0
    for j, blk in enumerate(lmi.blocks[1:], start=1):
        p = sum(m @ xi[r] for r, m in blk.pre.items())
        mid, half = (0.5 * (blk.lo + blk.hi))[:, None], (0.5 * (blk.hi - blk.lo))
        r = xi[j] - mid * p
        ep, er = np.sum(p * p, axis=1), np.sum(r * r, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.where(er > 0, np.minimum(1.0, half * np.sqrt(ep / er)), 1.0)
        xi[j] = mid * p + c[:, None] * r
    y = sum(m @ xi[r] for r, m in lmi.out.items())
    return float(np.sum(y * y)) / norm_x


def psd_factor(z: np.ndarray) -> np.ndarray:
    """A Gram factor ``V`` with ``V V^T`` the PSD part of the symmetric ``z`` (negative eigenvalues,
    from the solver's rounding, dropped)."""
    lam, u = np.linalg.eigh(0.5 * (z + z.T))
    keep = lam > 0
    return u[:, keep] * np.sqrt(lam[keep])


def first_order_dual(lmi: LipschitzLMI, res: SchurResult, t: np.ndarray,
                     tolerances: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 3e-2, 0.1),
                     penalties: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)) -> float:
    """The best repaired dual built from the null vectors ``res.zs`` at the multipliers ``t``.

    At the optimum of ``rho*(t)`` the dual matrix lives on the top eigenspace of the Schur
    complement: ``Z = Z_k S Z_k^T`` with ``Z_k`` the vectors ``z = (u, -N_hh^{-1} N_hx u)`` of the
    top eigenvalues (orthonormal ``u``, so ``trace Z_xx = trace S``), ``S >= 0``, ``trace S = 1``,
    and ``t_i <F_i, Z> = 0`` for every neuron (the optimality condition in ``log t``; neurons with
    ``t_i -> 0`` only need ``<F_i, Z> <= 0``, which the repair provides). Away from the optimum the
    top eigenvalues are not equal, so ``S`` is chosen two ways (:func:`_dual_subproblem`): on the
    eigenvalues within each relative tolerance of the largest, the least violation
    ``sum_i t_i^2 <F_i, Z>^2``; on all of them, the proximal bundle trade-off
    ``<diag(lams), S> - sum_i t_i^2 <F_i, Z>^2 / (2 c lams_0)`` for each ``c`` in ``penalties``.
    Each candidate is repaired and gives a bound; the largest is returned."""
    zs, lams = res.zs, res.lams
    h = _sector_forms(lmi, zs) * t[:, None, None]
    candidates = [(int(np.sum(lams >= lams[0] - tol * abs(lams[0]))), None) for tol in tolerances]
    candidates += [(lams.size, 1.0 / (c * abs(lams[0]))) for c in penalties]
    best = 0.0
    for k, weight in dict.fromkeys(candidates):
        s = _dual_subproblem(h[:, :k, :k], lams[:k], weight) if k > 1 else np.ones((1, 1))
        lam, u = np.linalg.eigh(s)
        best = max(best, repaired_dual(lmi, zs[:, :k] @ (u * np.sqrt(np.maximum(lam, 0.0)))))
    return best


def _sector_forms(lmi: LipschitzLMI, zs: np.ndarray) -> np.ndarray:
    """``H[i, a, b] = z_a^T F_i z_b`` for every neuron ``i`` and columns ``a, b`` of ``zs``:
    ``2 a b p_a p_b - (a + b)(p_a q_b + q_a p_b) + 2 q_a q_b`` (``p``: pre-activation, ``q``: output)."""
    forms = []
    for p, q, blk in lmi.block_parts(zs):
        ab, cc = (v[:, None, None] for v in blk.sector())
        pq = p[:, :, None] * q[:, None, :]
        forms.append(2 * ab * p[:, :, None] * p[:, None, :] - cc * (pq + pq.transpose(0, 2, 1))
                     + 2 * q[:, :, None] * q[:, None, :])
    return np.concatenate(forms)


def _dual_subproblem(h: np.ndarray, lams: np.ndarray, weight: float | None, iterations: int = 300) -> np.ndarray:
    """Over ``{S >= 0, trace S = 1}``, maximise ``<diag(lams), S> - weight sum_i <H_i, S>^2 / 2``, or
    (``weight=None``) minimise ``sum_i <H_i, S>^2``, by accelerated projected gradient (the
    projection: eigenvalues onto the simplex). Any point of the set gives a valid candidate; the
    iteration count only sets how good it is."""
    k = h.shape[1]
    flat = h.reshape(h.shape[0], -1)
    quad = flat.T @ flat * (1.0 if weight is None else weight)
    linear = np.zeros((k, k)) if weight is None else np.diag(lams)
    step = 1.0 / max(float(np.linalg.eigvalsh(quad)[-1]), 1e-300)
    s = y = np.eye(k) / k
    momentum = 1.0
    for _ in range(iterations):
        grad = (quad @ y.reshape(-1)).reshape(k, k) - linear
        s_new = _project_spectraplex(y - step * grad)
        m_new = 0.5 * (1 + math.sqrt(1 + 4 * momentum ** 2))
        y = s_new + (momentum - 1) / m_new * (s_new - s)
        s, momentum = s_new, m_new
    return s


def _project_spectraplex(a: np.ndarray) -> np.ndarray:
    """Euclidean projection of a symmetric matrix onto ``{S >= 0, trace S = 1}``."""
    lam, u = np.linalg.eigh(0.5 * (a + a.T))
    mu = np.sort(lam)[::-1]
    cum = np.cumsum(mu) - 1.0
    idx = np.arange(1, lam.size + 1)
    r = int(np.nonzero(mu - cum / idx > 0)[0][-1])
    lam = np.maximum(lam - cum[r] / (r + 1), 0.0)
    return (u * lam) @ u.T


def gap(upper: float, lower: float) -> float:
    """Relative gap ``upper / lower - 1`` of two values of ``L`` (``inf`` when ``lower <= 0``)."""
    return upper / lower - 1.0 if lower > 0 else math.inf
