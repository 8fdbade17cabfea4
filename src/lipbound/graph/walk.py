"""One graph walker: every analysis that computes one value per node in topological order.

:class:`GraphInterpreter` is to lipbound's IR what ``torch.fx.Interpreter`` is to an fx graph:
:meth:`GraphInterpreter.run` visits the nodes in order and calls ``visit_<kind>(node, *values of
its inputs)`` (``visit_input(node)`` for the input); the value it returns is stored for the node's
users. An analysis overrides the visits of the node kinds it handles; any other kind raises
:class:`~lipbound.errors.UnsupportedOperation` naming the node and where it comes from, so a new
node kind can never be silently skipped.

Example: AutoLip's propagation is ``visit_affine = lambda node, L: norm(node) * L``,
``visit_add = lambda node, *Ls: sum(Ls)``, and so on.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..errors import UnsupportedOperation
from .ir import Graph, Node

__all__ = ["GraphInterpreter"]

T = TypeVar("T")


class GraphInterpreter(Generic[T]):
    """Visit a graph's nodes in topological order (module doc). ``name`` names the analysis in
    errors."""

    name = "this analysis"

    def run(self, graph: Graph, *input_value: Any) -> dict[str, T]:
        """Values of every node, by name (``input_value``, when given, is the input's value and
        ``visit_input`` is not called)."""
        env: dict[str, T] = {}
        for node in graph:
            if node.kind == "input" and input_value:
                env[node.name] = input_value[0]
                continue
            env[node.name] = self.visit(node, *(env[i] for i in node.inputs))
        return env

    def output(self, graph: Graph, *input_value: Any) -> T:
        """The value of the graph's output node."""
        return self.run(graph, *input_value)[graph.output]

    def visit(self, node: Node, *args: T) -> T:
        return getattr(self, f"visit_{node.kind}", self.unsupported)(node, *args)

    def unsupported(self, node: Node, *args: Any) -> T:
        raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                                   f"{self.name} has no rule for {node.kind} nodes")
