"""What the subcommands share: parsing shapes, regions and tensors, the model options and the
run options, and loading the model named on the command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .. import api
from ..errors import InvalidInput
from ..graph.input_scale import parse_scale, with_input_scale
from ..frontends.loading import load, load_factory
from ..methods import METHODS


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)`` (also accepts ``x`` or spaces as separators)."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise InvalidInput(f"--input-shape must be integers separated by commas, e.g. 1,28,28; got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise InvalidInput(f"--input-shape must be positive integers without the batch axis, got {text!r}")
    return shape


def parse_domain(text: str | None) -> tuple[float, float] | str | None:
    """``"0,1"`` -> ``(0.0, 1.0)``; a ``.vnnlib`` path stays a path (read by
    :func:`lipbound.load_vnnlib` against the model's input shape); None stays None (all of R^n)."""
    if text is None:
        return None
    if text.lower().endswith(".vnnlib"):
        if not Path(text).is_file():
            raise InvalidInput(f"--domain: VNN-LIB file not found: {text}")
        return text
    try:
        low, high = (float(p) for p in text.split(","))
    except ValueError:
        raise InvalidInput(f"--domain must be LOW,HIGH (two numbers) or a .vnnlib file, got {text!r}") from None
    return low, high


def load_tensor(path: str, what: str) -> torch.Tensor:
    """The tensor in ``path`` (``what`` names the option in errors): saved with ``torch.save``
    (read with ``weights_only=True``), a NumPy ``.npy`` file, or an ``.npz`` holding one array (or
    several, one of them named ``what`` without its dashes)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{what} file not found: {p}")
    try:
        if p.suffix.lower() in (".npy", ".npz"):
            import numpy as np

            data = np.load(p, allow_pickle=False)
            if p.suffix.lower() == ".npz":
                names, key = list(data.files), what.lstrip("-")
                if key not in names and len(names) != 1:
                    raise InvalidInput(f"{what} {p} holds arrays {names}: name one {key!r} or keep one")
                data = data[key if key in names else names[0]]
            return torch.as_tensor(data)
        x = torch.load(p, map_location="cpu", weights_only=True)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"could not read {what} {p} as a tensor: {type(exc).__name__}") from None
    if not isinstance(x, torch.Tensor):
        raise InvalidInput(f"{what} {p} must hold one tensor, got {type(x).__name__}")
    return x


def parse_radii(text: str | None) -> tuple[float, ...]:
    """``"0.1,0.25"`` -> ``(0.1, 0.25)`` (None -> ``()``)."""
    if text is None:
        return ()
    try:
        return tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise InvalidInput(f"--radii must be numbers separated by commas, e.g. 0.1,0.25; got {text!r}") from None


def load_center(path: str) -> torch.Tensor:
    """The tensor of ``--center`` (:func:`load_tensor`)."""
    return load_tensor(path, "--center")


def region_of(args: argparse.Namespace):
    """The ``domain`` of the command line: ``--domain`` (a box or a VNN-LIB file), or the ball
    ``--center`` / ``--radius`` / ``--norm``; None for all of R^n."""
    ball = (args.center, args.radius)
    if args.domain is not None and any(v is not None for v in ball):
        raise InvalidInput("give --domain or --center/--radius, not both")
    if all(v is None for v in ball):
        return parse_domain(args.domain)
    if None in ball:
        raise InvalidInput("--center and --radius go together")
    return api.Ball(load_center(args.center), args.radius, args.norm)


def add_model_options(p: argparse.ArgumentParser, shape_help: str) -> None:
    """MODEL and the options that say how to read it (shared by every subcommand that takes a model)."""
    p.add_argument("model", help="model.onnx, path/to/file.py:factory (a function returning an nn.Module), "
                   "or a weights file with --factory")
    p.add_argument("--input-shape", "-s", default=None, help=shape_help)
    p.add_argument("--weights", "-w", default=None, help="state dict to load (read with weights_only=True)")
    p.add_argument("--factory", default=None, metavar="FILE.py:FUNCTION",
                   help="architecture for a weights file given as MODEL (see lipbound.load)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickled full model (torch.save(model)): unpickling executes code from the file")
    p.add_argument("--module-path", default=None, metavar="DIR",
                   help="with --trust-pickle: folder of the module that defines the pickled model's class")
    p.add_argument("--input-scale", default=None, metavar="STD",
                   help="std of an input normalisation outside the model, one value or one per channel "
                   "(e.g. 0.2471,0.2435,0.2616): bound f(x / std), the constant for raw inputs")


def progress_of(args: argparse.Namespace) -> bool:
    """Progress bars only on an interactive terminal, never with ``--quiet``."""
    return not args.quiet and sys.stderr.isatty()


def add_method_options(p: argparse.ArgumentParser, method_help: str) -> None:
    """--method, --domain, --device, --seed, --json, --quiet: shared by estimate and certify."""
    p.add_argument("--method", "-m", action="append", dest="methods", metavar="NAME", help=method_help)
    p.add_argument("--domain", default=None, metavar="LOW,HIGH|PROP.vnnlib",
                   help="input region: a box, e.g. 0,1, or a VNN-LIB property file (default: all of R^n)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def add_run_options(p: argparse.ArgumentParser) -> None:
    add_method_options(p, "method to run (repeatable; default: a set sized for the model; 'all': every method "
                       f"that applies): {', '.join(METHODS)}")
    p.add_argument("--center", default=None, metavar="X.pt|X.npy",
                   help="center of a ball region (a tensor of the input shape, torch.save or .npy); with --radius")
    p.add_argument("--radius", type=float, default=None, help="radius of the ball region around --center")
    p.add_argument("--norm", default="2", choices=["2", "inf"], help="norm of the ball region (default 2)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="total seconds for the run, shared by the methods that can run long "
                   "(default: each method's own limit)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw the bracket and the layer norms")


def load_graph(args: argparse.Namespace, model_spec: str, shape_text: str | None, weights: str | None):
    """The graph of the model named on the command line (with its input scale applied)."""
    shape = parse_shape(shape_text) if shape_text is not None else None
    factory = getattr(args, "factory", None)
    if weights is not None and factory is not None:
        raise InvalidInput("give --weights (with MODEL as file.py:factory) or --factory (with MODEL as the "
                           "weights file), not both")
    if weights is not None:
        graph = load_factory(model_spec, weights, shape)
    else:
        graph = load(model_spec, shape, factory=factory, trust_pickle=getattr(args, "trust_pickle", False),
                     module_path=getattr(args, "module_path", None))
    scale = getattr(args, "input_scale", None)
    if scale is not None:
        graph = with_input_scale(graph, parse_scale(scale))
    return graph


