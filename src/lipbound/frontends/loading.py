"""Loading user models: :func:`load` (ONNX files, ``path/to/file.py:factory``, weights files with
a factory, pickled models on request) and the helpers it is built from."""

from __future__ import annotations

import importlib.util
import inspect
import pickle
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import InvalidInput
from ..graph.ir import Graph
from .from_torch import from_torch


def load_factory(spec: str, weights: str | Path | None = None, input_shape: Sequence[int] | None = None) -> Graph:
    """The graph of the model that ``function`` in ``path/to/file.py:function`` builds, with
    ``weights`` (a state dict, read with ``weights_only=True``) loaded into it; a function with one
    required argument is given the weights path instead (as in :func:`load`). A factory that
    returns ``(module, input_shape)`` gives the shape; ``input_shape``, when given, overrides it."""
    return _graph(_call_factory(spec, None if weights is None else Path(weights)), input_shape, spec)


def _import_function(spec: str) -> Callable[..., Any]:
    """The function named by ``path/to/file.py:function`` (the file is imported: it runs)."""
    path_str, sep, func = spec.rpartition(":")
    if not sep or not path_str or not func:
        raise InvalidInput(f"model must be given as path/to/file.py:factory, got {spec!r}")
    path = Path(path_str)
    if not path.is_file():
        raise InvalidInput(f"model file not found: {path}")
    if path.suffix != ".py":
        raise InvalidInput(f"model file must be a Python file (.py), got {path.name}")
    mod_name = f"_lipbound_user_{abs(hash(str(path.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise InvalidInput(f"could not import {path}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, func, None)
    if not callable(factory):
        raise InvalidInput(f"{path} has no function {func!r}")
    return factory


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state dict file into ``model`` (strict), without executing pickled code."""
    path = Path(weights)
    if not path.is_file():
        raise InvalidInput(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidInput(f"could not read weights {path} as a state dict: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if isinstance(state, (list, tuple)) and len(state) == 1:  # {'state_dict': [sd]} (alpha-beta-CROWN)
        state = state[0]
    if not isinstance(state, dict):
        raise InvalidInput(f"{path} does not hold a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InvalidInput(f"weights {path} do not fit the model: {first}") from None


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def load(path: str | Path, input_shape: Sequence[int] | None = None, *, factory: str | None = None,
         trust_pickle: bool = False, keep_softmax: bool = False,
         module_path: str | Path | None = None) -> Graph:
    """The :class:`~lipbound.graph.Graph` of a model stored in a file; it carries its input shape,
    so ``lipbound.estimate(graph)`` needs no other argument.

    Args:
        path: one of
            * ``model.onnx``: read with the ``onnx`` package (:func:`~lipbound.frontends.from_onnx.from_onnx`);
              the input shape comes from the model when it is static;
            * ``path/to/file.py:function``: the function returns the ``nn.Module``;
            * a weights file together with ``factory="path/to/file.py:function"``: a function with
              no required argument builds the architecture and the file is loaded into it as a
              state dict (``weights_only=True``, strict); a function with one required argument
              is given the path and reads the weights itself (``.mat``, checkpoints, ...);
            * a pickled full model (``torch.save(model)``): only with ``trust_pickle=True``,
              because unpickling runs code stored in the file.
            A factory may return the module or ``(module, input_shape)``.
        input_shape: input shape without batch axis; required for PyTorch models unless the
            factory returns it, and for ONNX models whose input has symbolic axes.
        factory: the architecture for a weights file, as ``path/to/file.py:function``.
        trust_pickle: allow unpickling a full model (executes code from the file).
        module_path: a folder searched first, while unpickling, for the modules that define the
            pickled model's classes (e.g. the folder of ``models.py``; CLI ``--module-path``).
        keep_softmax: ONNX only; see :func:`~lipbound.frontends.from_onnx.from_onnx`.

    Raises:
        InvalidInput: missing or unreadable file, unknown format, missing input shape, a pickled
            model without ``trust_pickle``.
        UnsupportedOperation: a layer lipbound cannot bound.
    """
    text = str(path)
    if factory is None and _is_factory_spec(text):
        return _graph(_call_factory(text, None), input_shape, text)
    p = Path(text)
    if not p.exists():
        raise InvalidInput(f"model file not found: {p}")
    if not p.is_file():
        raise InvalidInput(f"{p} is not a file")
    if factory is not None:
        return _graph(_call_factory(factory, p), input_shape, p.stem)
    suffix = p.suffix.lower()
    if suffix == ".py":
        raise InvalidInput(f"model must be given as path/to/file.py:factory, got {text!r}")
    if suffix == ".onnx":
        from .from_onnx import from_onnx
        return from_onnx(p, input_shape, keep_softmax=keep_softmax)
    if suffix in TORCH_SUFFIXES:
        return _graph(_load_pickled(p, trust_pickle, module_path), input_shape, p.stem)
    raise InvalidInput(f"cannot tell the format of {p.name}: give an .onnx file, path/to/file.py:function, a "
                       f"weights file ({', '.join(TORCH_SUFFIXES)}) with factory=..., or a pickled model")


def _is_factory_spec(text: str) -> bool:
    path, sep, func = text.rpartition(":")
    return bool(sep and func and path.endswith(".py"))


def _call_factory(spec: str, weights: Path | None) -> Any:
    """``function()`` (then ``weights`` loaded as a state dict), or ``function(weights)`` when the
    function has a required argument; returns what the function returns."""
    fn = _import_function(spec)
    required = [q for q in inspect.signature(fn).parameters.values()
                if q.default is inspect.Parameter.empty and q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    if required and weights is None:
        raise InvalidInput(f"factory {spec!r} takes the weights file as argument: give the file and "
                           "factory=... (CLI: the file as MODEL and --factory)")
    try:
        made = fn(str(weights)) if required else fn()
    except Exception as exc:
        raise InvalidInput(f"factory {spec!r} failed: {type(exc).__name__}: {_first(exc)}") from None
    if weights is not None and not required:
        module = made[0] if isinstance(made, tuple) else made
        if not isinstance(module, nn.Module):
            raise InvalidInput(f"factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
        load_weights(module, weights)
    return made


def _graph(made: Any, input_shape: Sequence[int] | None, name: str) -> Graph:
    model, shape = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"the factory returned {type(model).__name__}, not a torch.nn.Module")
    shape = input_shape if input_shape is not None else shape
    if shape is None:
        raise InvalidInput("a PyTorch model needs its input shape without batch axis (input_shape=..., "
                           "CLI --input-shape)")
    return from_torch(model, shape, name=name)


def _load_pickled(path: Path, trust_pickle: bool, module_path: str | Path | None = None) -> nn.Module:
    """A full model saved with ``torch.save(model)``; refuses state dicts (they need a factory) and,
    unless ``trust_pickle``, anything that would run pickled code. ``module_path`` is put first on
    ``sys.path`` while unpickling (the classes' modules are imported by name)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # a zip archive or a pickle
        raise InvalidInput(f"{path} is not a readable PyTorch file (neither a torch.save archive nor a pickle)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise InvalidInput(f"{path} is not a readable PyTorch file: {_first(exc)}") from None
        if not trust_pickle:
            raise InvalidInput(f"{path} is a pickled model: loading it executes code stored in the file. Pass "
                               "trust_pickle=True (CLI --trust-pickle) only if you trust its source, or save a "
                               "state dict and give its architecture with factory=... (CLI --factory)") from None
        state = _unpickle(path, module_path)
    except Exception as exc:
        raise InvalidInput(f"{path} is not a readable PyTorch file (truncated or corrupt?): "
                           f"{type(exc).__name__}: {_first(exc)}") from None
    if isinstance(state, nn.Module):
        return state
    if isinstance(state, dict):
        raise InvalidInput(f"{path} holds a state dict (weights only): give the architecture with "
                           "factory='path/to/file.py:function' (CLI --factory)")
    raise InvalidInput(f"{path} holds a {type(state).__name__}, not a model")


def _unpickle(path: Path, module_path: str | Path | None) -> Any:
    """``torch.load`` with pickled code allowed, ``module_path`` first on ``sys.path`` meanwhile."""
    folder = None if module_path is None else str(Path(module_path).resolve())
    if folder is not None and not Path(folder).is_dir():
        raise InvalidInput(f"module path is not a folder: {module_path}")
    if folder is not None:
        sys.path.insert(0, folder)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        where = "" if folder is None else f" (not in {folder} either)"
        raise InvalidInput(f"could not unpickle {path}: the model needs module {exc.name!r} (where its classes are "
                           f"defined), which Python cannot import{where}: add the folder that holds {exc.name}.py to PYTHONPATH, or "
                           "give it with module_path=DIR (CLI --module-path DIR)") from None
    except Exception as exc:
        raise InvalidInput(f"could not unpickle {path}: {type(exc).__name__}: {_first(exc)}") from None
    finally:
        if folder is not None:
            sys.path.remove(folder)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
