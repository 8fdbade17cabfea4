"""The machine's speed has one home (methods/machine.py), and plans read it from sizes only.

Oracles: the source itself (AST: no other module binds a rate to a number), sampled Jacobian norms
of the ``nn.Module`` (lower bounds of ``L(f)``) for the "blocks" path's certified value.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch

import lipbound
from lipbound.methods import cost, machine
from lipbound.methods.lipsdp_banded import structure_of_graph
from lipbound.methods.lipsdp_conv import blocks_plan, lipsdp_blocks, search_evaluations, solve_seconds, start_seconds

from conftest import jacobian_norm
from test_lipsdp_conv import small_cnn

SRC = Path(__file__).resolve().parents[1] / "src" / "lipbound"


def _is_number(node: ast.AST) -> bool:
    """A literal number, or arithmetic on literal numbers only (``1 / 1e10``, ``2.0 ** -53``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
    if isinstance(node, ast.UnaryOp):
        return _is_number(node.operand)
    return isinstance(node, ast.BinOp) and _is_number(node.left) and _is_number(node.right)


def speed_constants(path: Path) -> list[str]:
    """Module-level names of ``path`` bound to a number that are named like a machine speed
    (``*_RATE``, ``*_SECONDS``): a rate or a time per unit of work."""
    out = []
    for stmt in ast.parse(path.read_text()).body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        value = getattr(stmt, "value", None)
        for t in targets:
            if isinstance(t, ast.Name) and t.id.endswith(("_RATE", "_SECONDS")) and value is not None and _is_number(value):
                out.append(t.id)
    return out


def test_machine_speeds_are_defined_in_machine_only():
    homes = {p.relative_to(SRC).as_posix(): names for p in sorted(SRC.rglob("*.py")) if (names := speed_constants(p))}
    assert set(homes) == {"methods/machine.py"}, homes
    assert cost.CONSTANTS is machine.METHOD_SECONDS  # the cost model reads the machine's, no copy


def test_a_speed_outside_machine_is_found(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("WORK_RATE = 1e10  # flops per second\nSETUP_EVALUATIONS = 8\n")
    assert speed_constants(bad) == ["WORK_RATE"]


def test_blocks_path_plans_its_solver_from_sizes():
    """A budget that holds the checked start but not the solver (at BLOCKS_RATE) skips the solver on
    every machine: a work cap, the same certified value on every run; a large budget runs it."""
    net, shape = small_cnn(0)
    graph = lipbound.as_graph(net, shape)
    structure = structure_of_graph(graph)
    budget = (start_seconds(structure) + solve_seconds(structure)) / 2  # microseconds: the clock would cut anything
    assert blocks_plan(structure, budget) == "start"
    first, again = lipsdp_blocks(graph, time_budget=budget), lipsdp_blocks(graph, time_budget=budget)
    assert first.details["stopped_by"] == "work" and first.details["iterations"] == 0
    assert first.details["plan"] == "start" and first.details["reduced_order"] is None  # no SVD for the solver
    assert first.kind == again.kind == "certified_upper" and first.value == again.value
    torch.manual_seed(0)
    lower = max(jacobian_norm(net, torch.randn(shape, dtype=torch.float64)) for _ in range(20))
    assert lower <= first.value
    solved = lipsdp_blocks(graph, time_budget=30.0)
    assert solved.details["iterations"] > 0 and solved.details["stopped_by"] != "work"
    assert solved.details["check_search"] == search_evaluations(structure, 30.0)
    assert solved.details["verify_searched"] <= 1 + solved.details["check_search"]  # the plan's cap on the check
    assert lower <= solved.value <= first.value


def test_the_rounding_units_have_one_home():
    """``u = 2^-53``, ``2^-1022`` and ``2^-1074`` are bound to a name only in ``linalg/float_units.py``
    (a module-level ``NAME = 2.0 ** -53``-style assignment anywhere else is a second copy)."""
    import ast
    import pathlib

    import lipbound

    root = pathlib.Path(lipbound.__file__).parent
    units = {2.0 ** -53, 2.0 ** -1022, 2.0 ** -1074}
    copies = []
    for path in root.rglob("*.py"):
        if path.name == "float_units.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign):
                try:
                    value = ast.literal_eval(node.value) if not isinstance(node.value, ast.BinOp) else eval(
                        compile(ast.Expression(node.value), str(path), "eval"), {})
                except Exception:
                    continue
                if isinstance(value, float) and value in units:
                    copies.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not copies, f"rounding units defined outside linalg/float_units.py: {copies}"
