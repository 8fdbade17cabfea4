"""lipbound: bracket the Lipschitz constant of a neural network between a certified upper bound
and a witnessed lower bound.

>>> import lipbound, torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
>>> report = lipbound.estimate(net, (4,), progress=False)
>>> report.upper >= 0
True
"""

from .api import as_graph, autolip, estimate, lower_bound, seqlip, spectral_norm, witness_value
from .frontends.vnnlib import VnnlibProperty, load_vnnlib
from .methods.region import Ball, Box, BoxUnion
from .certify import Certificate, certify
from .margins import margin_constants
from .sweep import certify_dataset, run_instances
from .errors import InvalidInput, LipboundError, NotApplicable, UnsupportedOperation
from .frontends import from_torch
from .graph import Graph
from .frontends.loading import load
from .linalg import LinearOperator, power_method
from .methods import METHODS
from .regularizer import LipschitzRegularizer, certify_training, regularizer
from .report import Report, Result
from .methods.witness import PairWitness, PointWitness, Witness

__version__ = "0.1.0"

__all__ = ["estimate", "autolip", "seqlip", "as_graph", "load", "spectral_norm", "power_method", "from_torch", "Graph",
           "LinearOperator", "Report", "Result", "METHODS", "LipboundError", "UnsupportedOperation",
           "InvalidInput", "__version__", "lower_bound", "certify", "Certificate", "margin_constants", "witness_value", "NotApplicable",
           "regularizer", "LipschitzRegularizer", "certify_training", "Witness", "PointWitness", "PairWitness",
           "Ball", "Box", "BoxUnion", "load_vnnlib", "VnnlibProperty", "certify_dataset", "run_instances"]
