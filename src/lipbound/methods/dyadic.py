"""Exact dyadic arithmetic: float64 tensors as exact rationals ``m 2^e`` with Python integers.

Every float64 number is a dyadic rational ``m 2^e``; sums, differences and products of dyadic
rationals are dyadic, so a tensor held as Python-integer mantissas (a numpy object array) times one
power of two (:class:`Dyadic`) is computed on exactly, with no rounding (int64 would overflow: the
mantissas of a deep network's values grow by about 60 bits a layer). Square roots are not dyadic:
:func:`sqrt_ratio_bounds` brackets ``sqrt(a / b)`` of two exact values with integer square roots,
rounded outwards to float64 (a relative width of about ``2^-60``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import NotApplicable

__all__ = ["Dyadic", "sqrt_ratio_bounds"]


@dataclass(frozen=True)
class Dyadic:
    """The exact tensor ``mant * 2**exp``: ``mant`` a numpy object array of Python ints."""

    mant: np.ndarray
    exp: int

    @staticmethod
    def of(t: torch.Tensor | np.ndarray | float) -> "Dyadic":
        """The exact value of a float64 tensor (finite), mantissas stripped of common factors of 2."""
        a = np.asarray(t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
        if not np.isfinite(a).all():
            raise NotApplicable("exact evaluation needs finite numbers")
        m, e = np.frexp(a)
        mi = (m * 2.0 ** 53).astype(np.int64)  # exact: a float64 has 53 significant bits
        tz = np.log2((mi & -mi).clip(1)).astype(np.int64)  # trailing zero bits (exact powers of two)
        mi, e = mi >> tz, e.astype(np.int64) - 53 + tz
        nz = mi != 0
        base = int(e[nz].min()) if nz.any() else 0
        shift = np.where(nz, e - base, 0)
        return Dyadic(np.left_shift(mi.astype(object), shift.astype(object)), base)

    def at(self, exp: int) -> np.ndarray:
        """Mantissas on the finer exponent ``exp <= self.exp``."""
        return self.mant if exp == self.exp else np.left_shift(self.mant, self.exp - exp)

    def __add__(self, other: "Dyadic") -> "Dyadic":
        e = min(self.exp, other.exp)
        return Dyadic(self.at(e) + other.at(e), e)

    def __sub__(self, other: "Dyadic") -> "Dyadic":
        e = min(self.exp, other.exp)
        return Dyadic(self.at(e) - other.at(e), e)

    def __mul__(self, other: "Dyadic") -> "Dyadic":
        return Dyadic(self.mant * other.mant, self.exp + other.exp)

    def scaled(self, k: int) -> "Dyadic":
        """``self * 2**k``."""
        return Dyadic(self.mant, self.exp + k)

    def squared_norm(self) -> tuple[int, int]:
        """``(s, e)`` with ``||self||_2^2 = s 2^e`` exactly."""
        flat = self.mant.ravel()
        return int((flat * flat).sum()) if flat.size else 0, 2 * self.exp


def sqrt_ratio_bounds(num: int, num_exp: int, den: int, den_exp: int) -> tuple[float, float]:
    """Float64 ``(low, high)`` with ``low <= sqrt((num 2^num_exp) / (den 2^den_exp)) <= high``
    (``num >= 0``, ``den > 0``): the quotient scaled by ``2^s`` to about 128 bits and floored (ceiled),
    its integer square root, rounded down (up) to 53 bits."""
    e = num_exp - den_exp
    s = 128 + den.bit_length() - num.bit_length()
    if (e - s) % 2:
        s += 1
    if s >= 0:
        q_low, q_high = (num << s) // den, -((-num << s) // den)
    else:
        q_low, q_high = num // (den << -s), -(-num // (den << -s))
    r_low, r_high = math.isqrt(q_low), math.isqrt(q_high)
    if r_high * r_high < q_high:
        r_high += 1
    half = (e - s) // 2
    return _round(r_low, half, up=False), _round(r_high, half, up=True)


def _round(m: int, e: int, up: bool) -> float:
    """``m 2^e`` (``m >= 0``) rounded down or up to a float64."""
    extra = max(0, m.bit_length() - 53)
    top = m >> extra
    if up and (top << extra) != m:
        top += 1
    try:
        value = math.ldexp(float(top), e + extra)
    except OverflowError:
        return math.inf if up else float.fromhex("0x1.fffffffffffffp+1023")
    if value < 2.0 ** -1000:  # subnormal range: ldexp rounds to nearest
        return 2.0 ** -1000 if up else 0.0
    return value
