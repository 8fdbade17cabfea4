"""VNN-LIB properties: the VNN-COMP files in ../shared/realnets/vnnlib and small strings.

Oracles: the files' own comments ("label: 8"), the bounds re-read from the text with a regular
expression, and the counts in MANIFEST.md (5 ACAS Xu inputs, 784 MNIST pixels, 3x32x32 CIFAR).
"""

import re

import pytest
import torch

import lipbound
from lipbound.errors import InvalidInput
from lipbound.frontends.vnnlib import parse_vnnlib
from lipbound.methods.region import Box, BoxUnion, as_region

DECLARE = "".join(f"(declare-const X_{i} Real)\n" for i in range(2)) + \
    "".join(f"(declare-const Y_{j} Real)\n" for j in range(3))
BOX = "(assert (<= X_0 0.5))\n(assert (>= X_0 -0.5))\n(assert (<= X_1 1e-1))\n(assert (>= X_1 (- 0.25)))\n"


def regex_bounds(text: str, n: int) -> tuple[list[float], list[float]]:
    low, high = [None] * n, [None] * n
    for op, i, v in re.findall(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)", text):
        (high if op == "<=" else low)[int(i)] = float(v)
    return low, high


def test_every_vnncomp_file(realnets):
    files = sorted((realnets / "vnnlib").glob("*.vnnlib"))
    assert files
    for path in files:
        text = path.read_text()
        shape = {"acasxu": (5,), "mnistfc": (784,), "eran": (784,), "cifar10": (3, 32, 32)}[path.name.split("_")[0]]
        prop = lipbound.load_vnnlib(path, shape)
        assert isinstance(prop.region, Box) and prop.region.low.shape == shape
        low, high = regex_bounds(text, prop.region.low.numel())
        assert prop.region.low.flatten().tolist() == low and prop.region.high.flatten().tolist() == high
        label = re.search(r"label:? (\d+)", text) or re.search(r"\(>= Y_\d+ Y_(\d+)\)", text)
        if path.name.startswith("acasxu"):
            assert prop.label is None and prop.n_outputs == 5 and prop.output
        else:
            assert prop.label == int(label.group(1)) and prop.n_outputs == 10 and len(prop.output) == 9
    flat = lipbound.load_vnnlib(realnets / "vnnlib" / "acasxu_prop_4.vnnlib").region
    assert (flat.low == flat.high).tolist() == [False, False, True, False, False]


def test_box_union_and_output_constraints():
    text = DECLARE + "(assert (<= X_1 1.0))\n(assert (>= X_1 0.0))\n" + \
        "(assert (or (and (<= X_0 0.2) (>= X_0 0.0)) (and (<= X_0 1.0) (>= X_0 0.8) (<= X_1 0.5))))\n" + \
        "; unsafe: Y_0 is not the largest\n(assert (or (and (>= Y_1 Y_0)) (and (>= Y_2 Y_0))))\n"
    prop = parse_vnnlib(text)
    assert isinstance(prop.region, BoxUnion) and len(prop.region.parts) == 2
    assert prop.region.parts[1].low.tolist() == [0.8, 0.0] and prop.region.parts[1].high.tolist() == [1.0, 0.5]
    assert prop.region.hull().high.tolist() == [1.0, 1.0]
    assert prop.label == 0
    atom = prop.output[0][0]  # Y_1 >= Y_0  <=>  Y_0 - Y_1 <= 0
    assert dict(atom.coeffs) == {0: 1.0, 1: -1.0} and atom.bound == 0.0


def test_box_reshaped_and_acas_like_output_has_no_label():
    prop = parse_vnnlib(DECLARE + BOX + "(assert (<= Y_0 Y_1))\n(assert (<= Y_0 3.5))\n", (1, 2))
    assert prop.region.low.tolist() == [[-0.5, -0.25]] and prop.region.high.tolist() == [[0.5, 0.1]]
    assert prop.label is None and len(prop.output) == 1 and len(prop.output[0]) == 2
    assert prop.output[0][1].bound == 3.5
    assert as_region(prop, (2,)).high.tolist() == [0.5, 0.1]


@pytest.mark.parametrize("text,message", [
    (DECLARE + BOX + "(assert (< X_0 1.0))\n", "line 10: unknown or malformed expression '<'"),
    (DECLARE + BOX + "(assert (<= X_0 1.0)\n", "line 10: this '(' is never closed"),
    (DECLARE + "(assert (<= X_0 1.0)))\n", "line 6: unbalanced ')'"),
    (DECLARE + "(check-sat)\n", "line 6: unknown command 'check-sat'"),
    (DECLARE + "(assert (<= X_7 1.0))\n", "line 6: X_7 is used before its declare-const"),
    (DECLARE + "(assert (<= X_0 abc))\n", "line 6: expected a finite number"),
    (DECLARE + "(assert (or (and (<= X_0 1.0) (>= Y_0 Y_1))))\n", "line 6: a conjunction that mixes"),
    (DECLARE + "(assert (<= X_0 X_1))\n", "line 6: an input constraint must compare one X_i with a number"),
    (DECLARE + "(assert (<= X_0 1.0))\n(assert (>= X_0 0.0))\n(assert (<= X_1 1.0))\n", "X_1 has no lower bound"),
    (DECLARE + "(assert (<= X_0 0.0))\n(assert (>= X_0 1.0))\n(assert (<= X_1 1.0))\n(assert (>= X_1 0.0))\n",
     "X_0 has lower bound 1 > upper bound 0"),
    ("(declare-const Z_0 Real)\n", "line 1: unknown variable name 'Z_0'"),
])
def test_malformed_files_name_the_line(text, message):
    with pytest.raises(InvalidInput) as exc:
        parse_vnnlib(text, name="bad.vnnlib")
    assert "bad.vnnlib" in str(exc.value) and message in str(exc.value)


def test_input_count_must_fit_the_shape(tmp_path):
    path = tmp_path / "p.vnnlib"
    path.write_text(DECLARE + BOX)
    with pytest.raises(InvalidInput, match=r"declares 2 input variables but the input shape \(3,\)"):
        as_region(str(path), (3,))
    assert as_region(path, (2,)).low.tolist() == [-0.5, -0.25]
    with pytest.raises(InvalidInput, match="cannot read"):
        lipbound.load_vnnlib(tmp_path / "missing.vnnlib")


def test_number_first_atoms_and_a_partial_disjunction():
    text = DECLARE + "(assert (>= 0.5 X_0))\n(assert (<= -0.5 X_0))\n(assert (= X_1 0.25))\n" + \
        "(assert (or (and (>= Y_1 Y_0))))\n"  # Y_2 is missing: not a robustness property of class 0
    prop = parse_vnnlib(text)
    assert prop.region.low.tolist() == [-0.5, 0.25] and prop.region.high.tolist() == [0.5, 0.25]
    assert prop.label is None
