"""Sound back-substitution of linear bounds through a graph's linear relaxations: the engine of
CROWN and alpha-CROWN (:mod:`.propagation`, :mod:`.alpha_crown`).

A batch of rows ``a`` (linear forms of one target node's value) is carried down to the input:
``<a, y>`` of an affine node ``y = A h + b`` becomes ``<A^T a, h> + <a, b>``; of an activation
with lines ``a_L z + b_L <= s(z) <= a_U z + b_U``, ``<a+ a_L + a- a_U, z> + <a+, b_L> + <a-, b_U>``
(a lower bound: positive coefficients take the lower line); of max pooling, its output interval;
adds and concats pass the coefficients on. At the input the form is minimised over the region
(a box, and an L2 ball when the region is one). Every step is float64 and subtracts a rigorous
bound of its rounding (module doc of :mod:`.propagation`), so the result is a lower bound of the
row over the region for the exact network, whatever valid lines are used.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedOperation
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node
from ..linalg.operators import Compose, Function, Permute, Reshape
from .relaxations import Relaxation
from .float_error import TINY, UNIT_ROUNDOFF, gamma, linear_error, round_up

__all__ = ["Backward", "Bounds", "center_radius"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), element-wise, float64


def center_radius(l: torch.Tensor, u: torch.Tensor) -> Bounds:
    """``(c, r)`` in float64 with ``[c - r, c + r]`` containing ``[l, u]`` exactly: ``c = fl((l + u) / 2)``
    is within ``u |c| + tiny`` of the midpoint, which the radius absorbs."""
    c = (l + u) / 2
    r = (u - l) / 2
    return c, round_up(r + 2 * UNIT_ROUNDOFF * c.abs(), 2)


class Backward:
    """Back-substitution of lower bounds ``sum_n <A_n, v_n> + const`` of a batch of rows (linear
    forms of one target node's value) down to the input, through the relaxations of the nodes
    already bounded (:func:`.propagation.crown_bounds`). Every step replaces ``<A_y, y>`` by a lower bound in the
    node's inputs; ``slack`` collects the rigorous rounding bound of each replacement (module doc
    of :func:`.propagation.crown_bounds`), ``mag`` the magnitudes summed into ``const``."""

    def __init__(self, graph: Graph, bounds: dict[str, Bounds], relaxations: dict[str, Relaxation],
                 region: Any, cache: dict[str, torch.Tensor]) -> None:
        self.graph, self.bounds, self.relaxations, self.region, self.cache = graph, bounds, relaxations, region, cache
        self.override: dict[str, Relaxation] = {}
        self.detached: set[str] = set()  # nodes whose rmatvec is not differentiable

    def magnitude(self, name: str) -> torch.Tensor:
        """``max(|l|, |u|)`` of a node's interval: bounds ``|v|`` over the region."""
        l, u = self.bounds[name]
        return torch.maximum(l.abs(), u.abs())

    def affine_error(self, node: Affine) -> torch.Tensor:
        """``E`` with ``|<fl(A^T a) - A^T a, h>| + |fl(<a, b>) - <a, b>| <= <|a|, E>`` for every
        ``h`` in the input's interval: ``gamma_K |A| m_h + gamma_n |b|`` with ``K`` the terms of the
        adjoint's sums over all stages (``in + out`` sizes; none for reshapes and permutations);
        a black-box stage adds ``gamma_K max(|A| m_h)``, as in :mod:`.rounding`."""
        if node.name not in self.cache:
            stages = node.op.ops if isinstance(node.op, Compose) else [node.op]
            k = sum(0 if isinstance(o, (Reshape, Permute)) else o.in_numel + o.out_numel for o in stages)
            m = self.magnitude(node.inputs[0]).unsqueeze(0)
            _, am = linear_error(node.op, torch.zeros_like(m), m)
            err = gamma(k + 4) * am[0]
            if any(isinstance(o, Function) for o in stages):
                err = err + gamma(k + 4) * am.max()
            if node.bias is not None:
                err = err + gamma(node.op.out_numel + 4) * node.bias.abs()
            self.cache[node.name] = round_up(err, 4)
        return self.cache[node.name]

    def run(self, target: str, rows: torch.Tensor, relaxations: dict[str, Relaxation] | None = None) -> torch.Tensor:
        """Rigorous lower bounds of the linear forms ``rows`` (``(R, *shape)``) of the target's value;
        ``relaxations`` replaces some activations' lines (per row: tensors ``(R, *shape)``), as
        alpha-CROWN does (:mod:`.alpha_crown`); any valid lines keep the bound rigorous."""
        self.override = relaxations or {}
        coef: dict[str, torch.Tensor] = {target: rows}
        n = rows.shape[0]
        const = torch.zeros(n, dtype=rows.dtype, device=rows.device)
        slack, mag = torch.zeros_like(const), torch.zeros_like(const)
        terms = 0
        order = list(self.graph.nodes)
        for name in reversed(order[: order.index(target) + 1]):
            a = coef.pop(name, None)
            if a is None:
                continue
            node = self.graph.nodes[name]
            c, e, pushed = self.step(node, a)
            for into, a_in in pushed:
                if into in coef:  # the sum rounds: |fl(x + y) - (x + y)| <= u |x + y|
                    e = e + self._dot(a_in.abs() + coef[into].abs(), 2 * UNIT_ROUNDOFF * self.magnitude(into))
                    a_in = coef[into] + a_in
                coef[into] = a_in
            const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
        # the running sums of const and slack round too: gamma_terms of their magnitudes
        return const - round_up(slack, terms + 1) - round_up(gamma(terms + 8) * (mag + const.abs()), 4) - TINY

    @staticmethod
    def _dot(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Upper bound of ``<a, w>`` per row for non-negative ``a`` and ``w``."""
        return round_up((a * w).flatten(1).sum(1), w.numel())

    def step(self, node: Node, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """``<a, v_node> >= <a', v_inputs> + c - e``: returns ``c``, ``e`` and the ``(input, a')``."""
        zero = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        flat = lambda t: t.flatten(1).sum(1)  # noqa: E731
        if isinstance(node, Input):
            return (*self.concretize(a), [])
        if isinstance(node, Affine):
            c = zero if node.bias is None else flat(a * node.bias)
            return c, self._dot(a.abs(), self.affine_error(node)), [(node.inputs[0], self.adjoint(node, a))]
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        if isinstance(node, Activation):
            r = self.override.get(node.name) or self.relaxations[node.name]
            c = flat(pos * r.b_low + neg * r.b_up)
            slopes = torch.maximum(r.a_low.abs(), r.a_up.abs())
            bias = torch.maximum(r.b_low.abs(), r.b_up.abs())
            e = self._dot(a.abs(), 2 * UNIT_ROUNDOFF * slopes * self.magnitude(node.inputs[0]) + gamma(a[0].numel() + 4) * bias)
            return c, e, [(node.inputs[0], pos * r.a_low + neg * r.a_up)]
        if isinstance(node, MaxPool):  # IBP of its output: <a, y> >= <a+, l_y> + <a-, u_y>
            l, u = self.bounds[node.name]
            return flat(pos * l + neg * u), self._dot(a.abs(), gamma(l.numel() + 4) * self.magnitude(node.name)), []
        if isinstance(node, Add):
            return zero, zero, [(i, a) for i in node.inputs]
        if isinstance(node, Concat):
            sizes = [self.graph.nodes[i].shape[node.axis] for i in node.inputs]
            return zero, zero, list(zip(node.inputs, torch.split(a, sizes, dim=node.axis + 1)))
        raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'", "CROWN has no rule for it")

    def adjoint(self, node: Affine, a: torch.Tensor) -> torch.Tensor:
        """``A^T a``, differentiable in ``a`` when ``a`` requires grad (alpha-CROWN's gradients):
        an operator whose adjoint is a detached vector-Jacobian product is then differentiated
        through its ``matvec`` instead (remembered per node)."""
        if not (a.requires_grad and node.name in self.detached):
            out = node.op.rmatvec(a)
            if not a.requires_grad or out.requires_grad:
                return out
            self.detached.add(node.name)
        x = torch.zeros((a.shape[0], *node.op.in_shape), dtype=a.dtype, device=a.device, requires_grad=True)
        (out,) = torch.autograd.grad(node.op.matvec(x), x, grad_outputs=a, create_graph=True)
        return out

    def concretize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``min over the region of <a, x>`` as ``c - e``: over the box ``<a, c> - <|a|, r>``; over an
        L2 ball also ``<a, center> - radius ||a||_2``; the larger of the two (both are sound)."""
        flat = lambda t: t.flatten(1).sum(1)  # noqa: E731
        n = a[0].numel()
        center, radius = center_radius(*self.bounds[self.graph.input])
        c = flat(a * center) - flat(a.abs() * radius)
        e = self._dot(a.abs(), gamma(n + 4) * (center.abs() + radius))
        if getattr(self.region, "norm", None) == 2:
            x0 = torch.as_tensor(self.region.center, dtype=torch.float64).to(a.device)
            norm = round_up(a.flatten(1).norm(dim=1), n)
            c2 = flat(a * x0) - float(self.region.radius) * norm
            e2 = self._dot(a.abs(), gamma(n + 4) * x0.abs()) + gamma(4) * float(self.region.radius) * norm
            better = c2 - e2 > c - e
            c, e = torch.where(better, c2, c), torch.where(better, e2, e)
        return c, e
