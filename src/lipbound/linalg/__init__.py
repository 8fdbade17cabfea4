"""Linear operators and their spectral norms."""

from .operators import Compose, Conv, Dense, Diagonal, Function, LinearOperator, Permute, Reshape, compose
from .spectral import PowerResult, SpectralNorm, certified_norm, operator_norms, power_method

__all__ = ["LinearOperator", "Dense", "Conv", "Diagonal", "Function", "Reshape", "Permute", "Compose", "compose",
           "power_method", "certified_norm", "operator_norms", "PowerResult", "SpectralNorm"]
