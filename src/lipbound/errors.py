"""Errors raised by lipbound.

Every error the library raises on purpose derives from :class:`LipboundError`, so that
callers (and the CLI) can tell a refusal with a readable message from a bug.
"""

from __future__ import annotations


class LipboundError(Exception):
    """Base class of every error lipbound raises on purpose."""


class UnsupportedOperation(LipboundError):
    """The model contains an operation lipbound cannot bound.

    The message names the operation and where it sits in the model (module path or fx node),
    e.g. ``"LayerNorm at 'encoder.norm' (fx node 'encoder_norm') is not supported: ..."``.
    """

    def __init__(self, op: str, where: str, reason: str = "") -> None:
        self.op = op
        self.where = where
        self.reason = reason
        msg = f"{op} at {where} is not supported"
        if reason:
            msg += f": {reason}"
        super().__init__(msg)


class InvalidInput(LipboundError, ValueError):
    """Bad input: wrong input shape, non-finite weights, unreadable file, bad option."""


class NotApplicable(LipboundError):
    """A method does not apply to this model (wrong architecture, too large for it, a missing
    optional dependency it cannot do without); the message says why. ``"best"`` and
    :func:`lipbound.estimate` callers may skip such a method and go on with others."""
