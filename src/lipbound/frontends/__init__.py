"""Frontends: a PyTorch module (torch.fx), an ONNX file, or a weights file with its architecture,
each turned into the one :class:`~lipbound.graph.ir.Graph`; VNN-LIB property files, turned into
input regions (:mod:`~lipbound.frontends.vnnlib`). They read the activation registry
(:mod:`lipbound.graph.activations`) and build :mod:`lipbound.linalg` operators; nothing under
``graph/``, ``linalg/`` or ``methods/`` imports them."""

from .from_torch import from_torch, operator_of_module
from .loading import load, load_factory
from .vnnlib import VnnlibProperty, load_vnnlib

__all__ = ["from_torch", "operator_of_module", "load", "load_factory", "load_vnnlib", "VnnlibProperty"]
