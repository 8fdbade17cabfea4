"""Shared test helpers: seeded random networks and the path to the shared real networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_REALNETS = REPO.parent / "shared" / "realnets"


@pytest.fixture
def realnets() -> Path:
    """``../shared/realnets``; the test is skipped when the folder is absent."""
    if not SHARED_REALNETS.is_dir():
        pytest.skip("../shared/realnets is not present")
    return SHARED_REALNETS


def jacobian_norm(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Spectral norm of the Jacobian of ``model`` at one input ``x`` (no batch axis), float64."""
    model = model.double()
    j = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).reshape(-1), x.double())
    return torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item()
