"""Composite activations in ONNX graphs: a subgraph of primitive operators recognised as one
element-wise activation.

Exporters write some activations as several primitive operators. ``torch.onnx`` writes SiLU as
``Mul(x, Sigmoid(x))``; GELU as ``Mul(Mul(x, Add(Erf(Div(x, 1.4142135)), 1)), 0.5)``; its tanh
approximation with ``Mul`` (or ``Pow``) for the cube; Mish as ``Mul(x, Tanh(Softplus(x)))``; and,
below opset 14, Hardswish as ``Mul(x, HardSigmoid(x))``. Taken node by node, each product of two
input-dependent tensors would be refused. Recognised as a whole, the subgraph is one activation
with the facts of :mod:`lipbound.graph.activations`.

Matching is exact algebra, not sampling:

* The subgraph from a tensor ``x`` to a root node is rewritten as a polynomial in ``x`` and in
  *atoms* such as ``Erf(p)``, ``Tanh(p)``, ``Sigmoid(p)``, ``Softplus(p)``, ``HardSigmoid[alpha, beta](p)``
  and ``Clip[lo, hi](p)``, where each ``p`` is itself such a polynomial, in canonical form.
* The polynomial is fully expanded, like terms are merged and terms are sorted. Every order and
  association of the same formula then has the same canonical form: ``x * 0.5 * (1 + erf(x / sqrt 2))``,
  ``0.5 * x * (erf(0.70710677 x) + 1)``, and so on.
* The canonical form must equal one of the :data:`CATALOGUE` forms in structure, with every
  constant within a relative :data:`RTOL`. The float32 rounding of ``1/sqrt(2)`` or ``0.044715`` is
  about ``6e-8``; GELU's slope range keeps a margin of ``1e-4`` around its true extrema.
* Only scalar constants take part.
* No intermediate tensor of the subgraph may be read outside it or be a graph output. Replacing
  the subgraph by the activation then leaves the network's function unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..graph import activations

__all__ = ["Composite", "CompositeActivation", "CATALOGUE", "find_composites", "RTOL"]

RTOL = 1e-6  # relative tolerance on every constant of a composite
MAX_NODES = 24  # largest subgraph considered (GELU's tanh form has 9 nodes)
MAX_TERMS = 16  # largest expanded polynomial
MAX_DEGREE = 8  # largest monomial

# Canonical forms: a polynomial is a sorted tuple of (monomial, coefficient); a monomial is a
# sorted tuple of atoms; an atom is ("x",) or (operator, parameters, polynomial argument).
Poly = tuple
_X_ATOM = ("x",)
_ATOMS = ("Erf", "Tanh", "Sigmoid", "Softplus", "HardSigmoid", "Clip", "Relu")
_ARITHMETIC = ("Add", "Sub", "Mul", "Div", "Neg", "Pow")
_ROOTS = ("Mul", "Div")  # the last operator of every catalogue form, in any exporter's order


class _NoMatch(Exception):
    """The subgraph is not a polynomial of the supported kind in the chosen variable."""


def _skeleton(obj: Any) -> str:
    """``obj`` with every number replaced by ``#``: the structure that must match exactly."""
    if isinstance(obj, float):
        return "#"
    if isinstance(obj, tuple):
        return "(" + ",".join(_skeleton(o) for o in obj) + ")"
    return str(obj)


def _numbers(obj: Any) -> list[float]:
    """The numbers of ``obj`` in the order of its skeleton."""
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, tuple):
        return [n for o in obj for n in _numbers(o)]
    return []


def _key(obj: Any) -> tuple[str, list[float]]:
    return _skeleton(obj), _numbers(obj)


def _poly(terms: dict) -> Poly:
    items = [(m, c) for m, c in terms.items() if c != 0.0]
    if len(items) > MAX_TERMS:
        raise _NoMatch
    return tuple(sorted(items, key=_key))


def _const(c: float) -> Poly:
    return _poly({(): float(c)})


def _add(p: Poly, q: Poly) -> Poly:
    terms = dict(p)
    for m, c in q:
        terms[m] = terms.get(m, 0.0) + c
    return _poly(terms)


def _scale(p: Poly, c: float) -> Poly:
    return _poly({m: a * c for m, a in p})


def _mul(p: Poly, q: Poly) -> Poly:
    terms: dict = {}
    for m1, c1 in p:
        for m2, c2 in q:
            m = tuple(sorted(m1 + m2, key=_key))
            if len(m) > MAX_DEGREE:
                raise _NoMatch
            terms[m] = terms.get(m, 0.0) + c1 * c2
    return _poly(terms)


def _atom(op: str, params: tuple[float, ...], arg: Poly) -> Poly:
    return _poly({((op, tuple(float(v) for v in params), arg),): 1.0})


X = _poly({(_X_ATOM,): 1.0})


def _constant_of(p: Poly) -> float | None:
    """The value of a constant polynomial, else None."""
    if not p:
        return 0.0
    if len(p) == 1 and p[0][0] == ():
        return p[0][1]
    return None


def same_form(p: Poly, q: Poly, rtol: float = RTOL) -> bool:
    """``p`` and ``q`` have the same structure and constants within a relative ``rtol``."""
    if _skeleton(p) != _skeleton(q):
        return False
    return all(math.isclose(a, b, rel_tol=rtol, abs_tol=0.0) for a, b in zip(_numbers(p), _numbers(q)))


# ---- the catalogue ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CompositeActivation:
    """A known activation written with primitive ONNX operators: its canonical ``form`` in ``x``,
    the torch function the graph evaluates (the one the torch frontend uses), its facts."""

    label: str
    form: Poly
    fn: Callable[[torch.Tensor], torch.Tensor]
    facts: activations.ActivationFacts


def _registered(label: str, form: Poly, name: str, **params: Any) -> CompositeActivation:
    """The catalogue entry ``form`` of the registry's activation ``name`` with ``params``."""
    entry = activations.REGISTRY[name]
    return CompositeActivation(label, form, entry.function(**params), entry.facts(**params))


def _catalogue() -> tuple[CompositeActivation, ...]:
    half, one = _const(0.5), _const(1.0)
    cube = _mul(X, _mul(X, X))
    tanh_argument = _scale(_add(X, _scale(cube, 0.044715)), math.sqrt(2.0 / math.pi))
    return (
        _registered("SiLU", _mul(X, _atom("Sigmoid", (), X)), "SiLU"),
        # x Phi(x) = x (1 + erf(x / sqrt 2)) / 2
        _registered("GELU", _mul(_mul(half, X), _add(one, _atom("Erf", (), _scale(X, 1.0 / math.sqrt(2.0))))), "GELU"),
        # x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) / 2
        _registered("GELU(tanh)", _mul(_mul(half, X), _add(one, _atom("Tanh", (), tanh_argument))), "GELU",
                    approximate="tanh"),
        _registered("Mish", _mul(X, _atom("Tanh", (), _atom("Softplus", (), X))), "Mish"),
        # x hardsigmoid(x) with hardsigmoid(t) = clamp(t / 6 + 1/2, 0, 1), as HardSigmoid or as Clip
        _registered("Hardswish", _mul(X, _atom("HardSigmoid", (1.0 / 6.0, 0.5), X)), "Hardswish"),
        _registered("Hardswish", _mul(_scale(X, 1.0 / 6.0), _atom("Clip", (0.0, 6.0), _add(X, _const(3.0)))),
                    "Hardswish"),
        _registered("Hardswish", _mul(X, _atom("Clip", (0.0, 1.0), _add(_scale(X, 1.0 / 6.0), half))), "Hardswish"),
    )


CATALOGUE = _catalogue()


# ---- reading ONNX subgraphs as polynomials -------------------------------------------------------
class _Reader:
    """The canonical form of ONNX tensors as functions of the tensor ``variable``."""

    def __init__(self, nodes: Sequence[Any], producer: dict[str, int], consts: dict[str, np.ndarray],
                 variable: str) -> None:
        self.nodes, self.producer, self.consts, self.variable = nodes, producer, consts, variable
        self.memo: dict[str, Poly] = {}
        self.used: set[int] = set()  # indices of the nodes read
        self.const_rank = 0  # largest rank of a constant operand (it may broadcast x to more axes)

    def scalar(self, name: str) -> float:
        c = self.consts.get(name)
        if c is None or c.size != 1 or c.dtype.kind not in "fiu":
            raise _NoMatch
        self.const_rank = max(self.const_rank, c.ndim)
        return float(c.reshape(-1)[0])

    def read(self, name: str) -> Poly:
        if name == self.variable:
            return X
        if name not in self.memo:
            self.memo[name] = self._read(name)
        return self.memo[name]

    def _read(self, name: str) -> Poly:
        if name in self.consts:
            return _const(self.scalar(name))
        index = self.producer.get(name)
        if index is None:
            raise _NoMatch
        node = self.nodes[index]
        if node.domain not in ("", "ai.onnx") or node.op_type not in _ATOMS + _ARITHMETIC or len(node.output) != 1:
            raise _NoMatch
        self.used.add(index)
        if len(self.used) > MAX_NODES:
            raise _NoMatch
        op = node.op_type
        attrs = {a.name: a for a in node.attribute}
        if op in ("Neg", *_ATOMS):
            arg = self.read(node.input[0])
            if op == "Neg":
                return _scale(arg, -1.0)
            if op == "HardSigmoid":
                alpha = attrs["alpha"].f if "alpha" in attrs else 0.2
                beta = attrs["beta"].f if "beta" in attrs else 0.5
                return _atom(op, (alpha, beta), arg)
            if op == "Clip":
                lo = self._optional(node, 1, attrs, "min", -math.inf)
                hi = self._optional(node, 2, attrs, "max", math.inf)
                return _atom(op, (lo, hi), arg)
            if len(node.input) != 1 or node.attribute:
                raise _NoMatch
            return _atom(op, (), arg)
        if len(node.input) != 2 or node.attribute:
            raise _NoMatch
        a = self.read(node.input[0])
        if op == "Pow":
            n = self.scalar(node.input[1])
            if n not in (1.0, 2.0, 3.0, 4.0):
                raise _NoMatch
            out = a
            for _ in range(int(n) - 1):
                out = _mul(out, a)
            return out
        b = self.read(node.input[1])
        if op == "Add":
            return _add(a, b)
        if op == "Sub":
            return _add(a, _scale(b, -1.0))
        if op == "Mul":
            return _mul(a, b)
        d = _constant_of(b)  # Div: by a nonzero constant only
        if not d:
            raise _NoMatch
        return _scale(a, 1.0 / d)

    def _optional(self, node, position: int, attrs: dict, attr: str, default: float) -> float:
        """A Clip bound: an input (``""`` or absent: none), or the attribute of opsets < 11."""
        if len(node.input) > position and node.input[position]:
            return self.scalar(node.input[position])
        return attrs[attr].f if attr in attrs else default


@dataclass(frozen=True)
class Composite:
    """A subgraph recognised as ``activation`` applied to the ONNX tensor ``variable``: ``root``
    is the index of its last node, ``nodes`` the indices of all its nodes (root included),
    ``const_rank`` the largest rank of its constants."""

    activation: CompositeActivation
    variable: str
    root: int
    nodes: frozenset[int]
    const_rank: int


def find_composites(nodes: Sequence[Any], consts: dict[str, np.ndarray], dependent: set[str],
                    graph_outputs: Sequence[str]) -> dict[int, Composite]:
    """The composite activations of an ONNX node list, by the index of their root node.

    ``consts`` holds the values of the constant tensors, ``dependent`` the names of the tensors
    that depend on the network input. Roots are tried from the last node backwards, so that the
    largest subgraph wins; a node belongs to at most one composite.
    """
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            readers.setdefault(name, set()).add(i)
    for name in graph_outputs:
        readers.setdefault(name, set()).add(-1)
    found: dict[int, Composite] = {}
    taken: set[int] = set()
    for root in reversed(range(len(nodes))):
        node = nodes[root]
        if root in taken or node.op_type not in _ROOTS or not node.output or node.output[0] not in dependent:
            continue
        for variable in _candidates(nodes, producer, root, dependent):
            match = _match(nodes, producer, consts, root, variable)
            if match is None or match[1] & taken:
                continue
            activation, used, const_rank = match
            inner = {out for i in used if i != root for out in nodes[i].output}
            if all(readers.get(out, set()) <= used for out in inner):
                found[root] = Composite(activation, variable, root, frozenset(used), const_rank)
                taken |= used
                break
    return found


def _candidates(nodes, producer: dict[str, int], root: int, dependent: set[str]) -> list[str]:
    """Input-dependent tensors read, directly or through arithmetic and atoms, by ``root``:
    the possible variables of a composite ending there, nearest first."""
    out: list[str] = []
    queue, seen = [root], {root}
    while queue and len(seen) <= MAX_NODES:
        node = nodes[queue.pop(0)]
        for name in node.input:
            if name not in dependent or name in out:
                continue
            out.append(name)
            index = producer.get(name)
            if index is not None and index not in seen and nodes[index].op_type in _ATOMS + _ARITHMETIC:
                seen.add(index)
                queue.append(index)
    return out


def _match(nodes, producer, consts, root: int, variable: str) -> tuple[CompositeActivation, set[int], int] | None:
    reader = _Reader(nodes, producer, consts, variable)
    try:
        form = reader.read(nodes[root].output[0])
    except _NoMatch:
        return None
    for activation in CATALOGUE:
        if same_form(form, activation.form):
            return activation, reader.used, reader.const_rank
    return None
