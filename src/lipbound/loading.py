"""Loading user models for the CLI: ``path/to/file.py:factory`` plus optional weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn

from .errors import InvalidInput


def load_factory(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Call ``factory()`` from ``path/to/file.py:factory`` and load ``weights`` (a state dict,
    read with ``weights_only=True``) into the module it returns."""
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
    try:
        model = factory()
    except Exception as exc:
        raise InvalidInput(f"factory {func!r} in {path} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"factory {func!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


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
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InvalidInput(f"{path} does not hold a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InvalidInput(f"weights {path} do not fit the model: {first}") from None
