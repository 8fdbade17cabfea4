"""The floating-point units every rigorous error bound of lipbound is written in (Higham, *Accuracy
and Stability of Numerical Algorithms*, 2nd ed., §2.1 and §3.1): one home for them, read by the
certified norms here and by :mod:`lipbound.methods.float_error`.

* ``u``: the unit roundoff, ``2^-53`` in float64 (:data:`U64`) and ``2^-24`` in float32
  (:data:`U32`): a correctly rounded operation has relative error at most ``u``.
* ``gamma_k = k u / (1 - k u)`` (:func:`gamma`): the relative error bound of ``k`` successive
  operations, or of a sum of ``k`` terms in any order (Higham Lemma 3.1), valid for ``k u < 1``.
* :data:`UP` ``= 1 + 2^-50``: a factor that rounds one float64 result of a few operations (a few
  units of ``2^-53``) upwards, used after each step of a bound computed in float64.
* :data:`TINY64` ``= 2^-1022`` (smallest normal float64) and :data:`ETA64` ``= 2^-1074`` (smallest
  subnormal): absolute error terms that cover underflow.
"""

from __future__ import annotations

from ..errors import NotApplicable

__all__ = ["U64", "U32", "UP", "TINY64", "ETA64", "gamma"]

U64 = 2.0 ** -53
U32 = 2.0 ** -24
UP = 1 + 2.0 ** -50
TINY64 = 2.0 ** -1022
ETA64 = 2.0 ** -1074


def gamma(k: int, u: float = U64) -> float:
    """``gamma_k = k u / (1 - k u)`` for unit roundoff ``u`` (float64 by default); 0 for ``k <= 0``.

    Raises:
        NotApplicable: for ``k u >= 1/2`` (no useful bound).
    """
    k = max(k, 0)
    if k * u >= 0.5:
        raise NotApplicable(f"{k} terms per inner product is too many for a rounding bound with unit roundoff {u:g}")
    return k * u / (1 - k * u)
