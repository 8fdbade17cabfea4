"""``lipbound methods``: the registered methods, their guarantees and costs."""

from __future__ import annotations

import argparse

from ..methods import METHODS


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("methods", help="list the methods").set_defaults(func=lambda args: print(methods_table()) or 0)


def methods_table() -> str:
    """One block per registered method: name, guarantee, what it computes, what it applies to, cost."""
    blocks = []
    for spec in METHODS.values():
        tags = [t for t, on in (("region", spec.takes_domain), ("time budget", spec.budgeted),
                                ("in best", spec.in_best), ("default", spec.in_default is not False)) if on]
        blocks.append(f"{spec.name}  [{spec.guarantee.value}]{'  (' + ', '.join(tags) + ')' if tags else ''}\n"
                      f"    {spec.summary}\n    applies to: {spec.applies_to}\n    cost: {spec.cost}")
    return "\n".join(blocks)
