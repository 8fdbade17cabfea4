"""Hill climbing over adjacent linear regions of a piecewise-linear network (used by ``lower``).

At a point ``x`` with top singular triplet ``(sigma, u, v)`` of the Jacobian ``J``, flipping one
two-slope neuron ``k`` (slope ``d_k -> d_k'``) changes ``J`` by a rank-one term, and
``u^T J' v = sigma + (d_k' - d_k) g_k h_k`` exactly, with ``h_k`` the derivative of the neuron's
pre-activation along ``v`` and ``g_k`` the derivative of ``u^T f`` with respect to the neuron's
output. Since ``||J'|| >= u^T J' v``, every neuron with a positive **gain**
``(d_k' - d_k) g_k h_k`` gives a neighbouring region with a larger norm. The walk moves each point
just across the boundary of its best-gain neurons (the Newton step ``x - (1 + eta) z_k(x)
grad z_k / ||grad z_k||^2`` on the neuron's locally affine pre-activation ``z_k``), measures the
true norm there, keeps the best move, and repeats: the explicit counterpart of the smoothed ascent.
That step may cross other neurons' boundaries first, so the point just past the *first* boundary on
the way (found from the pre-activations' directional derivatives) is
tried as well: it lies in a region adjacent to the current one. Directional derivatives come
from double backward (:func:`~lipbound.methods.jacobian.tangents`), which every operation supports.
Every value it reports is a measured ``||J(x') v'||``, so nothing here needs to be trusted; its
points may still sit on a kink or a box face, which ``lower``'s validity check handles.
"""

from __future__ import annotations

import torch

from ..graph.ir import Graph
from .lower_clock import Loop
from .jacobian import power, recording, tangents, unit
from .region import Region

__all__ = ["walk"]

_ETA = 1e-3  # relative overshoot past the boundary
_PARTS = 16  # batches per round when there is a clock


def walk(g: Graph, slopes: dict[str, tuple[float, float]], x: torch.Tensor, v: torch.Tensor, box: Region | None,
         *, candidates: int = 8, rounds: int = 30, loop: Loop | None = None,
         power_steps: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Walk every point of the batch ``x`` (module doc) for at most ``rounds`` rounds (fewer when
    a round moves no point); returns ``(x, v, sigma)`` improved or unchanged per point. ``slopes``
    maps the two-slope activation nodes to ``(a, b)``. With a ``loop`` (the wall clock's pacing,
    an outer cap) the points are walked in :data:`_PARTS` fixed batches (the same ones every run:
    the float64 results do not depend on the timing), and the walk stops before a batch that
    ``loop`` refuses (each batch priced at the duration of the one before)."""
    names = list(slopes)
    sigma, v = power(g.forward, x, v, power_steps)
    if not names:
        return x, v, sigma
    store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    rec = recording(g, names, store)
    x, v = x.clone(), v.clone()
    size = len(x) if loop is None else -(-len(x) // _PARTS)  # points per batch
    batches = -(-len(x) // size)
    for _ in range(rounds):
        improved, done = False, 0
        for b in range(batches) if loop is None else loop.steps(batches):
            part = slice(b * size, (b + 1) * size)
            x[part], v[part], sigma[part], better = _step(g, rec, store, names, slopes, x[part], v[part],
                                                          sigma[part], box, candidates, power_steps)
            improved |= bool(better.any())
            done += 1
        if done < batches:  # the clock refused a batch
            return x, v, sigma
        if not improved:
            break
    return x, v, sigma


def _step(g: Graph, rec: Graph, store, names, slopes, x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor,
          box: Region | None, candidates: int, power_steps: int):
    """One move of every point of the batch: ``(x, v, sigma, better)``, ``better`` marking the
    points that moved."""
    gain, z = _gains(rec, store, names, slopes, x, v)
    k = min(candidates, gain.shape[1])
    idx = gain.topk(k, dim=1).indices  # the most promising flips first (measured, not trusted)
    moved = _cross(rec, store, names, z, x, idx, box)  # (2, B, k) moves, flattened
    s_new, v_new = power(g.forward, moved, v.repeat_interleave(k, 0).repeat(2, *([1] * (v.dim() - 1))),
                         power_steps)
    s_new = s_new.reshape(2, len(x), k).permute(1, 0, 2).reshape(len(x), 2 * k)
    best, j = s_new.max(dim=1)
    better = best > sigma * (1 + 1e-12)
    pick = (j // k) * (len(x) * k) + torch.arange(len(x), device=x.device) * k + j % k
    x = torch.where(_expand(better, x), moved[pick], x)
    v = torch.where(_expand(better, v), v_new[pick], v)
    return x, v, torch.where(better, best, sigma), better


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _gains(rec: Graph, store, names, slopes, x, v) -> tuple[torch.Tensor, torch.Tensor]:
    """Gains of flipping each neuron ``(B, N)`` and the pre-activations ``(B, N)``, neurons of all
    nodes flattened in the order of ``names``."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = rec.forward(xg)
        zs = [store[n][0] for n in names]
        ys = [store[n][1] for n in names]
        jv, *h = tangents([out, *zs], xg, v)
        gs = torch.autograd.grad(out, ys, grad_outputs=unit(jv.detach()), allow_unused=True)
    parts, z = [], [t.detach().flatten(1) for t in zs]
    for n, hn, gn, zn in zip(names, h, gs, z):
        a, b = slopes[n]
        change = torch.where(zn > 0, a - b, b - a)  # d' - d for a flip
        gn = torch.zeros_like(zn) if gn is None else gn.flatten(1)
        parts.append(change * gn * hn.detach().flatten(1))
    return torch.cat(parts, 1), torch.cat(z, 1)


def _cross(rec: Graph, store, names, z: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
           box: Region | None) -> torch.Tensor:
    """For each point and each chosen neuron ``k``: the point just past the first boundary met
    on the way to ``k``'s hyperplane (an adjacent region), then the point just past ``k``'s
    hyperplane itself; batch ``(2 * B * k, ...)``, each half point-major."""
    k = idx.shape[1]
    xr = x.repeat_interleave(k, 0)
    flat = idx.reshape(-1)
    with torch.enable_grad():
        xg = xr.detach().requires_grad_(True)
        rec.forward(xg)
        zs = [store[n][0] for n in names]
        sizes = [t[0].numel() for t in zs]
        onehots, start = [], 0
        for t, size in zip(zs, sizes):
            oh = torch.zeros((len(flat), size), dtype=t.dtype, device=t.device)
            inside = (flat >= start) & (flat < start + size)
            oh[inside.nonzero().squeeze(1), (flat - start)[inside]] = 1.0
            onehots.append(oh.reshape(t.shape))
            start += size
        (grad,) = torch.autograd.grad(zs, xg, grad_outputs=onehots, allow_unused=False)
    zr = z.repeat_interleave(k, 0)
    zk = zr.gather(1, flat.unsqueeze(1)).squeeze(1)
    shape = (-1, *([1] * (x.dim() - 1)))
    sq = grad.flatten(1).pow(2).sum(1).clamp_min(torch.finfo(grad.dtype).tiny)
    direction = -(zk / sq).reshape(shape) * grad  # Newton step onto neuron k's hyperplane
    # the first boundary met along that direction (pre-activations are affine until then)
    with torch.enable_grad():
        xg = xr.detach().requires_grad_(True)
        rec.forward(xg)
        dz = torch.cat([t.detach().flatten(1) for t in tangents([store[n][0] for n in names], xg, direction)], 1)
    alpha = torch.where(zr * dz < 0, -zr / dz, torch.full_like(zr, float("inf"))).min(dim=1).values
    alpha = torch.nan_to_num(alpha.clamp(max=1.0), nan=1.0)
    near = xr + ((1 + _ETA) * alpha).reshape(shape) * direction  # the adjacent region
    far = xr + (1 + _ETA) * direction  # across neuron k's hyperplane, maybe past others
    moved = torch.cat([near, far])
    return moved if box is None else box.project(moved)

