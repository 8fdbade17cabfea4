"""LipSDP's first-order solver (the eigenvalue form of the LMI, L-BFGS over log-multipliers) and
the small helpers its callers share: which rule stopped a solver, peak memory, the variant's
per-neuron multipliers. :mod:`lipbound.methods.lipsdp` (assembled LMIs, chains) and
:mod:`lipbound.methods.lipsdp_conv` (CNN chains too large to assemble) both run it."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from ..errors import NotApplicable
from .eclipse import fast_multipliers
from .lipsdp_chain import chain_schur
from .lipsdp_dual import first_order_dual
from .lmi import LipschitzLMI

__all__ = ["solve_first_order", "stopped_by", "rss_mb", "expand"]


def stopped_by(status: str) -> str:
    """The session's convention for what ended a solver: ``"time"`` (the budget cut it short),
    ``"iterations"`` (its iteration cap) or ``"converged"``."""
    if status == "time limit":
        return "time"
    return "iterations" if status == "iteration limit" else "converged"


def rss_mb() -> float | None:
    """Peak resident memory of the process so far, in MB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def expand(lmi: LipschitzLMI, u: np.ndarray, variant: str) -> np.ndarray:
    """Per-neuron multipliers from the variant's free ones."""
    if variant == "neuron":
        return np.asarray(u, dtype=np.float64)
    return np.concatenate([np.full(b.size, ui) for b, ui in zip(lmi.blocks[1:], u)])


def solve_first_order(lmi: LipschitzLMI, *, variant: str = "neuron", time_budget: float = 300.0,
                      max_iter: int = 3000, t0: np.ndarray | None = None, top: int = 16,
                      smoothing: tuple[float, ...] = (1e-2, 1e-3, 1e-4, 0.0),
                      schur: Callable | None = None, dual: bool = True) -> tuple[np.ndarray, float, dict]:
    """Minimise ``rho*(t)`` (the eigenvalue form, module docstring) by L-BFGS over ``s = log t``
    from the closed-form multipliers. ``rho*`` is not differentiable where its top eigenvalue is
    multiple, so it is first replaced by a soft maximum of the ``top`` largest eigenvalues with
    temperature ``mu = smoothing[k] * rho*(t0)`` (an upper bound within ``mu log(top)``),
    decreasing to 0 (the exact ``rho*``). ``schur`` replaces the evaluation of ``rho*`` (same
    contract as :meth:`~lipbound.methods.lmi.LipschitzLMI.schur`; default: the chain elimination
    for chains, the assembled LMI otherwise). ``dual``: also compute ``info["dual_rho"]`` (the
    diagnostic lower bound of the SDP's optimum; 0 without it). Returns ``(t, rho*(t), info)``."""
    if t0 is None:
        t0, _ = fast_multipliers(lmi)
    slices = lmi.neuron_slices
    if variant == "layer":
        s0 = np.log(np.array([max(float(t0[sl].mean()), 1e-300) for sl in slices]))
    else:
        s0 = np.log(np.maximum(t0, 1e-300))
    deadline = time.perf_counter() + time_budget
    schur = schur or (partial(chain_schur, lmi) if lmi.is_chain() else lmi.schur)
    last = [0.0]  # seconds of the latest evaluation
    evals = [0]
    mu = [0.0]

    def fun(s: np.ndarray) -> tuple[float, np.ndarray | None]:
        evals[0] += 1
        started = time.perf_counter()
        t = expand(lmi, np.exp(s), variant)
        res = schur(t, gradient=True, top=top if mu[0] > 0 else 1)
        last[0] = time.perf_counter() - started
        if not (math.isfinite(res.rho) and res.rho > 0):
            return math.inf, None
        if mu[0] > 0:  # soft maximum of the top eigenvalues: lam_1 <= f <= lam_1 + mu log(top)
            w = np.exp((res.lams - res.lams[0]) / mu[0])
            f = res.lams[0] + mu[0] * math.log(w.sum())
            g = res.grads @ (w / w.sum())
        else:
            f, g = res.rho, res.grad
        g = g * t / f  # gradient of log f in log t
        if variant == "layer":
            g = np.array([g[sl].sum() for sl in slices])
        return math.log(f), g

    s, iters, status = s0, 0, "converged"
    started = time.perf_counter()
    rho0 = schur(expand(lmi, np.exp(s0), variant)).rho
    one = time.perf_counter() - started  # seconds of a plain evaluation
    solve_by = deadline - 2 * one  # the final evaluation (with gradients and its dual) must fit too
    for mu_rel in smoothing:
        mu[0] = mu_rel * rho0
        if time.perf_counter() + max(one, last[0]) > solve_by:  # not even one more evaluation fits
            status = "time limit"
            break
        s, _, status, it = _lbfgs(fun, s, max_iter=max_iter - iters, deadline=solve_by, rtol=1e-6 if mu_rel else 1e-8,
                                  last=last)
        iters += it
        if status == "time limit" or iters >= max_iter:
            break
    t = expand(lmi, np.exp(s), variant)
    final = schur(t, gradient=True, top=top)
    return t, final.rho, {"solver_status": status, "iterations": iters, "evaluations": evals[0],
                          "smoothing": list(smoothing), "dual_rho": first_order_dual(lmi, final, t) if dual else 0.0}


def _lbfgs(fun, x0: np.ndarray, *, max_iter: int, deadline: float, memory: int = 20,
           rtol: float = 1e-8, window: int = 25, last: list[float] | None = None) -> tuple[np.ndarray, float, str, int]:
    """L-BFGS with Armijo backtracking for a function that is ``inf`` outside its domain: an
    infeasible or non-decreasing trial point halves the step. Stops when ``window`` iterations
    improve ``f`` by less than ``rtol`` (absolute, ``f`` is a log), at ``max_iter`` or at the
    deadline: an evaluation starts only if one more (``last[0]``, the latest one's seconds, which
    ``fun`` records) fits before it, and the best point so far is returned."""
    last = last if last is not None else [0.0]
    x = x0.copy()
    f, g = fun(x)
    if not math.isfinite(f):
        raise NotApplicable("the first-order LipSDP solver needs a feasible start")
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    history = [f]
    for it in range(1, max_iter + 1):
        d = -g
        if pairs:  # two-loop recursion
            q = g.copy()
            alphas = []
            for s_k, y_k, r_k in reversed(pairs):
                a = r_k * (s_k @ q)
                alphas.append(a)
                q -= a * y_k
            s_k, y_k, _ = pairs[-1]
            q *= (s_k @ y_k) / (y_k @ y_k)
            for (s_k, y_k, r_k), a in zip(pairs, reversed(alphas)):
                q += (a - r_k * (y_k @ q)) * s_k
            d = -q
        slope = float(g @ d)
        if slope >= 0:
            pairs.clear()
            d, slope = -g, -float(g @ g)
        step = 1.0 if pairs else min(1.0, 0.1 / max(float(np.abs(g).max()), 1e-300))
        accepted = False
        while not accepted:
            if time.perf_counter() + last[0] > deadline:
                return x, f, "time limit", it - 1
            x_new = x + step * d
            f_new, g_new = fun(x_new)
            accepted = math.isfinite(f_new) and f_new <= f + 1e-4 * step * slope
            step *= 0.5
            if not accepted and step * float(np.abs(d).max()) < 1e-12:
                break
        if not accepted:  # no decrease along d: retry along -g, or stop if that was -g
            if not pairs:
                return x, f, "converged (line search stalled)", it
            pairs.clear()
            continue
        s_k, y_k = x_new - x, g_new - g
        sy = float(s_k @ y_k)
        if sy > 1e-12 * float(np.linalg.norm(s_k) * np.linalg.norm(y_k)):
            pairs.append((s_k, y_k, 1.0 / sy))
            if len(pairs) > memory:
                pairs.pop(0)
        x, f, g = x_new, f_new, g_new
        history.append(f)
        if len(history) > window and history[-window - 1] - f < rtol:
            return x, f, "converged", it
        if time.perf_counter() > deadline:
            return x, f, "time limit", it
    return x, f, "iteration limit", max_iter
