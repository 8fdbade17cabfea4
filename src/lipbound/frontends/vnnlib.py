"""VNN-LIB properties (the input/output specifications of the VNN-COMP verification competitions).

A ``.vnnlib`` file is a list of SMT-LIB s-expressions over real variables ``X_i`` (inputs) and
``Y_j`` (outputs). :func:`load_vnnlib` reads the subset the competitions use:

* ``(declare-const X_0 Real)``, ``(declare-const Y_0 Real)``;
* ``(assert ATOM)`` with ``ATOM`` one of ``(<= a b)``, ``(>= a b)``, ``(= a b)``, where ``a`` and ``b``
  are variables or numbers (``0.5``, ``-1e-3``, ``(- 0.5)``);
* ``(assert (and ATOM ...))`` and ``(assert (or (and ATOM ...) ...))``: an ``or`` over inputs is a
  **union of boxes** (each branch intersected with the top-level input bounds); over outputs it is
  kept as data. A branch may not mix inputs and outputs.
* comments from ``;`` to the end of the line.

The input set is a :class:`~lipbound.methods.region.Box` (or a
:class:`~lipbound.methods.region.BoxUnion`); every ``X_i`` needs a lower and an upper bound. The
output constraints (in VNN-COMP, the *unsafe* set) become a disjunction of conjunctions of linear
atoms ``sum_j c_j Y_j <= b``. A robustness property of class ``y`` ("some ``Y_j >= Y_y``, ``j != y``",
one atom per branch, every other output once) gives ``VnnlibProperty.label = y``.

Anything else raises :class:`~lipbound.errors.InvalidInput` naming the file and the line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch

from ..errors import InvalidInput
from ..methods.region import Box, BoxUnion, register_region_reader

__all__ = ["LinearAtom", "VnnlibProperty", "load_vnnlib", "parse_vnnlib"]

_VAR = re.compile(r"^([XY])_(\d+)$")
_TOKEN = re.compile(r"\(|\)|[^\s()]+")


@dataclass(frozen=True)
class LinearAtom:
    """``sum_j coeffs[j] * Y_j <= bound`` (an output constraint)."""

    coeffs: tuple[tuple[int, float], ...]
    bound: float

    def to_dict(self) -> dict:
        return {"coeffs": {f"Y_{j}": c for j, c in self.coeffs}, "bound": self.bound}


@dataclass
class VnnlibProperty:
    """A VNN-LIB property: ``region`` (the input box, or union of boxes, reshaped to the input shape
    when one was given), ``n_outputs``, ``output`` (a disjunction of conjunctions of
    :class:`LinearAtom`; empty when the file constrains no output), ``label`` (the class of a
    robustness property, else None) and ``path``."""

    region: Box | BoxUnion
    n_outputs: int
    output: list[list[LinearAtom]] = field(default_factory=list)
    label: int | None = None
    path: str = "<string>"

    def describe(self) -> str:
        label = "" if self.label is None else f", robustness of class {self.label}"
        return f"VNN-LIB {Path(self.path).name}: {self.region.describe()}{label}"


# an s-expression: a token with its line, or a list with the line of its "("
_Expr = Union[tuple[str, int], "_List"]


class _List(list):
    line: int = 0


def load_vnnlib(path: str | os.PathLike, input_shape: Sequence[int] | None = None) -> VnnlibProperty:
    """Read the VNN-LIB file ``path`` (module doc). With ``input_shape`` the box is reshaped to it
    (the number of ``X`` variables must match).

    Raises:
        InvalidInput: a missing file, a malformed or unknown expression (with its line), an input
            without a lower or upper bound, a count of ``X`` variables that differs from the shape.
    """
    p = Path(path)
    if p.suffix.lower() != ".vnnlib":
        raise InvalidInput(f"expected a .vnnlib file, got {str(path)!r}")
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read VNN-LIB file {p}: {exc.strerror or exc}") from None
    return parse_vnnlib(text, input_shape, str(p))


def parse_vnnlib(text: str, input_shape: Sequence[int] | None = None, name: str = "<string>") -> VnnlibProperty:
    """:func:`load_vnnlib` on the text of a file (``name`` appears in the messages)."""
    return _Reader(name).read(text, input_shape)


class _Reader:
    def __init__(self, name: str) -> None:
        self.name = name
        self.declared: dict[str, set[int]] = {"X": set(), "Y": set()}
        self.low: dict[int, float] = {}
        self.high: dict[int, float] = {}
        self.x_branches: list[tuple[dict[int, float], dict[int, float]]] | None = None
        self.output: list[list[LinearAtom]] = [[]]  # conjunction of the asserts so far, in DNF

    def fail(self, line: int, msg: str) -> InvalidInput:
        return InvalidInput(f"{self.name}, line {line}: {msg}")

    def read(self, text: str, input_shape: Sequence[int] | None) -> VnnlibProperty:
        for expr in self._parse(text):
            self._command(expr)
        n = len(self.declared["X"])
        if n == 0:
            raise InvalidInput(f"{self.name}: declares no input variable X_i")
        for kind, ids in self.declared.items():
            if ids and ids != set(range(len(ids))):
                raise InvalidInput(f"{self.name}: the {kind} variables must be {kind}_0 .. {kind}_{len(ids) - 1}")
        shape = (n,) if input_shape is None else tuple(input_shape)
        if math.prod(shape) != n:
            raise InvalidInput(f"{self.name} declares {n} input variables but the input shape {shape} has "
                               f"{math.prod(shape)} elements")
        branches = self.x_branches or [({}, {})]
        boxes = [self._box(n, shape, lo, hi) for lo, hi in branches]
        region = boxes[0] if len(boxes) == 1 else BoxUnion(boxes)
        output = [c for c in self.output if c]
        n_out = len(self.declared["Y"])
        return VnnlibProperty(region, n_out, output, _label(output, n_out), self.name)

    # ---- s-expressions ----------------------------------------------------------------------
    def _parse(self, text: str) -> list[_Expr]:
        stack: list[_List] = [_List()]
        for lineno, raw in enumerate(text.splitlines(), start=1):
            for tok in _TOKEN.findall(raw.split(";", 1)[0]):
                if tok == "(":
                    new = _List()
                    new.line = lineno
                    stack[-1].append(new)
                    stack.append(new)
                elif tok == ")":
                    if len(stack) == 1:
                        raise self.fail(lineno, "unbalanced ')'")
                    stack.pop()
                else:
                    stack[-1].append((tok, lineno))
        if len(stack) > 1:
            raise self.fail(stack[-1].line, "this '(' is never closed")
        for expr in stack[0]:
            if not isinstance(expr, _List):
                raise self.fail(expr[1], f"unexpected {expr[0]!r} outside parentheses")
        return stack[0]

    def _head(self, expr: _Expr) -> str | None:
        return expr[0][0] if isinstance(expr, _List) and expr and not isinstance(expr[0], _List) else None

    def _line(self, expr: _Expr) -> int:
        return expr.line if isinstance(expr, _List) else expr[1]

    # ---- commands -----------------------------------------------------------------------------
    def _command(self, expr: _List) -> None:
        head = self._head(expr)
        if head == "declare-const":
            if len(expr) != 3 or isinstance(expr[1], _List) or isinstance(expr[2], _List) or expr[2][0] != "Real":
                raise self.fail(expr.line, "expected (declare-const X_i Real) or (declare-const Y_j Real)")
            m = _VAR.match(expr[1][0])
            if not m:
                raise self.fail(expr.line, f"unknown variable name {expr[1][0]!r} (expected X_i or Y_j)")
            self.declared[m.group(1)].add(int(m.group(2)))
        elif head == "assert":
            if len(expr) != 2:
                raise self.fail(expr.line, "assert takes one expression")
            self._assert(expr[1])
        else:
            raise self.fail(expr.line, f"unknown command {head or '(...)'!r} (expected declare-const or assert)")

    def _assert(self, expr: _Expr) -> None:
        head = self._head(expr)
        if head == "or":
            branches = [self._conjunction(b) for b in expr[1:]]
            if not branches:
                raise self.fail(self._line(expr), "an empty (or)")
            kinds = {k for k, _ in branches}
            if kinds == {"X"}:
                if self.x_branches is not None:
                    raise self.fail(self._line(expr), "a second (or) over the inputs is not supported")
                self.x_branches = [self._bounds(atoms) for _, atoms in branches]
            elif kinds == {"Y"}:
                self.output = [c + d for c in self.output for d in (self._linear(a) for _, a in branches)]
            else:
                raise self.fail(self._line(expr), "an (or) whose branches mix inputs X and outputs Y is not supported")
            return
        kind, atoms = self._conjunction(expr)
        if kind == "X":
            lo, hi = self._bounds(atoms)
            for i, v in lo.items():
                self.low[i] = max(v, self.low.get(i, -math.inf))
            for i, v in hi.items():
                self.high[i] = min(v, self.high.get(i, math.inf))
        else:
            extra = self._linear(atoms)
            self.output = [c + extra for c in self.output]

    def _conjunction(self, expr: _Expr) -> tuple[str, list[tuple[str, _Expr, _Expr, int]]]:
        """``(and ATOM ...)`` or one ATOM, as ``("X" | "Y", [(op, a, b, line)])``."""
        parts = expr[1:] if self._head(expr) == "and" else [expr]
        atoms = [self._atom(a) for a in parts]
        kinds = {k for k, _ in atoms}
        if len(kinds) != 1:
            raise self.fail(self._line(expr), "a conjunction that mixes inputs X and outputs Y is not supported"
                            if kinds else "an empty (and)")
        return kinds.pop(), [a for _, a in atoms]

    def _atom(self, expr: _Expr) -> tuple[str, tuple[str, _Expr, _Expr, int]]:
        head = self._head(expr)
        if head not in ("<=", ">=", "=") or len(expr) != 3:
            raise self.fail(self._line(expr), f"unknown or malformed expression {head or '(...)'!r}; expected "
                            "(<= a b), (>= a b), (= a b), (and ...) or (or (and ...) ...)")
        names = [self._var(t) for t in expr[1:]]
        kinds = {k for k, _ in filter(None, names)}
        if len(kinds) != 1:
            raise self.fail(expr.line, "each comparison needs variables of one kind (X or Y)" if kinds
                            else "a comparison between two numbers")
        return kinds.pop(), (head, expr[1], expr[2], expr.line)

    def _var(self, term: _Expr) -> tuple[str, int] | None:
        if isinstance(term, _List):
            return None
        m = _VAR.match(term[0])
        if not m:
            return None
        kind, idx = m.group(1), int(m.group(2))
        if idx not in self.declared[kind]:
            raise self.fail(term[1], f"{term[0]} is used before its declare-const")
        return kind, idx

    def _number(self, term: _Expr) -> float:
        if isinstance(term, _List) and len(term) == 2 and self._head(term) == "-":
            return -self._number(term[1])
        try:
            value = float(term[0]) if not isinstance(term, _List) else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise self.fail(self._line(term), f"expected a finite number or a variable, got "
                            f"{term[0] if not isinstance(term, _List) else '(...)'!r}")
        return value

    # ---- atoms -----------------------------------------------------------------------------------
    def _bounds(self, atoms: list) -> tuple[dict[int, float], dict[int, float]]:
        """Input atoms as per-variable lower and upper bounds (one variable against a number)."""
        lo: dict[int, float] = {}
        hi: dict[int, float] = {}
        for op, a, b, line in atoms:
            va, vb = self._var(a), self._var(b)
            if (va is None) == (vb is None):
                raise self.fail(line, "an input constraint must compare one X_i with a number")
            i, num = (va[1], self._number(b)) if va is not None else (vb[1], self._number(a))
            if va is None:  # number op X_i: mirror it
                op = {"<=": ">=", ">=": "<=", "=": "="}[op]
            if op in ("<=", "="):
                hi[i] = min(num, hi.get(i, math.inf))
            if op in (">=", "="):
                lo[i] = max(num, lo.get(i, -math.inf))
        return lo, hi

    def _linear(self, atoms: list) -> list[LinearAtom]:
        """Output atoms as ``sum c_j Y_j <= b`` (an ``=`` gives two)."""
        out = []
        for op, a, b, _ in atoms:
            coeffs: dict[int, float] = {}
            const = 0.0
            for term, sign in ((a, 1.0), (b, -1.0)):  # a - b
                v = self._var(term)
                if v is None:
                    const -= sign * self._number(term)
                else:
                    coeffs[v[1]] = coeffs.get(v[1], 0.0) + sign
            c = tuple(sorted((j, s) for j, s in coeffs.items() if s != 0))
            if op in ("<=", "="):
                out.append(LinearAtom(c, const))
            if op in (">=", "="):
                out.append(LinearAtom(tuple((j, -s) for j, s in c), -const))
        return out

    def _box(self, n: int, shape: tuple[int, ...], lo: dict[int, float], hi: dict[int, float]) -> Box:
        low = torch.tensor([max(lo.get(i, -math.inf), self.low.get(i, -math.inf)) for i in range(n)],
                           dtype=torch.float64)
        high = torch.tensor([min(hi.get(i, math.inf), self.high.get(i, math.inf)) for i in range(n)],
                            dtype=torch.float64)
        for what, t in (("lower", low), ("upper", high)):
            missing = torch.nonzero(~torch.isfinite(t)).flatten()
            if len(missing):
                raise InvalidInput(f"{self.name}: X_{missing[0].item()} has no {what} bound (the input set "
                                   "must be a bounded box)")
        bad = torch.nonzero(low > high).flatten()
        if len(bad):
            i = bad[0].item()
            raise InvalidInput(f"{self.name}: X_{i} has lower bound {low[i].item():g} > upper bound {high[i].item():g}")
        return Box(low.reshape(shape), high.reshape(shape))


def _label(output: list[list[LinearAtom]], n_out: int) -> int | None:
    """``y`` when the disjunction is exactly ``Y_j >= Y_y`` for every ``j != y`` (one atom per branch),
    i.e. ``Y_y - Y_j <= 0``; else None."""
    if not output or any(len(c) != 1 for c in output):
        return None
    ys, js = set(), []
    for (atom,) in output:
        coeffs = dict(atom.coeffs)
        if atom.bound != 0 or len(coeffs) != 2 or sorted(coeffs.values()) != [-1.0, 1.0]:
            return None
        ys.add(next(j for j, c in coeffs.items() if c == 1.0))
        js.append(next(j for j, c in coeffs.items() if c == -1.0))
    if len(ys) != 1:
        return None
    y = ys.pop()
    return y if sorted(js) == [j for j in range(n_out) if j != y] else None


register_region_reader(".vnnlib", load_vnnlib)
