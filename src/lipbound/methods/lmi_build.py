"""Building the Lipschitz LMI of :mod:`lipbound.methods.lmi` from a graph (a :class:`GraphInterpreter`).

Walking the fused graph in topological order, each node's value is its map from the basis blocks:
``{block index: (matrix, entrywise bound of its rounding error)}`` (a float stands for that
multiple of the identity, and for an error bound on the diagonal only). Affine nodes multiply the maps by their dense matrix, sums add
them, concatenations stack them. An activation node reads its pre-activation maps and

* **eliminates its stable neurons** (slope interval ``lo_i == hi_i``, from
  :meth:`~lipbound.graph.ir.Activation.slope_bounds`): the activation is affine on the neuron's
  interval, so its increment is exactly ``lo_i`` times its pre-activation's and its output map is
  ``lo_i`` times that row (zero for a ReLU stably off). No basis variable, no multiplier;
* makes its **unstable** neurons a new basis block with their sectors ``[lo_i, hi_i]``: its output
  map is the selection of these neurons (times the block's power-of-two unit).

So a localized graph whose neurons are mostly stable gives a much smaller LMI (``lmi.eliminated``
counts the neurons removed). The soundness argument for a region is in :mod:`lipbound.methods.lmi`;
the error bounds of each step in its module docstring (*Rounding of the data*). Max pooling and
other node kinds are refused (:class:`~lipbound.errors.UnsupportedOperation`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import InvalidInput, NotApplicable
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input
from ..graph.walk import GraphInterpreter
from ..linalg.operators import Compose, LinearOperator, Permute, Reshape
from .float_error import UNIT_ROUNDOFF, gamma, round_up
from .lmi import BasisBlock, LipschitzLMI, pow2

MAX_WORK = 4e10  # refuse LMIs whose Cholesky factorisation needs more operations (minutes on a CPU)
Map = np.ndarray | float  # a block map; a float stands for that multiple of the identity
Err = np.ndarray | float  # its entrywise error bound; a float: that bound on the diagonal, 0 elsewhere
Tracked = dict[int, tuple[Map, Err]]  # block -> (map, entrywise bound of its rounding error)


ELIMINATE = ("stable", "constant")


def lmi_of_graph(graph: Graph, *, max_size: int = 20000, max_work: float = MAX_WORK,
                 eliminate: str = "stable") -> LipschitzLMI:
    """The LMI data of ``graph`` (module docstring), each map with a bound of its rounding error.
    Raises :class:`NotApplicable` for an LMI of order (input + unstable neurons) larger than
    ``max_size``, one whose factorisation (order x bandwidth^2) would exceed ``max_work``
    operations, or a network with no unstable neuron (it is affine on its region);
    :class:`~lipbound.errors.UnsupportedOperation` for max pooling.

    ``eliminate``: ``"stable"`` folds every stable neuron into the maps (the smallest LMI: LipSDP);
    ``"constant"`` only those of slope 0, so that a chain stays a chain (a stable neuron of slope
    ``a != 0`` then stays a basis neuron with the equality sector ``[a, a]``, which is valid too):
    the sequential recursion of :mod:`lipbound.methods.eclipse` is tighter on chains."""
    if eliminate not in ELIMINATE:
        raise InvalidInput(f"eliminate must be one of {ELIMINATE}, got {eliminate!r}")
    g = graph.fused()
    builder = _Builder(g, max_size, eliminate == "constant")
    env = builder.run(g)
    blocks = builder.blocks
    if len(blocks) < 2:
        raise NotApplicable("the network has no unstable neuron (no activation, or every neuron stable on the "
                            "region): it is affine there, and its constant is the norm of one matrix (autolip, exact)")
    n_out = math.prod(g.nodes[g.output].shape)
    out = {k: (_dense(m, n_out, blocks[k].size), _dense(e, n_out, blocks[k].size)) for k, (m, e) in env[g.output].items()}
    s_out = pow2(sum(float(np.linalg.norm(m)) for m, _ in out.values()))
    lmi = LipschitzLMI(blocks, {k: m / s_out for k, (m, _) in out.items()}, s_out,
                       {k: row_norms(e) / s_out for k, (_, e) in out.items()}, eliminated=builder.eliminated)
    bw = lmi.bandwidth(0)
    if lmi.size * (bw + 1) ** 2 > max_work:
        raise NotApplicable(f"the LMI has order {lmi.size} and bandwidth {bw}: about {lmi.size * (bw + 1) ** 2:.2g} "
                            f"operations per factorisation (> max_work {max_work:.2g}); use autolip or seqlip")
    return lmi


class _Builder(GraphInterpreter[Tracked]):
    """One visit per node kind; ``blocks`` grows with each activation that keeps unstable neurons."""

    name = "the LMI builder (lipsdp, lipsdp-layer, eclipse-fast)"

    def __init__(self, graph: Graph, max_size: int, only_constant: bool) -> None:
        self.graph = graph
        self.only_constant = only_constant
        self.max_size = max_size
        self.blocks: list[BasisBlock] = []
        self.total = 0  # order of the LMI so far
        self.eliminated = 0

    def visit_input(self, node: Input) -> Tracked:
        self.total = math.prod(node.shape)
        self.blocks.append(BasisBlock(node.name, self.total))
        return {0: (1.0, 0.0)}

    def visit_affine(self, node: Affine, x: Tracked) -> Tracked:
        limit = 4 * self.max_size ** 2
        if node.op.in_numel * node.op.out_numel > limit:
            raise NotApplicable(f"affine node {node.origin!r} is too large to materialise for an SDP")
        w, w_abs, g = _materialise(node.op, limit)
        return {k: _product(w, w_abs, g, m, e, self.blocks[k].size) for k, (m, e) in x.items()}

    def visit_activation(self, node: Activation, x: Tracked) -> Tracked:
        size = math.prod(node.shape)
        lo, hi = (v.reshape(-1).numpy() for v in node.slope_bounds())
        pre = {k: (_dense(m, size, self.blocks[k].size), _dense(e, size, self.blocks[k].size)) for k, (m, e) in x.items()}
        live = (lo != hi) | ((lo != 0) & self.only_constant)
        n = int(live.sum())
        out: Tracked = {}
        fixed = np.where(live, 0.0, lo)
        if np.any(fixed):  # stable neurons of slope != 0: the output is lo_i times the pre-activation
            out = {k: _scale_rows(fixed, m, e) for k, (m, e) in pre.items()}
        self.eliminated += size - n
        if n == 0:
            return out
        self.total += n
        if self.total > self.max_size:
            raise NotApplicable(f"the LMI would have order > {self.max_size} (input + unstable neurons); raise "
                                "max_size or use a compositional method")
        rows = {k: (m[live], row_norms(e[live])) for k, (m, e) in pre.items()}
        s = pow2(sum(float(np.linalg.norm(m)) for m, _ in rows.values()))
        idx = len(self.blocks)
        self.blocks.append(BasisBlock(node.name, n, lo[live], hi[live], {k: m / s for k, (m, _) in rows.items()},
                                      {k: e / s for k, (_, e) in rows.items()}))
        if n == size:
            out[idx] = (s, 0.0)
        else:
            select = np.zeros((size, n))
            select[np.flatnonzero(live), np.arange(n)] = s
            out[idx] = (select, np.zeros_like(select))
        return out

    def visit_add(self, node: Add, *xs: Tracked) -> Tracked:
        size = math.prod(node.shape)
        terms: dict[int, list[tuple[np.ndarray | float, float]]] = {}
        for x in xs:
            for k, me in x.items():
                terms.setdefault(k, []).append(me)
        return {k: _sum(ts, size, self.blocks[k].size) for k, ts in terms.items()}

    def visit_concat(self, node: Concat, *xs: Tracked) -> Tracked:
        shapes = [self.graph.nodes[i].shape for i in node.inputs]
        parts = [{k: (_dense(m, math.prod(sh), self.blocks[k].size), _dense(e, math.prod(sh), self.blocks[k].size))
                  for k, (m, e) in x.items()}
                 for x, sh in zip(xs, shapes)]
        return _concat(node, parts, shapes)


def _scale_rows(d: np.ndarray, m: Map, e: Err) -> tuple[np.ndarray, np.ndarray]:
    """``diag(d) m`` and its entrywise error bound ``|d| e + u |d| |m|`` (one rounding per entry;
    a row of slope 0 is exactly zero, error included)."""
    m, e = _dense(m, d.size, d.size), _dense(e, d.size, d.size)
    ad = np.abs(d)[:, None]
    return d[:, None] * m, round_up(ad * e + UNIT_ROUNDOFF * ad * np.abs(m), 2)


def _materialise(op: LinearOperator, max_entries: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(W^, |W|~, g)``: the matrix of ``op`` in float64, an entrywise bound ``|W|~ >= |A_m| ... |A_1|``
    of its exact factors' absolute product, and ``g = gamma_K`` with ``|W^ - W| <= g |W|~`` (module
    docstring of :mod:`lipbound.methods.lmi`). Kept in the operator's memo
    (:meth:`~lipbound.linalg.linear_operator.LinearOperator.norm_cache`, emptied when a weight
    changes), so the SDP methods run on one graph materialise each layer once."""
    memo = op.norm_cache()
    if "lmi_dense" not in memo:
        memo["lmi_dense"] = _materialised(op, max_entries)
    return memo["lmi_dense"]


def _materialised(op: LinearOperator, max_entries: int) -> tuple[np.ndarray, np.ndarray, float]:
    with torch.backends.cudnn.flags(enabled=False):  # no FFT / Winograd convolutions
        op = op.to(dtype=torch.float64)
        w = op.to_dense().detach().cpu().numpy()
        factors = [f for f in (op.ops if isinstance(op, Compose) else [op]) if not isinstance(f, (Reshape, Permute))]
        g = gamma(sum(f.in_numel + 16 for f in factors))
        if len(factors) <= 1:
            absolute = np.abs(w)
        else:
            if any(f.in_numel * f.out_numel > max_entries for f in factors):
                raise NotApplicable(f"a factor of {op.label!r} is too large to materialise for an SDP")
            absolute = np.eye(op.ops[0].in_numel)
            for f in op.ops:  # permutations included (0/1 entries, exact); reshapes are the identity
                if not isinstance(f, Reshape):
                    absolute = np.abs(f.to_dense().detach().cpu().numpy()).reshape(f.out_numel, -1) @ absolute
            absolute = absolute.reshape(w.shape)
    # each computed |a_i| is within g of its exact factor's, the product of non-negative terms within g too
    return w, absolute * (1 + 4 * g), g


def _product(w: np.ndarray, w_abs: np.ndarray, g: float, m: Map, e: Err, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``W^ m`` (``m`` a matrix, or a float for that multiple of the identity of order ``cols``)
    and its entrywise error bound ``|W|~ (c |m| + e)``, ``c = gamma_k (1 + g) + g`` (module
    docstring), rounded up."""
    if isinstance(m, float) and isinstance(e, float):  # w m is one rounding per entry (exact for a power of two)
        c = g + UNIT_ROUNDOFF * (1 + g)
        return w * m, round_up(w_abs * (c * abs(m) + e), 2)
    m, e = _dense(m, w.shape[1], cols), _dense(e, w.shape[1], cols)
    c = gamma(w.shape[1]) * (1 + g) + g
    return w @ m, round_up(w_abs @ (c * np.abs(m) + e), w.shape[1] + 2)


def _sum(terms: list[tuple[Map, Err]], rows: int, cols: int) -> tuple[Map, Err]:
    """The sum of block maps and its entrywise error bound: theirs plus ``gamma_{q-1}`` times the
    maps' absolute values."""
    maps = [m for m, _ in terms]
    if all(isinstance(m, float) for m in maps) and all(isinstance(e, float) for _, e in terms):
        return float(sum(maps)), round_up(sum(e for _, e in terms) + gamma(len(terms) - 1) * sum(abs(m) for m in maps),
                                          2 * len(terms))
    value = sum(_dense(m, rows, cols) for m in maps)
    err = sum(_dense(e, rows, cols) for _, e in terms) + gamma(len(terms) - 1) * sum(np.abs(_dense(m, rows, cols))
                                                                                     for m in maps)
    return value, round_up(err, 2 * len(terms))


def row_norms(e: np.ndarray) -> np.ndarray:
    """Upper bounds of the Euclidean norms of the rows of ``e >= 0`` (rounded up)."""
    return round_up(np.sqrt(np.einsum("ij,ij->i", e, e)), e.shape[1] + 1)


def _dense(m: np.ndarray | float, rows: int, cols: int) -> np.ndarray:
    """A block map as a matrix (a float stands for that multiple of the identity)."""
    if isinstance(m, float):
        if rows != cols:
            raise NotApplicable(f"cannot read a block of size {cols} as {rows} values")
        return m * np.eye(rows)
    return m


def _concat(node: Concat, parts: list[Tracked], shapes: list[tuple[int, ...]]) -> Tracked:
    """Maps of a concatenation and their entrywise error bounds: both stack the inputs' rows in the
    order of the flattened output (exact)."""
    starts = np.cumsum([0] + [math.prod(s) for s in shapes])
    idx = [torch.arange(int(starts[i]), int(starts[i + 1])).reshape(s) for i, s in enumerate(shapes)]
    order = torch.cat(idx, dim=node.axis).reshape(-1).numpy()
    acc: dict[int, np.ndarray] = {}
    err: dict[int, np.ndarray] = {}
    for i, p in enumerate(parts):
        for k, (m, e) in p.items():
            acc.setdefault(k, np.zeros((int(starts[-1]), m.shape[1])))[starts[i]:starts[i + 1]] += m
            err.setdefault(k, np.zeros((int(starts[-1]), m.shape[1])))[starts[i]:starts[i + 1]] += e
    return {k: (m[order], err[k][order]) for k, m in acc.items()}
