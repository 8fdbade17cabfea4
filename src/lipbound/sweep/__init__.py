"""Sweeps: many independent instances, in parallel and resumable.

* :func:`run_instances`: a VNN-COMP ``instances.csv`` (local bracket and robustness verdict per row).
* :func:`certify_dataset`: certified accuracy of a classifier over a set of inputs.

Both run on a process pool (default), on Ray (``backend="ray"``) or serially, append one JSON
line per finished instance to ``out`` and skip on a rerun what ``out`` already holds.
"""

from .accuracy import DatasetSummary
from .dataset import certify_dataset
from .instances import instances_table, read_instances, run_instances
from .runner import BACKENDS, SweepRun

__all__ = ["certify_dataset", "DatasetSummary", "run_instances", "read_instances", "instances_table", "SweepRun",
           "BACKENDS"]
