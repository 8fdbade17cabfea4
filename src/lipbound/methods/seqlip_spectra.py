"""Spectral factors of one layer for SeqLip (:mod:`~lipbound.methods.seqlip`): the dense float64
SVD of a materialised layer (certified up to rounding), or the top-``k`` singular triplets of a
block power method (for ``"seqlip-topk"``, an estimate). Both are cached per operator, so the
methods run on one graph share them."""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..linalg.operators import LinearOperator
from ..linalg.spectral import power_method
from .seqlip_pair import SMALL, _few_threads

__all__ = ["SVD_LIMIT", "SVD_FLOPS", "TopK"]

SVD_LIMIT = 1 << 25  # materialise a layer (float64) for an exact SVD when in * out <= this
SVD_FLOPS = 3e10  # ... and in * out * min(in, out) <= this (seconds on a laptop core, not minutes)

# spectral factors per operator, shared by the methods run on one graph (an operator moved to
# another device or dtype is a new object, with no entry here)
_SVD_CACHE: "weakref.WeakKeyDictionary[LinearOperator, dict]" = weakref.WeakKeyDictionary()


# ---- spectral factors of one layer ---------------------------------------------------------

@dataclass
class _Factors:
    """``M ~= U diag(s) V^T`` (``U``: ``(out, r)``, ``V``: ``(in, r)``), float64: the full thin
    SVD (``full=True``) or the top-``r`` triplets of a power method; ``stopped_by``: what ended
    the power method (:mod:`~lipbound.methods.budget`; ``"converged"`` for an SVD)."""

    U: torch.Tensor
    s: torch.Tensor
    V: torch.Tensor
    full: bool
    how: str
    stopped_by: str = "converged"


def _dense_svd(op: LinearOperator, svd_limit: int) -> _Factors | None:
    """Thin SVD of the materialised matrix (cached on the operator); None when too large."""
    cache = _SVD_CACHE.setdefault(op, {})
    if "dense" in cache:
        return cache["dense"]
    size = op.in_numel * op.out_numel
    if size > svd_limit or size * min(op.in_numel, op.out_numel) > SVD_FLOPS:
        return None
    with _few_threads(op.in_numel * op.out_numel <= 1 << 22 and op.device.type == "cpu"):
        m = op.to(dtype=torch.float64).to_dense().reshape(op.out_numel, op.in_numel)
        U, s, Vh = torch.linalg.svd(m, full_matrices=False)
    f = _Factors(U, s, Vh.T, True, "SVD of the materialised matrix (float64)")
    cache["dense"] = f
    return f


@dataclass(frozen=True)
class TopK:
    """Options of the top-``k`` spectra (``"seqlip-topk"``): ``k`` triplets from a block power
    method on ``k + oversample`` vectors, at most ``max_iter`` steps, stopped at relative change
    ``tol``, in ``dtype``; ``planned``: ``max_iter`` was lowered by the time budget's work plan
    (:mod:`~lipbound.methods.work_plan`), so running out of steps is a work cap (``"work"``)."""

    k: int
    max_iter: int
    tol: float
    oversample: int
    dtype: torch.dtype
    planned: bool = False


def _topk_svd(op: LinearOperator, opts: TopK, generator: torch.Generator, deadline: float = math.inf, *,
              progress: bool = False, label: str = "") -> _Factors:
    """Top-``k`` singular triplets by block power iteration on the operator (cached).

    ``V <- orth(A^T A V)`` on ``k + oversample`` vectors, one forward and one backward pass of
    the operator per step (:meth:`~lipbound.linalg.operators.LinearOperator.gram`); every 5 steps
    the Ritz values (square roots of the eigenvalues of ``(A V)(A V)^T``) are compared and the
    iteration stops when the top ``k`` change by less than ``tol`` (relative). The final
    Rayleigh-Ritz step is :func:`~lipbound.linalg.spectral.power_method` warm-started from ``V``.
    ``deadline`` is an outer cap: the iteration then stops where it is (the triplets are then not
    cached, and ``stopped_by`` is ``"time"``). ``progress``: a bar over the steps on stderr,
    named after ``label``.
    """
    cache = _SVD_CACHE.setdefault(op, {})
    key = ("topk", opts.k, opts.max_iter, opts.tol, opts.oversample, opts.dtype)
    if key in cache:
        return cache[key]
    with _few_threads(op.in_numel * min(opts.k + opts.oversample, op.in_numel) <= SMALL
                      and op.device.type == "cpu"):
        with tqdm(total=opts.max_iter, desc=f"top-{opts.k} spectrum of {label}", unit="step",
                  disable=not progress, leave=False) as bar:
            f, stopped = _block_power(op, opts, generator, deadline, bar)
    if not stopped:
        cache[key] = f
    return f


def _block_power(op: LinearOperator, opts: TopK, generator: torch.Generator, deadline: float,
                 bar: tqdm) -> tuple[_Factors, bool]:
    k, max_iter, tol = opts.k, opts.max_iter, opts.tol
    o = op.to(dtype=opts.dtype)
    n = o.in_numel
    block = min(k + opts.oversample, n)
    V = torch.randn((block, n), generator=generator, dtype=torch.float64).to(dtype=opts.dtype, device=o.device)
    V = torch.linalg.qr(V.T)[0].T
    prev, it, converged, stopped = None, 0, False, False
    for it in range(1, max_iter + 1):
        if time.perf_counter() >= deadline:
            stopped = True
            break
        y, z = o.gram(V.reshape(block, *o.in_shape))
        bar.update(1)
        if it % 5 == 0:
            y = y.reshape(block, -1)
            ritz = torch.linalg.eigvalsh(y @ y.T).flip(0)[:k].clamp_min(0).sqrt()
            if prev is not None and ((ritz - prev).abs() / ritz.clamp_min(1e-300)).max().item() <= tol:
                converged = True
                break
            prev = ritz
        V = torch.linalg.qr(z.reshape(block, -1).T)[0].T
    pm = power_method(o, k=block, max_iter=1, v0=V, generator=generator)  # Rayleigh-Ritz
    r = min(k, pm.sigmas.numel())
    U = pm.u[:r].reshape(r, -1).T.to(torch.float64)
    Vk = pm.v[:r].reshape(r, -1).T.to(torch.float64)
    ran_out = "work" if opts.planned else "iterations"
    f = _Factors(U, pm.sigmas[:r].to(torch.float64), Vk, False,
                 f"top {r} triplets, block power method ({it} iterations, "
                 f"{'converged' if converged else 'not converged'} to {tol:g}"
                 f"{', stopped by the time budget' if stopped else ''}"
                 f"{', steps planned within the time budget' if opts.planned else ''})",
                 "time" if stopped else "converged" if converged else ran_out)
    return f, stopped
