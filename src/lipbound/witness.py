"""Witnesses of lower bounds, under one public name: the types and their float64 re-check live
with the methods (:mod:`lipbound.methods.witness`), :func:`witness_value` (which turns a model
into a graph first) in :mod:`lipbound.api`. Nothing inside the package imports this module."""

from .api import witness_value
from .methods.region import Box, as_box
from .methods.rounding import pair_bounds
from .methods.witness import PairWitness, PointWitness, Witness, as_witness

__all__ = ["witness_value", "Witness", "PointWitness", "PairWitness", "as_witness", "Box", "as_box", "pair_bounds"]
