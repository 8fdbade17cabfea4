"""A differentiable Lipschitz bound for training (issue: training with Lipschitz control).

:func:`regularizer` returns a :class:`LipschitzRegularizer`, an ``nn.Module`` whose call gives a
differentiable scalar: ``log L_AL(theta)``, the log of the AutoLip bound (DESIGN §4) of the model
with its *current* parameters, or the hinge ``relu(log L_AL - log L_target)`` when a target is
set. Add it to the loss: ``loss = task_loss + lam * reg()``.

How it stays cheap per step, after ``torch.nn.utils.parametrizations.spectral_norm``:

* The model is traced once (:func:`lipbound.frontends.from_torch`); the graph gives the topology,
  the activations' slopes, the max-pool factors, and the chains of consecutive affine layers.
  Each chain becomes one linear map ``A_theta`` evaluated with the user's **live** parameters
  (``F.linear``/convolution with the module's weight, BatchNorm as ``gamma / sqrt(var + eps)``
  from its running statistics, whatever mode the model is in), at the layer's real input size.
* Each chain keeps a persistent unit vector ``v`` (a buffer). A call runs ``n_power_iterations``
  power steps ``v <- A^T A v / ||A^T A v||`` without gradient (warm start: a few steps suffice
  when the weights move a little), then ``sigma = ||A_theta v||`` *with* gradient. At a converged
  ``v`` this is the top singular value and its gradient ``u v^T`` (for a dense layer) is the
  gradient of ``||A||_2``.
* AutoLip's rule (:class:`~lipbound.methods.autolip.AutoLipRule`, the one AutoLip itself runs)
  then combines the ``sigma`` over the fused graph (products along the graph, sums at residual
  additions, root-sum-of-squares at concatenations), all differentiable.

The value is an **estimate** (power-method norms; a lower estimate of each layer's norm), as in
the paper; certify the trained model afterwards with :func:`certify_training` (or
:func:`lipbound.estimate`), which computes certified bounds from scratch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .api import estimate
from .errors import InvalidInput
from .frontends import from_torch
from .graph.ir import Affine, Graph
from .methods.autolip import AutoLipRule
from .report import Report

LinearMap = Callable[[torch.Tensor], torch.Tensor]


def _live_map(node: Affine, modules: dict[str, nn.Module]) -> LinearMap:
    """The linear part of ``node`` computed from the user's live parameters (static otherwise)."""
    m = modules.get(node.origin)
    if isinstance(m, nn.Linear):
        return lambda x: F.linear(x, m.weight)
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda x: m._conv_forward(x, m.weight, None)  # applies non-zero padding modes too
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[m.weight.dim() - 3]
        return lambda x: fn(x, m.weight, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
        def bn(x: torch.Tensor) -> torch.Tensor:
            scale = torch.rsqrt(m.running_var + m.eps)
            if m.weight is not None:
                scale = scale * m.weight
            return x * scale.reshape(-1, *([1] * (x.dim() - 2)))
        return bn
    if m is not None and any(p.requires_grad for p in m.parameters()):
        raise InvalidInput(f"the regulariser has no differentiable form for {type(m).__name__} at '{node.origin}'")
    return node.op.matvec  # parameter-free (pooling, padding, reshape) or a constant


class _Chain(nn.Module):
    """A maximal chain of affine nodes, its live linear map and its persistent power vector."""

    def __init__(self, maps: Sequence[LinearMap], in_shape: tuple[int, ...], seed: int, like: torch.Tensor) -> None:
        super().__init__()
        self.maps = list(maps)
        g = torch.Generator().manual_seed(seed)
        v = torch.randn((1, *in_shape), generator=g, dtype=torch.float64).to(like)
        self.register_buffer("v", v / v.norm())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.maps:
            x = f(x)
        return x

    def sigma(self, n_iter: int, update: bool) -> torch.Tensor:
        v = self.v
        if update and n_iter > 0:
            with torch.enable_grad():
                for _ in range(n_iter):
                    x = v.detach().requires_grad_(True)
                    y = self.apply(x)
                    (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
                    v = g / g.norm().clamp_min(1e-30)
            self.v.copy_(v.detach())
        return self.apply(self.v).norm()


class LipschitzRegularizer(nn.Module):
    """Differentiable AutoLip estimate of a model (see the module docstring).

    Call it with no argument: ``reg()`` returns ``log L`` (or the hinge above ``log target``).
    ``reg.bound()`` returns ``L`` itself (a tensor, differentiable).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], *, target: float | None = None,
                 n_power_iterations: int = 1, warmup_iterations: int = 50, seed: int = 0) -> None:
        super().__init__()
        if target is not None and not target > 0:
            raise InvalidInput(f"target must be a positive number, got {target!r}")
        if n_power_iterations < 0:
            raise InvalidInput(f"n_power_iterations must be >= 0, got {n_power_iterations}")
        self.target = target
        self.n_power_iterations = n_power_iterations
        graph: Graph = from_torch(model, input_shape)
        self._fused = graph.fused()
        modules = dict(model.named_modules())
        param = next(model.parameters(), torch.empty(0))
        self.chains = nn.ModuleDict()  # c0, c1, ...: the fused affine nodes, by the position of their last layer
        self._chain_of: dict[str, str] = {}  # fused affine node -> its key in self.chains
        for node, nodes in _fused_chains(graph, self._fused).items():
            self._chain_of[node] = key = f"c{len(self.chains)}"
            self.chains[key] = _Chain([_live_map(n, modules) for n in nodes], nodes[0].op.in_shape,
                                      seed + len(self.chains), param)
        _check_covered(model, graph.affine_nodes(), modules)
        self.refresh(warmup_iterations)

    @torch.no_grad()
    def refresh(self, n_iter: int) -> None:
        """Run ``n_iter`` power steps on every chain (e.g. after loading new weights)."""
        for chain in self.chains.values():
            chain.sigma(n_iter, update=True)

    def bound(self, update: bool = True) -> torch.Tensor:
        """The AutoLip estimate ``L`` with the current parameters (differentiable)."""
        rule = AutoLipRule(lambda node: self.chains[self._chain_of[node.name]].sigma(self.n_power_iterations, update))
        out = rule.output(self._fused)
        return out if isinstance(out, torch.Tensor) else torch.tensor(float(out))

    def forward(self, update: bool = True) -> torch.Tensor:
        log_l = torch.log(self.bound(update))
        if self.target is None:
            return log_l
        return F.relu(log_l - math.log(self.target))


def _check_covered(model: nn.Module, affine: list[Affine], modules: dict[str, nn.Module]) -> None:
    """Every trainable weight that shapes the constant must be read live; biases do not matter."""
    live = {id(modules[n.origin].weight) for n in affine if n.origin in modules
            and isinstance(getattr(modules[n.origin], "weight", None), torch.Tensor)}
    missed = [name for name, p in model.named_parameters()
              if p.requires_grad and id(p) not in live and not name.rsplit(".", 1)[-1].startswith("bias")]
    if missed:
        raise InvalidInput(f"the regulariser cannot follow the parameters {missed}: only the weights of Linear, "
                           "convolution and BatchNorm modules are differentiated (functional weights, PReLU slopes "
                           "and the like would be frozen at their traced values)")


def _fused_chains(graph: Graph, fused: Graph) -> dict[str, list[Affine]]:
    """The affine nodes of ``graph`` that each affine node of ``fused`` (:meth:`Graph.fused`) merges,
    in order, ordered by the position of their last node: a fused node keeps its first node's
    name, and a node that is not in ``fused`` was merged into the chain of the affine node it reads."""
    chains: dict[str, list[Affine]] = {}
    head: dict[str, str] = {}  # affine node of graph -> the fused node it belongs to
    for node in graph.affine_nodes():
        head[node.name] = node.name if node.name in fused.nodes else head[node.inputs[0]]
        chains.setdefault(head[node.name], []).append(node)
    position = {name: i for i, name in enumerate(graph.nodes)}
    return dict(sorted(chains.items(), key=lambda item: position[item[1][-1].name]))


def regularizer(model: nn.Module, input_shape: Sequence[int], method: str = "autolip", *,
                target: float | None = None, n_power_iterations: int = 1, seed: int = 0) -> LipschitzRegularizer:
    """A differentiable Lipschitz penalty for ``model`` (see :class:`LipschitzRegularizer`).

    Args:
        model: the ``nn.Module`` being trained (its live parameters are used at every call).
        input_shape: input shape without batch axis.
        method: ``"autolip"`` (the only one so far).
        target: penalise only the excess ``relu(log L - log target)``.
        n_power_iterations: power steps per call (1 is usually enough, as in spectral normalisation).
        seed: seed of the start vectors.
    """
    if method != "autolip":
        raise InvalidInput(f"unknown regulariser method {method!r}; choose from 'autolip'")
    return LipschitzRegularizer(model, input_shape, target=target, n_power_iterations=n_power_iterations, seed=seed)


def certify_training(model: nn.Module, input_shape: Sequence[int], methods: Sequence[str] | None = None,
                     **options) -> Report:
    """After training: the certified bracket of ``model`` from scratch (``lipbound.estimate``)."""
    kwargs = {"progress": False, **options}
    if methods is not None:
        kwargs["methods"] = methods
    return estimate(model, input_shape, **kwargs)
