"""The graph IR and its frontends."""

from .from_torch import from_torch, operator_of_module
from .ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node

__all__ = ["Graph", "Node", "Input", "Affine", "Activation", "MaxPool", "Add", "Concat", "from_torch",
           "operator_of_module"]
