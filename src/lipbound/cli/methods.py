"""``lipbound methods``: a guide to the registered methods.

One block per method of :data:`lipbound.methods.METHODS`: what its number guarantees, what it
computes, what it applies to, how its cost scales, and its time on the demo network as measured by
``benchmarks/methods_guide.py`` (stored in :data:`TIMES_FILE`; rerun the script when the demo or
a method changes). Then a recommendation paragraph generated from the specs (guarantee, size,
region, default set, ``best``) and those measurements.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

from ..methods import METHODS, SIZES, MethodSpec
from ..methods.selection import DEFAULT_TIME_BUDGET
from ..report import Kind

TIMES_FILE = Path(__file__).with_name("methods_times.json")

GUARANTEE = {
    Kind.CERTIFIED_UPPER: "certified upper bound (>= L by proof)",
    Kind.EXACT: "exact (certified upper and witnessed lower bound)",
    Kind.WITNESSED_LOWER: "witnessed lower bound (<= L, with a re-checkable witness)",
    Kind.ESTIMATE: "estimate (no guarantee: never use it as a bound)",
}


def register(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("methods", help="a guide to the methods: guarantee, scaling, time on the demo, which to use"
                   ).set_defaults(func=lambda args: print(methods_table()) or 0)


def demo_times(path: Path = TIMES_FILE) -> dict[str, Any]:
    """What ``benchmarks/methods_guide.py`` measured (an empty dict when the file is missing)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def methods_table(times: dict[str, Any] | None = None) -> str:
    """The guide: one block per registered method, then the recommendation (:func:`recommendation`)."""
    times = demo_times() if times is None else times
    where = (f"on the demo ({times.get('model')}, input {tuple(times.get('input_shape', ()))}, "
             f"{times.get('threads')} thread(s), measured {times.get('measured')})") if times else "on the demo"
    blocks = [method_block(spec, times.get("methods", {}).get(spec.name), where) for spec in METHODS.values()]
    return "\n".join(blocks) + "\n\n" + recommendation(times)


def method_block(spec: MethodSpec, measured: dict[str, Any] | None, where: str) -> str:
    """One method: name and guarantee, then what it computes, applies to, scaling, demo time."""
    tags = [t for t, on in (("searches the region", spec.takes_domain and spec.guarantee.is_lower),
                            ("time budget", spec.budgeted), ("in best", spec.in_best),
                            ("default", spec.in_default is not False)) if on]
    return (f"{spec.name}: {GUARANTEE[spec.guarantee]}{'  [' + ', '.join(tags) + ']' if tags else ''}\n"
            f"    {spec.summary}\n    applies to: {spec.applies_to}\n"
            f"    scaling: {spec.scaling}; meant for models of {SIZES[spec.size]}\n    {where}: {_demo_time(measured)}")


def _demo_time(m: dict[str, Any] | None) -> str:
    if m is None:
        return "not measured (run benchmarks/methods_guide.py)"
    if "not_applicable" in m:
        return f"does not apply ({m['not_applicable']})"
    stop = " (stopped by its time budget)" if m.get("stopped_by") == "time" else ""
    return f"{m['seconds']:.2g} s, value {m['value']:.4g}{stop}"


def recommendation(times: dict[str, Any]) -> str:
    """Which method for which question and model size, generated from the specs: the default set,
    the certified methods by size, the exact method, the lower bound, the region methods, ``best``,
    the estimates; then the fastest and the tightest certified method measured on the demo."""
    specs = list(METHODS.values())

    def names(keep) -> str:
        return ", ".join(s.name for s in specs if keep(s)) or "none"

    certified = lambda s: s.guarantee is Kind.CERTIFIED_UPPER and not s.aggregate  # noqa: E731
    text = [f"Which to use. Without -m, lipbound chooses from {names(lambda s: s.in_default is True)} (and "
            f"{names(lambda s: callable(s.in_default))} where they apply: a small network, a small input region) "
            f"those whose predicted time on the model fits the run's --time-budget ({DEFAULT_TIME_BUDGET:g} s "
            "when none is given), the expected-tightest first and the lower bound last."]
    for size, what in SIZES.items():
        if any(certified(s) and s.size == size for s in specs):
            text.append(f"Certified upper bounds for models of {what}: "
                        f"{names(lambda s: certified(s) and s.size == size)}.")
    text.append(f"The exact constant: {names(lambda s: s.guarantee is Kind.EXACT)}. A lower bound with a "
                f"witness: {names(lambda s: s.guarantee is Kind.WITNESSED_LOWER)}. On a region (--domain, "
                "--center/--radius) every method bounds the local constant, through per-neuron slopes, and "
                f"{names(lambda s: s.takes_domain and s.guarantee.is_lower)} search inside it.")
    text += [f"{s.name} combines others: {s.summary}." for s in specs if s.aggregate]
    text.append(f"The methods marked for best: {names(lambda s: s.in_best)}. Estimates, to compare with the "
                f"paper and never as bounds: {names(lambda s: s.guarantee is Kind.ESTIMATE)}.")
    measured = {n: m for n, m in times.get("methods", {}).items()
                if "value" in m and n in METHODS and METHODS[n].guarantee.is_upper}
    if measured:
        fast = min(measured, key=lambda n: measured[n]["seconds"])
        tight = min(measured, key=lambda n: (measured[n]["value"], measured[n]["seconds"]))
        text.append(f"On the demo, the fastest certified bound came from {fast} ({measured[fast]['seconds']:.2g} s) "
                    f"and the tightest from {tight} ({measured[tight]['value']:.4g} in "
                    f"{measured[tight]['seconds']:.2g} s).")
    return textwrap.fill(" ".join(text), 100, break_on_hyphens=False)
