"""``lipbound methods``: every registered method prints its guarantee, its scaling and its measured
time on the demo, and the recommendation is generated from the specs (a method added to the
registry shows up in it)."""

from __future__ import annotations

import dataclasses

import pytest

from lipbound.cli import main
from lipbound.cli.demo import DEMO_SHAPE, DEMO_SPEC
from lipbound.cli.common import parse_shape
from lipbound.cli.methods import GUARANTEE, demo_times, methods_table, recommendation
from lipbound.methods import METHODS, SIZES
from lipbound.report import Kind


def blocks(text: str) -> dict[str, str]:
    """``{method name: its block}`` of the guide (a block starts at an unindented ``name:`` line)."""
    out: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        if line.startswith("("):  # the note on how the times were measured
            continue
        if not line.startswith(" "):
            name = line.split(":")[0]
            out[name] = line
        else:
            out[name] += "\n" + line
    return out


def test_every_registered_method_prints_a_guarantee_a_scaling_note_and_a_demo_time():
    guide = blocks(methods_table())
    assert list(guide) == list(METHODS)
    for name, spec in METHODS.items():
        block = guide[name]
        assert spec.scaling.strip() and f"scaling: {spec.scaling}" in block, name
        assert GUARANTEE[spec.guarantee] in block.splitlines()[0], name
        assert "on the demo" in block and "not measured" not in block, f"{name}: rerun benchmarks/methods_guide.py"


def test_the_guarantee_texts_say_what_each_kind_promises():
    assert set(GUARANTEE) == set(Kind)
    assert "upper" in GUARANTEE[Kind.CERTIFIED_UPPER] and "lower" in GUARANTEE[Kind.WITNESSED_LOWER]
    assert "upper" in GUARANTEE[Kind.EXACT] and "lower" in GUARANTEE[Kind.EXACT]
    assert "no guarantee" in GUARANTEE[Kind.ESTIMATE]


def test_the_measured_times_are_of_todays_demo_network():
    """The file ``benchmarks/methods_guide.py`` writes covers every method, on the demo that
    ``lipbound demo`` runs: rerun the script when either changes."""
    times = demo_times()
    assert times["model"] == DEMO_SPEC.rsplit("/", 1)[-1]
    assert tuple(times["input_shape"]) == parse_shape(DEMO_SHAPE)
    assert set(times["methods"]) == set(METHODS)
    for name, m in times["methods"].items():
        # an exact method cut short by its cap keeps only its certified upper end
        kinds = {METHODS[name].guarantee.value} | ({"certified_upper"} if name == "exact" else set())
        assert m["seconds"] >= 0 and ("not_applicable" in m or m["kind"] in kinds)


def test_a_measurement_is_shown_as_measured():
    times = {"model": "m", "input_shape": [3], "threads": 1, "measured": "today",
             "methods": {"autolip": {"seconds": 1.234, "value": 2.5, "kind": "certified_upper", "stopped_by": None},
                         "lipsdp": {"seconds": 0.1, "not_applicable": "LMI too large"},
                         "lower": {"seconds": 9.0, "value": 0.5, "kind": "witnessed_lower", "stopped_by": "time"}}}
    guide = blocks(methods_table(times))
    assert "1.2 s, value 2.5" in guide["autolip"] and "does not apply (LMI too large)" in guide["lipsdp"]
    assert "stopped by its time budget" in guide["lower"] and "not measured" in guide["seqlip"]
    assert "fastest certified bound came from autolip" in recommendation(times).replace("\n", " ")


def test_the_recommendation_is_generated_from_the_specs(monkeypatch):
    text = " ".join(recommendation({}).split())
    assert all(name in text for name in METHODS)  # every method is recommended for something
    new = dataclasses.replace(METHODS["exact"], name="brand-new", guarantee=Kind.CERTIFIED_UPPER, size="small",
                              in_best=False, in_default=False)
    monkeypatch.setitem(METHODS, "brand-new", new)
    text = " ".join(recommendation({}).split())
    assert f"Certified upper bounds for models of {SIZES['small']}: brand-new." in text
    with pytest.raises(ValueError, match="size"):
        dataclasses.replace(new, size="huge")


def test_the_cli_prints_the_guide(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == methods_table().strip()
