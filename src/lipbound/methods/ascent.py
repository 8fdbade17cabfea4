"""The batched searches of ``lower`` (DESIGN §6): smoothed ascent on the Jacobian norm, and pairs.

**Smoothed ascent.** The Jacobian of a ReLU network is constant on each linear region, so its norm
has no useful gradient. Every start follows instead the gradient of ``u^T J_tau(x) v`` (the top
singular value of a *smoothed* copy of the network, by the envelope theorem;
:func:`~lipbound.methods.piecewise.smoothed`: each ReLU/LeakyReLU replaced by a softplus of width
``tau`` relative to its pre-activations' scale). That gradient pushes each pre-activation towards
the side where its neuron raises the norm, weighted by how close the neuron is to its boundary.
``tau`` shrinks from coarse to sharp and the step from :data:`_STEP`'s first to last value over
``steps`` steps (the schedule depends on ``steps`` only, so the numbers depend on the seed only;
``lower`` sizes ``steps`` by a deterministic work cap). The wall clock is an outer cap
(:class:`~lipbound.methods.lower_clock.Loop`): it may stop the schedule before its end, and remembers
that it did; the first step is priced at twice the initial power iterations (it runs as many, plus a
double backward), each later one at the duration of the one before. The true network's norm
``||J(x) v||`` (power method, warm-started) is measured at every iterate and each start keeps its
best point. All starts move together: one batched forward and backward per power iteration and
one double backward for the gradient, whatever the number of starts.

**Pairs.** Adam ascent on ``log ||f(x)-f(y)|| - log ||x-y||`` from ``x -/+ delta v``.

Nothing computed here is trusted: ``lower`` re-checks every witness it returns.
"""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ..graph.ir import Activation, Graph
from .lower_clock import Loop
from .jacobian import Linearization, power, recording, unit
from .piecewise import smoothed, two_slope
from .region import Ball, Region
from .witness import pair_values

__all__ = ["Search"]

_TAU = (0.3, 0.003)  # smoothing width relative to the pre-activation scale: first and last step
_STEP = (0.5, 0.05)  # ascent step relative to the start's radius: first and last step (large: explores)


class Search:
    """The batched smoothed ascent and the pair search (module doc) on one graph."""

    def __init__(self, g: Graph, region: Region | None, power_steps: int, gen: torch.Generator) -> None:
        self.g, self.region, self.power_steps, self.gen = g, region, power_steps, gen
        slopes = {n.name: two_slope(n) for n in g if isinstance(n, Activation)}
        self.slopes = {k: ab for k, ab in slopes.items() if ab is not None}
        self.pwl = list(self.slopes)
        self.tau: dict[str, float] = {}
        self.steps_done = 0

    def _preactivation_scales(self, x: torch.Tensor) -> dict[str, float]:
        store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with torch.no_grad():
            recording(self.g, self.pwl, store).forward(x)
        return {k: float(store[k][0].pow(2).mean().sqrt().clamp_min(1e-12)) for k in self.pwl}

    def _radius(self, x: torch.Tensor) -> torch.Tensor:
        if self.region is not None:
            r = 2 * self.region.radius if isinstance(self.region, Ball) and self.region.norm == 2 else \
                (self.region.high - self.region.low).norm().item()
            return torch.full((x.shape[0],), r, dtype=x.dtype, device=x.device)
        return x.flatten(1).norm(dim=1).clamp_min(1e-3 * math.sqrt(x[0].numel()))

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.region is None else self.region.project(x)

    def ascend(self, x: torch.Tensor, steps: int, loop: Loop,
               progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Best point, its right singular vector and (power-method) norm, for each start, after
        ``steps`` steps (fewer when ``loop`` refuses one; the starts themselves when it refuses the first)."""
        t0 = time.perf_counter()
        scale = self._preactivation_scales(x)
        radius = self._radius(x).reshape(-1, *([1] * (x.dim() - 1)))
        v = unit(torch.randn(x.shape, generator=self.gen, dtype=torch.float64).to(x))
        v_s = v.clone()
        sigma, v = power(self.g.forward, x, v, 2 * self.power_steps)
        loop.expect(2 * (time.perf_counter() - t0))
        best_x, best_v, best_sigma = x.clone(), v.clone(), sigma.clone()
        bar = tqdm(total=steps, desc="lower bound", unit="step", disable=not progress, leave=False)
        for k in loop.steps(steps):
            frac = k / max(1, steps - 1)
            if self.pwl:
                rel = _TAU[0] * (_TAU[1] / _TAU[0]) ** frac
                self.tau = {n: rel * s for n, s in scale.items()}
                fs = smoothed(self.g, self.tau, self.slopes).forward
            else:
                fs = self.g.forward
            _, v_s = power(fs, x, v_s, self.power_steps)
            grad = self._gradient(fs, x, v_s)
            step = _STEP[0] * (_STEP[1] / _STEP[0]) ** frac
            x = self._project(x + step * radius * unit(grad))
            sigma, v = power(self.g.forward, x, v, self.power_steps)
            better = sigma > best_sigma
            best_x[better], best_v[better], best_sigma[better] = x[better], v[better], sigma[better]
            self.steps_done += 1
            bar.update()
            if progress:
                bar.set_postfix_str(f"best {best_sigma.max().item():.6g}")
        bar.close()
        return best_x, best_v, best_sigma

    @staticmethod
    def _gradient(fs, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Gradient in ``x`` of ``u^T J(x) v`` (``u = J v / ||J v||``), per batch element:
        the derivative of the top singular value when ``v`` is the top right singular vector."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            y = fs(xg)
            u = unit(Linearization(fs, x).jvp(v).detach())
            (jtu,) = torch.autograd.grad(y, xg, grad_outputs=u, create_graph=True)
            if not jtu.requires_grad:  # this Jacobian does not depend on x
                return torch.zeros_like(x)
            (g,) = torch.autograd.grad((jtu * v).sum(), xg, allow_unused=True)
        return torch.zeros_like(x) if g is None else g

    def pairs(self, x: torch.Tensor, v: torch.Tensor, steps: int, loop: Loop) -> tuple[torch.Tensor, torch.Tensor]:
        """Best pair of each start after ``steps`` Adam steps on ``log ||f(x)-f(y)|| - log ||x-y||``
        (fewer when ``loop`` refuses one; the starting pairs when it refuses the first), starting from
        ``y = x + delta v`` with several ``delta``."""
        g = self.g
        deltas = torch.tensor([1e-3, 1e-2, 1e-1, 0.3], dtype=g.dtype, device=g.device)
        x = x.to(g.dtype)
        v = v.to(g.dtype)
        radius = self._radius(x).reshape(-1, *([1] * (x.dim() - 1)))
        ones = [1] * (x.dim() - 1)
        xs = x.repeat(len(deltas), *ones)
        dv = deltas.repeat_interleave(len(x)).reshape(-1, *ones) * radius.repeat(len(deltas), *ones) * v.repeat(
            len(deltas), *ones)
        ys = self._project(xs + dv)
        xs = self._project(xs - dv)
        min_dist = 1e-6 * (1 + xs.flatten(1).norm(dim=1))
        px, py = xs.clone().requires_grad_(True), ys.clone().requires_grad_(True)
        lr = 1e-3 * float(radius.mean()) / math.sqrt(x[0].numel())
        opt = _Adam([px, py], lr=lr)
        best = torch.full((len(xs),), -1.0, dtype=g.dtype, device=g.device)
        best_x, best_y = xs.clone(), ys.clone()
        for _ in loop.steps(steps):
            with torch.enable_grad():
                ratio = pair_values(g.forward, px, py)
                opt.zero_grad()
                (-torch.log(ratio.clamp_min(torch.finfo(ratio.dtype).tiny))).sum().backward()
            with torch.no_grad():
                ok = ((px - py).flatten(1).norm(dim=1) > min_dist) & torch.isfinite(ratio)
                better = ok & (ratio > best)
                best[better] = ratio[better]
                best_x[better], best_y[better] = px[better].detach(), py[better].detach()
                opt.step()
                px.copy_(self._project(px))
                py.copy_(self._project(py))
        return best_x, best_y


class _Adam:
    """Adam (Kingma & Ba 2015; the defaults of ``torch.optim.Adam``) on a few tensors, without
    ``torch.optim``, whose first use imports ``torch._dynamo`` (seconds on a CPU)."""

    def __init__(self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.betas, self.eps, self.k = params, lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.k += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v / (1 - b2 ** self.k)).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.k))
