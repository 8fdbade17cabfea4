"""The graph: lipbound's one intermediate representation (DESIGN §2).

A :class:`Graph` is a small DAG of typed nodes in topological order, built by a frontend
(:mod:`lipbound.frontends`: PyTorch and ONNX) for a fixed input shape (without batch axis).
Node kinds and the partial Lipschitz constant AutoLip gives each (DESIGN §4):

* :class:`Input` — the network input, ``L = 1``.
* :class:`Affine` — ``x -> A x + b`` with ``A`` a :class:`~lipbound.linalg.operators.LinearOperator`:
  ``||A||_2``.
* :class:`Activation` — element-wise, slope range ``[a, b]``: ``max(|a|, |b|)``.
* :class:`MaxPool` — ``sqrt(prod_d m_d)``, ``m_d`` the most windows one input lies in.
* :class:`Add` — sum of its inputs: partial constants 1 each.
* :class:`Concat` — concatenation: ``sqrt(sum_i L_i^2)``.

**Regions and per-neuron slopes.** A graph may carry an input region (``Graph.region``, see
:mod:`lipbound.methods.region`) and, for every activation, per-neuron bounds ``pre = (l, u)`` of
its input over that region (filled by :func:`lipbound.methods.propagation.localize`). Then
:meth:`Activation.slope_bounds` gives each neuron the slope interval of ``fn`` on ``[l_i, u_i]``;
without a region it gives the global slope range to every neuron. Every method reads slopes
through it, so one code path serves the global and the local constant. Why that is sound: for
``x, y`` in a convex region, every neuron's input stays in ``[l_i, u_i]`` along the segment, so
``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with the secant slope ``d_i`` in the neuron's interval;
``f(x) - f(y)`` is therefore ``W_k D_{k-1} ... D_1 W_1 (x - y)`` with every ``D`` a diagonal of
admissible slopes, exactly the set each method maximises over.

The graph evaluates itself (:meth:`Graph.forward`) so that every method can be checked against
the model it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Iterator, Sequence

import torch

from ..linalg.operators import LinearOperator, compose
from .activations import ActivationFacts, PiecewiseLinear

Shape = tuple[int, ...]


@dataclass(repr=False)
class Node:
    """Common part of every node: ``name`` (unique), ``inputs`` (names of the nodes it reads),
    ``shape`` (output shape without batch axis) and ``origin`` (where it comes from in the user's
    model, for messages and tables)."""

    name: str
    inputs: list[str]
    shape: Shape
    origin: str

    kind = "node"

    def __repr__(self) -> str:
        """One line that never prints a tensor's values: the class, name, output shape, inputs,
        origin, and every other field that is set, summarised (:func:`_summary`)."""
        extra = "".join(f", {f.name}={_summary(getattr(self, f.name))}" for f in fields(self)
                        if f.name not in ("name", "inputs", "shape", "origin") and getattr(self, f.name) is not None)
        return (f"{type(self).__name__}({self.name!r}, {self.shape} <- {', '.join(self.inputs) or '-'}, "
                f"origin {self.origin!r}{extra})")

    def evaluate(self, *args: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device=None, dtype=None) -> "Node":
        return self


@dataclass(repr=False)
class Input(Node):
    kind = "input"


@dataclass(repr=False)
class Affine(Node):
    """``y = op(x) + bias``; ``bias`` has the output shape (or is None). ``bias64``: the bias in
    float64 when ``bias`` is a rounding of it (a float32 model's ``f(0)``): :meth:`to` in float64
    uses it, as :meth:`~lipbound.linalg.operators.LinearOperator.to` uses an operator's float64 fold."""

    op: LinearOperator = None  # type: ignore[assignment]
    bias: torch.Tensor | None = None
    bias64: torch.Tensor | None = field(default=None, repr=False)
    kind = "affine"

    def evaluate(self, x):
        y = self.op.matvec(x)
        return y if self.bias is None else y + self.bias

    def to(self, device=None, dtype=None):
        source = self.bias64 if dtype == torch.float64 and self.bias64 is not None else self.bias
        bias = None if source is None else source.to(device=device, dtype=dtype)
        return Affine(self.name, list(self.inputs), self.shape, self.origin, self.op.to(device, dtype), bias,
                      None if self.bias64 is None else self.bias64.to(device=device))


@dataclass(repr=False)
class Activation(Node):
    """Element-wise ``fn``; ``facts`` (:class:`~lipbound.graph.activations.ActivationFacts`, from
    the activation's definition) give its slope range, kinks and pieces; ``label`` names it."""

    fn: Callable[[torch.Tensor], torch.Tensor] = None  # type: ignore[assignment]
    facts: ActivationFacts = None  # type: ignore[assignment]
    label: str = ""
    pre: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # input bounds on the region
    kind = "activation"

    def __post_init__(self) -> None:
        if not isinstance(self.facts, ActivationFacts):
            raise TypeError(f"activation node {self.name!r} needs its ActivationFacts, got {self.facts!r}")

    def evaluate(self, x):
        return self.fn(x)

    def to(self, device=None, dtype=None):
        return _fn_to(self, device, dtype)

    def slope_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-neuron slope interval ``(lo, hi)``, float64 CPU tensors of ``self.shape``: on the
        graph's region (``pre`` set) the exact or enclosing range of ``s'`` on ``[l_i, u_i]``
        (:meth:`~lipbound.graph.activations.ActivationFacts.slopes_on`), which holds every secant
        slope there; otherwise the global range ``slope`` for every neuron. A neuron with
        ``lo == hi`` is stable: the activation is affine on its interval."""
        if self.pre is None:
            a, b = self.slope
            return (torch.full(self.shape, float(a), dtype=torch.float64),
                    torch.full(self.shape, float(b), dtype=torch.float64))
        l, u = self.pre
        return self.facts.slopes_on(l.to(torch.float64), u.to(torch.float64))

    def lipschitz_bounds(self) -> torch.Tensor:
        """Per neuron ``max(|lo|, |hi|)`` of :meth:`slope_bounds`: the neuron's Lipschitz constant
        on the region (or globally)."""
        lo, hi = self.slope_bounds()
        return torch.maximum(lo.abs(), hi.abs())

    @property
    def slope(self) -> tuple[float, float]:
        """``(a, b)`` enclosing every derivative of ``fn``."""
        return self.facts.slope

    @property
    def kinks(self) -> tuple[float, ...]:
        """Inputs where ``fn`` is not continuously differentiable."""
        return self.facts.kinks

    @property
    def pieces(self) -> PiecewiseLinear | None:
        """The exact pieces of a piecewise-linear ``fn`` (same scalars on every element), else None."""
        return self.facts.pieces

    @property
    def lipschitz(self) -> float:
        return self.facts.lipschitz


@dataclass(repr=False)
class MaxPool(Node):
    """Max pooling; ``fn`` evaluates it, ``kernel``/``stride``/``dilation`` per spatial axis."""

    fn: Callable[[torch.Tensor], torch.Tensor] = None  # type: ignore[assignment]
    multiplicity: int = 1  # the most windows that contain one input
    pre: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # input bounds on the region
    kind = "maxpool"

    def evaluate(self, x):
        return self.fn(x)

    def to(self, device=None, dtype=None):
        return _fn_to(self, device, dtype)

    @property
    def lipschitz(self) -> float:
        """``sqrt(m)`` with ``m`` the most windows one input lies in: each output moves by at most
        the largest change in its window, so ``||P x - P y||^2 <= sum_w ||x_w - y_w||^2 <= m ||x - y||^2``."""
        return math.sqrt(self.multiplicity)


@dataclass(repr=False)
class Add(Node):
    kind = "add"

    def evaluate(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


@dataclass(repr=False)
class Concat(Node):
    axis: int = 0  # axis without the batch axis
    kind = "concat"

    def evaluate(self, *xs):
        return torch.cat(xs, dim=self.axis + 1)


@dataclass(repr=False)
class Graph:
    """Typed DAG in topological order. ``nodes`` maps names to nodes; ``output`` names the
    output node; ``input_shape`` is the input shape without batch axis. ``region``: the input
    region the activations' ``pre`` bounds hold on (None: all of ``R^n``, no bounds)."""

    nodes: dict[str, Node]
    input: str
    output: str
    name: str = "model"
    notes: list[str] = field(default_factory=list)
    region: Any = None

    def rebuilt(self, nodes: dict[str, Node], output: str | None = None) -> "Graph":
        """A graph with other ``nodes`` (same function on the same region), keeping the input,
        name, notes and region."""
        return Graph(nodes, self.input, self.output if output is None else output, self.name, list(self.notes),
                     self.region)

    def localized(self, region: Any, pre: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> "Graph":
        """A copy on ``region``: each activation or max-pool node named in ``pre`` gets those
        bounds ``(l, u)`` of its input (float64, the node's input shape), valid for every input
        in the region. The caller (:func:`lipbound.methods.propagation.localize`) proves them."""
        import copy
        nodes: dict[str, Node] = {}
        for name, node in self.nodes.items():
            if name in pre and isinstance(node, (Activation, MaxPool)):
                node = copy.copy(node)
                node.pre = pre[name]
            nodes[name] = node
        out = Graph(nodes, self.input, self.output, self.name, list(self.notes), region)
        return out

    @property
    def input_shape(self) -> Shape:
        return self.nodes[self.input].shape

    @property
    def output_shape(self) -> Shape:
        return self.nodes[self.output].shape

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self:
            for i in node.inputs:
                out[i].append(node.name)
        return out

    def without_region(self) -> "Graph":
        """The same network on all of ``R^n``: no region, no ``pre`` bounds (global slopes)."""
        return self.localized(None, {n.name: None for n in self if isinstance(n, (Activation, MaxPool))})

    def unstable_neurons(self) -> list[tuple[str, int]]:
        """``(activation name, flat index)`` of every neuron whose slope interval on the region is
        not a point, in topological order (every neuron of a non-affine activation without a region)."""
        out: list[tuple[str, int]] = []
        for node in self:
            if isinstance(node, Activation):
                lo, hi = node.slope_bounds()
                out += [(node.name, int(i)) for i in (lo != hi).flatten().nonzero().flatten()]
        return out

    def affine_nodes(self) -> list[Affine]:
        return [n for n in self if isinstance(n, Affine)]

    def _weighted_op(self) -> LinearOperator | None:
        """The first affine operator with tensors of its own (a reshape has none, hence no dtype)."""
        ops = [n.op for n in self.affine_nodes()]
        return next((op for op in ops if op.tensors()), ops[0] if ops else None)

    @property
    def device(self) -> torch.device:
        op = self._weighted_op()
        return op.device if op is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        op = self._weighted_op()
        return op.dtype if op is not None else torch.get_default_dtype()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate on a batch ``(B, *input_shape)``."""
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected input (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        env: dict[str, torch.Tensor] = {}
        for node in self:
            env[node.name] = x if isinstance(node, Input) else node.evaluate(*(env[i] for i in node.inputs))
        return env[self.output]

    __call__ = forward

    def to(self, device=None, dtype=None) -> "Graph":
        """A copy with every tensor on ``device`` / in ``dtype``."""
        return self.rebuilt({k: n.to(device, dtype) for k, n in self.nodes.items()})

    def fused(self) -> "Graph":
        """:meth:`fuse_affine`, computed once per graph (methods share its operators and the
        norms cached on them)."""
        if getattr(self, "_fused", None) is None:
            self._fused = self.fuse_affine()
            self._fused._fused = self._fused
        return self._fused

    def fuse_affine(self) -> "Graph":
        """Merge chains of affine nodes (each feeding only the next) into one node, folding
        BatchNorm and scalings into convolutions and dense layers (:func:`~lipbound.linalg.operators.compose`).
        The function is unchanged; AutoLip gets one tighter factor instead of a product."""
        users = self.users()
        nodes: dict[str, Node] = {}
        rename: dict[str, str] = {}
        for node in self:
            inputs = [rename.get(i, i) for i in node.inputs]
            prev = nodes.get(inputs[0]) if len(inputs) == 1 else None
            if (isinstance(node, Affine) and isinstance(prev, Affine) and len(users[_orig(rename, prev.name)]) == 1
                    and prev.name != self.output):
                bias = _fused_bias(node.op, prev.bias, node.bias)
                bias64 = None
                if prev.bias64 is not None or node.bias64 is not None:  # the same in float64, from the exact parts
                    bias64 = _fused_bias(node.op.to(dtype=torch.float64), _as64(prev), _as64(node))
                fused = Affine(prev.name, prev.inputs, node.shape, f"{prev.origin} + {node.origin}",
                               compose(prev.op, node.op), bias, bias64)
                nodes[prev.name] = fused
                rename[node.name] = prev.name
                continue
            node = with_inputs(node, inputs)
            nodes[node.name] = node
        return self.rebuilt(nodes, rename.get(self.output, self.output))

    def __repr__(self) -> str:
        """One line: name, shapes, node count by kind, region; no tensor values."""
        kinds: dict[str, int] = {}
        for n in self:
            kinds[n.kind] = kinds.get(n.kind, 0) + 1
        region = "" if self.region is None else f", region {self.region.describe()}"
        return (f"<Graph {self.name!r}: input {self.input_shape} -> output {self.output_shape}, {len(self)} nodes "
                f"({', '.join(f'{c} {k}' for k, c in kinds.items())}){region}>")

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        lines = [f"Graph {self.name}: input {self.input_shape} -> output {self.output_shape}"]
        for n in self:
            lines.append(f"  {n.name:<24} {n.kind:<10} {str(n.shape):<18} <- {', '.join(n.inputs)}   [{n.origin}]")
        return "\n".join(lines)


def _summary(value: Any, width: int = 60) -> str:
    """A short text for a node's field: a tensor by its shape and dtype, a tuple or list item by
    item, a linear operator by its label and shapes, a function by its name, anything else by its
    ``repr`` cut to ``width`` characters."""
    if isinstance(value, torch.Tensor):
        return f"<tensor {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}>"
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return "(" + ", ".join(_summary(v, width) for v in value) + ")"
    if callable(value) and not isinstance(value, LinearOperator):
        return getattr(value, "__name__", type(value).__name__)
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _fused_bias(second: LinearOperator, b1: torch.Tensor | None, b2: torch.Tensor | None) -> torch.Tensor | None:
    """The bias ``A2 b1 + b2`` of ``x -> A2 (A1 x + b1) + b2`` (``second`` is ``A2``)."""
    bias = second.matvec(b1.unsqueeze(0))[0] if b1 is not None else None
    if b2 is not None:
        bias = b2 if bias is None else bias + b2
    return bias


def _as64(node: Affine) -> torch.Tensor | None:
    """A node's bias in float64 (its exact one when it has it)."""
    b = node.bias64 if node.bias64 is not None else node.bias
    return None if b is None else b.to(torch.float64)


def _fn_to(node: Node, device, dtype) -> Node:
    """Copy of an activation or pooling node whose ``fn`` module is moved to ``device``/``dtype``."""
    import copy
    new = copy.copy(node)
    if isinstance(node.fn, torch.nn.Module):
        new.fn = copy.deepcopy(node.fn).to(device=device, dtype=dtype)
    return new


def _orig(rename: dict[str, str], name: str) -> str:
    """The last original node merged into ``name`` (its users decide whether to fuse further)."""
    last = name
    for old, new in rename.items():
        if new == name:
            last = old
    return last


def with_inputs(node: Node, inputs: Sequence[str]) -> Node:
    """``node`` reading ``inputs`` instead of its own (a copy; the node itself when they are the same)."""
    if list(node.inputs) == list(inputs):
        return node
    import copy
    new = copy.copy(node)
    new.inputs = list(inputs)
    return new
