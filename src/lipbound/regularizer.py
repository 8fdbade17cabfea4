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

Its limits (:mod:`lipbound.regularizer_watch`, each warned about once per regulariser at run time):

* The value is an **estimate** (power-method norms; a lower estimate of each layer's norm), as in
  the paper, and it lags the weights: with one power step per call it reads below the certified
  AutoLip bound (7.79 against 11.63 after 40 epochs of the digits CNN of
  ``examples/train_regularized.py`` at ``lam=0.2``: the layers' norms moved faster than the
  vectors followed them). ``certified_every=N`` certifies the live model every N calls
  (certified AutoLip, and a small witnessed lower bound) and logs the bracket (``.history``);
  :func:`certify_training` (or :func:`lipbound.estimate`) certifies the trained model from scratch.
* **BatchNorm** enters the bound as the eval-mode model computes it, ``gamma / sqrt(running_var +
  eps)``, folded into the affine layers next to it (``batchnorm="fold"``, the default: one chain
  and one power vector for ``conv -> BN -> conv``). In training mode the running statistics drift
  with the weights, beyond the gradient's reach, and the eval-mode constant can grow while
  ``reg()`` falls. ``batchnorm="freeze"`` holds them fixed: each BatchNorm runs in eval mode
  (normalising with its running statistics) whatever mode the model is in, so the function trained
  is the function bounded.
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
from .regularizer_watch import (BATCHNORM_MODES, Certification, batchnorms, certify_now, freeze_batchnorm,
                                warn_batchnorm_training, warn_estimate)

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
                 n_power_iterations: int = 1, warmup_iterations: int = 50, seed: int = 0,
                 certified_every: int | None = None, certified_lower_steps: int = 50,
                 batchnorm: str = "fold") -> None:
        super().__init__()
        if target is not None and not target > 0:
            raise InvalidInput(f"target must be a positive number, got {target!r}")
        if n_power_iterations < 0:
            raise InvalidInput(f"n_power_iterations must be >= 0, got {n_power_iterations}")
        if certified_every is not None and (isinstance(certified_every, bool) or not isinstance(certified_every, int)
                                            or certified_every < 1):
            raise InvalidInput(f"certified_every must be a positive integer or None, got {certified_every!r}")
        if certified_lower_steps < 0:
            raise InvalidInput(f"certified_lower_steps must be >= 0, got {certified_lower_steps}")
        if batchnorm not in BATCHNORM_MODES:
            raise InvalidInput(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
        self.target = target
        self.n_power_iterations = n_power_iterations
        self.certified_every = certified_every
        self.certified_lower_steps = certified_lower_steps
        self.batchnorm = batchnorm
        self.history: list[Certification] = []  # one entry per certification (certified_every)
        self.calls = 0
        self._model = [model]  # a list: not registered as a submodule (its parameters are the user's)
        self._input_shape = tuple(input_shape)
        self._seed = seed
        self._batchnorms = batchnorms(model)
        self._hooks = freeze_batchnorm(list(self._batchnorms.values())) if batchnorm == "freeze" else []
        self._warned: set[str] = set()
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
        """``log L`` (or its hinge above ``log target``); every ``certified_every`` calls, also
        certifies the live model and appends the bracket to ``.history``."""
        self.calls += 1
        self._warn_once()
        bound = self.bound(update)
        if self.certified_every is not None and self.calls % self.certified_every == 0:
            self.certify(float(bound.detach()))
        log_l = torch.log(bound)
        if self.target is None:
            return log_l
        return F.relu(log_l - math.log(self.target))

    def certify(self, estimate: float | None = None) -> Certification:
        """The certified bracket of the live model now (see :func:`~lipbound.regularizer_watch.certify_now`),
        appended to ``.history`` and logged."""
        if estimate is None:
            estimate = float(self.bound(update=False).detach())
        record = certify_now(self._model[0], self._input_shape, self.calls, estimate, self._seed,
                             self.certified_lower_steps)
        self.history.append(record)
        return record

    def release_batchnorm(self) -> None:
        """Remove the hooks of ``batchnorm="freeze"``: BatchNorm follows the model's mode again."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _warn_once(self) -> None:
        if "estimate" not in self._warned and self.certified_every is None:
            self._warned.add("estimate")
            warn_estimate(self.n_power_iterations)
        if "batchnorm" not in self._warned and not self._hooks and warn_batchnorm_training(self._batchnorms):
            self._warned.add("batchnorm")


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
                target: float | None = None, n_power_iterations: int = 1, seed: int = 0,
                certified_every: int | None = None, certified_lower_steps: int = 50,
                batchnorm: str = "fold") -> LipschitzRegularizer:
    """A differentiable Lipschitz penalty for ``model`` (see :class:`LipschitzRegularizer`).

    Args:
        model: the ``nn.Module`` being trained (its live parameters are used at every call).
        input_shape: input shape without batch axis.
        method: ``"autolip"`` (the only one so far).
        target: penalise only the excess ``relu(log L - log target)``.
        n_power_iterations: power steps per call (1 is usually enough, as in spectral
            normalisation); the value is an estimate that lags the weights (module docstring).
        seed: seed of the start vectors (and of the certifications' lower-bound search).
        certified_every: every N calls, certify the live model: certified AutoLip (an upper bound
            by proof) and a witnessed lower bound, logged on the ``lipbound.regularizer`` logger
            (INFO) and kept in ``.history`` (:class:`~lipbound.regularizer_watch.Certification`).
            None (default): never, and a warning says once that ``reg()`` is an estimate.
        certified_lower_steps: ascent steps of the certifications' lower-bound search (0: no
            lower bound, only the certified upper one).
        batchnorm: ``"fold"`` (default): BatchNorm from its running statistics, folded into the
            affine layers next to it, as in the eval-mode model; warns once if a BatchNorm is in
            training mode (its statistics drift beyond the gradient's reach). ``"freeze"``: the
            same bound, and forward pre-hooks keep every BatchNorm in eval mode during training,
            so its running statistics stay fixed (``reg.release_batchnorm()`` removes the hooks).
    """
    if method != "autolip":
        raise InvalidInput(f"unknown regulariser method {method!r}; choose from 'autolip'")
    return LipschitzRegularizer(model, input_shape, target=target, n_power_iterations=n_power_iterations, seed=seed,
                                certified_every=certified_every, certified_lower_steps=certified_lower_steps,
                                batchnorm=batchnorm)


def certify_training(model: nn.Module, input_shape: Sequence[int], methods: Sequence[str] | None = None,
                     **options) -> Report:
    """After training: the certified bracket of ``model`` from scratch (``lipbound.estimate``)."""
    kwargs = {"progress": False, **options}
    if methods is not None:
        kwargs["methods"] = methods
    return estimate(model, input_shape, **kwargs)
