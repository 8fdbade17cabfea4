"""The graph IR (:mod:`lipbound.graph.ir`) and the activation registry it refers to."""

from .ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node

__all__ = ["Graph", "Node", "Input", "Affine", "Activation", "MaxPool", "Add", "Concat"]
