"""Pre-activation bounds of a ReLU chain on a box, refined by a split tree over its unstable neurons
(``localize(graph, region, method="split-crown")``).

**Why.** On deep MLPs (ERAN 9x200, mnistfc 256x6) CROWN leaves most neurons of the deep layers unstable
where few switch (benchmarks/results/preactivation_gap.md): each unstable neuron's relaxation widens every
later layer's bounds. Fixing the sign of a few early unstable neurons makes their ReLUs exact, and the
later layers' CROWN bounds on each side come out much tighter.

**The tree.** A node is the set of inputs of the box whose ReLUs satisfy its splits (``z_i >= 0`` or
``z_i <= 0``), with bounds ``[l, u]`` of every hidden neuron that hold on it (its parent's, the split
neuron's clamped at 0, intersected with CROWN's under the splits: :func:`.split_crown.node_bounds`). The
root is the box with CROWN's bounds. Each round splits the leaves with the most unstable neurons (at
least half of the leaves that have any, most unstable first), each on its own neuron:

* in the **earliest layer** that still has unstable neurons in that leaf (a split in layer ``m`` can only
  tighten the layers after ``m``; the first layer's halfspaces are linear in ``x``);
* the neuron with the largest **BaBSR-like score** ``(-l u / (u - l)) * ||W_{m+1}[:, i]||_1``: the
  height of its triangle relaxation at the kink (what CROWN's upper line overestimates) times how much
  of it the next layer takes.

Both children are bounded (batches of ``batch`` nodes, one batched back-substitution per layer, with
the split constraints below); a child
whose bounds cross (``l_i > u_i`` for some neuron) holds **no input** (its bounds are sound on it) and is
dropped. The tree stops when ``max_leaves`` leaves exist, or as many as the planned budget pays for
(``stopped_by: "work"``, a deterministic cap: the same box and budget give the same bounds on any machine;
the plan prices each node by :func:`node_seconds`), when no leaf has an unstable neuron left
(``"converged"``), when splitting has stalled (``"stalled"``, only with ``min_gain > 0``: each time the
leaf count has doubled, the union of the leaves' bounds must have fewer unstable neurons than at the
previous doubling by the fraction ``min_gain``; deterministic too), or at the deadline (``"time"``, an outer cap: a batch holds only the pairs of nodes that, at
the last batch's time per node, end by the deadline; a round cut short keeps the leaves
whose children were not both bounded).

**The result.** Per neuron, the union over the leaves (the least ``l``, the largest ``u``), then once
more CROWN from the union's bounds (the deeper layers' relaxations use the tighter earlier ones),
intersected. **Soundness**: every split covers its parent (each input has ``z_i >= 0`` or ``z_i <= 0``),
so the leaves, dropped ones included, cover the box; a dropped leaf holds no input; each kept leaf's
bounds hold on its inputs; so the union holds on the whole box, and CROWN from sound bounds is sound.
The bounds are never wider than CROWN's: every node's are intersected with its parent's.

**Rounding.** The chain is :func:`.relu_boxes.relu_chain`'s, with enclosures of the exact weights, and
:func:`.relu_crown.crown_layer` adds the rounding of every step (its module doc); clamping at 0 and
taking minima and maxima are exact. So the bounds hold for the exact network.

Any region with a bounding box works: the leaves' CROWN is minimised over the box (for an L2 ball,
a looser but sound bound; the root's ball bounds stay, by the intersections).

**The split constraints in the leaves' bounds** (beta-CROWN-style, Wang et al. 2021, for the first
layer only, whose constraints are halfspaces in ``x``): a leaf's first-layer bounds say
``s_i (z_i - bnd_i) >= 0`` for each neuron stable in it (``s_i = 1, bnd_i = l_i >= 0`` or ``s_i = -1,
bnd_i = u_i <= 0``; a split neuron's ``bnd_i`` is 0), so for any ``beta >= 0`` a row's form satisfies
``<a, z> >= <a - beta s, z> + <beta s, bnd>`` on the leaf, and the right side's minimum over the box is a
sound lower bound (weak duality). ``beta`` is chosen per row by ``beta_iterations`` sign-supergradient steps
from 0 (CROWN), the best iterate kept (:func:`.relu_crown.crown_layer`); deeper splits stay relaxed away.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.ir import Activation, Graph
from .machine import SPLIT_NODE_SECONDS
from .relu_boxes import Layer, _is_relu, chain_relus, relu_chain
from .split_crown import node_bounds

__all__ = ["SplitOptions", "SplitTree", "SplitOutcome", "node_seconds", "planned_leaves", "split_tree",
           "split_refine", "split_crown_bounds", "relu_chain_depth"]

Chain = list[tuple[np.ndarray, np.ndarray]]  # per hidden layer, (l, u) float64, flat


@dataclass(frozen=True)
class SplitOptions:
    """Settings of the split tree: ``max_leaves`` (a work cap: the most leaves; ``2 (max_leaves - 1)``
    nodes are bounded at most), ``batch`` (nodes bounded together), ``beta_iterations`` (steps
    choosing the multipliers of the first layer's sign constraints; 0: plain CROWN in the leaves) and
    ``min_gain`` (the stall rule of the module doc: the least fraction of the unstable neurons of the
    leaves' union that each doubling of the leaf count must stabilise; 0: never stop for a stall)."""

    max_leaves: int = 32
    batch: int = 32
    beta_iterations: int = 4
    min_gain: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.max_leaves, int) and self.max_leaves >= 1 and isinstance(self.batch, int)
                and self.batch >= 2 and isinstance(self.beta_iterations, int) and self.beta_iterations >= 0
                and isinstance(self.min_gain, (int, float)) and 0 <= self.min_gain < 1):
            raise InvalidInput(f"split-crown: max_leaves must be an integer >= 1, batch >= 2, beta_iterations "
                               f">= 0 and 0 <= min_gain < 1, got {self.max_leaves!r}, {self.batch!r}, "
                               f"{self.beta_iterations!r} and {self.min_gain!r}")


@dataclass
class SplitTree:
    """The leaves of a split tree (per leaf, per hidden layer, flat ``(l, u)``: sound on the leaf's
    inputs), how many nodes were bounded and dropped as empty, what stopped the tree (``"work"``,
    ``"converged"``, ``"stalled"``, ``"time"``) and the most leaves it was planned to have
    (:func:`planned_leaves`)."""

    leaves: list[Chain]
    nodes: int
    empty: int
    stopped_by: str
    planned: int


@dataclass
class SplitOutcome:
    """The refined bounds (per hidden layer, flat ``(l, u)``) and the tree they came from."""

    pre: Chain
    tree: SplitTree


def _unstable(pre: Chain) -> int:
    return int(sum(((l < 0) & (u > 0)).sum() for l, u in pre))


def _union(leaves: list[Chain]) -> Chain:
    """Per neuron, the least lower and the largest upper bound over the leaves."""
    return [(np.min([p[m][0] for p in leaves], axis=0), np.max([p[m][1] for p in leaves], axis=0))
            for m in range(len(leaves[0]))]


def _crossed(pre: Chain) -> bool:
    return any(bool((l > u).any()) for l, u in pre)


def _branch(chain: list[Layer], pre: Chain) -> tuple[int, int] | None:
    """The neuron ``(layer, index)`` to split in a leaf with bounds ``pre`` (module doc), or None when
    every neuron is stable."""
    for m, (l, u) in enumerate(pre):
        free = (l < 0) & (u > 0)
        if free.any():
            gap = np.where(free, -l * u / np.where(free, u - l, 1.0), 0.0)
            reach = chain[m + 1].W.abs().sum(dim=0).numpy()
            return m, int(np.argmax(np.where(free, gap * reach, -1.0)))
    return None


def _children(pre: Chain, m: int, i: int) -> list[Chain]:
    """``z_i >= 0`` (lower bound raised to 0) and ``z_i <= 0`` (upper bound lowered to 0) of layer ``m``."""
    out = []
    for active in (True, False):
        kid = [(l.copy(), u.copy()) for l, u in pre]
        if active:
            kid[m][0][i] = 0.0
        else:
            kid[m][1][i] = 0.0
        out.append(kid)
    return out


def node_seconds(chain: list[Layer], beta_iterations: int) -> float:
    """Predicted seconds to bound one node of a batch (:func:`.split_crown.node_bounds`) on the ReLU
    chain ``chain`` with hidden sizes ``n_1 .. n_D`` and ``n_0`` inputs, at the rates
    :data:`~lipbound.methods.machine.SPLIT_NODE_SECONDS` of three work counts: the back-substitutions
    (layer ``t``'s ``n_t`` rows through ``W_t .. W_1``: ``sum_{t >= 2} sum_{j <= t} n_t n_j n_{j-1}``
    multiply-adds), each sign-multiplier step (its rows' first-layer terms through ``W_1``:
    ``sum_{t >= 2} n_t n_1 n_0``) and the ``D`` layers (overhead)."""
    n = [chain[0].W.shape[1]] + [layer.W.shape[0] for layer in chain[:-1]]
    back = sum(n[t] * n[j] * n[j - 1] for t in range(2, len(n)) for j in range(1, t + 1))
    sign = sum(n[t] for t in range(2, len(n))) * n[1] * n[0]
    per_back, per_sign, per_layer = SPLIT_NODE_SECONDS
    return per_back * back + per_sign * sign * beta_iterations + per_layer * (len(n) - 1)


def planned_leaves(chain: list[Layer], options: SplitOptions, budget: float | None) -> int:
    """The most leaves of a tree planned to take ``budget`` seconds: ``options.max_leaves``, and at most
    ``1 + N // 2`` when the budget pays for ``N`` nodes at :func:`node_seconds` each (each split bounds
    two nodes and adds one leaf; the final CROWN from the union counts as one node); None: no plan."""
    if budget is None:
        return options.max_leaves
    nodes = max(0, math.floor(budget / node_seconds(chain, options.beta_iterations)) - 1)
    return max(1, min(options.max_leaves, 1 + nodes // 2))


def split_tree(chain: list[Layer], pre: Chain, low: np.ndarray, high: np.ndarray, *,
               options: SplitOptions = SplitOptions(), budget: float | None = None,
               deadline: float | None = None) -> SplitTree:
    """The split tree of the module doc from the root bounds ``pre`` (sound bounds of the hidden layers
    of the ReLU chain ``chain`` on the box ``[low, high]``, flat), with at most
    :func:`planned_leaves` leaves for the planned ``budget`` (seconds; None: ``options.max_leaves``);
    ``deadline`` (``time.perf_counter()`` seconds) caps it. Its leaves cover the box."""
    leaves = [[(l.copy(), u.copy()) for l, u in pre]]
    most = planned_leaves(chain, options, budget)
    nodes = empty = 0
    pair = options.batch - options.batch % 2  # a batch holds whole pairs of children
    check = (1, _unstable(pre))  # (leaf count, the union's unstable neurons) at the last doubling
    per_node = 0.0  # seconds per node in the last batch: a batch starts only if it should end by the deadline
    while True:
        counts = [_unstable(p) for p in leaves]
        ready = sorted((k for k, c in enumerate(counts) if c), key=lambda k: -counts[k])
        room = most - len(leaves)
        if not ready:
            return SplitTree(leaves, nodes, empty, "converged", most)
        if room <= 0:
            return SplitTree(leaves, nodes, empty, "work", most)
        if options.min_gain > 0 and len(leaves) >= 2 * check[0]:
            now = _unstable(_union(leaves))
            if now > (1 - options.min_gain) * check[1]:
                return SplitTree(leaves, nodes, empty, "stalled", most)
            check = (len(leaves), now)
        chosen = ready[: min(room, math.ceil(len(ready) / 2))]
        kids = [kid for k in chosen for kid in _children(leaves[k], *_branch(chain, leaves[k]))]
        bounded: list[Chain] = []
        while len(bounded) < len(kids):
            size = pair
            if deadline is not None:  # the most whole pairs that should end by the deadline
                left = deadline - time.perf_counter()
                fit = left / per_node if per_node else (pair if left > 0 else 0)
                size = min(pair, 2 * int(fit // 2))
                if size < 2:
                    break  # the leaves whose children were not bounded stay as they are
            t0 = time.perf_counter()
            batch = kids[len(bounded): len(bounded) + size]
            bounded += node_bounds(chain, batch, low, high, options.beta_iterations)
            per_node = (time.perf_counter() - t0) / len(batch)
        if not bounded:
            return SplitTree(leaves, nodes, empty, "time", most)
        nodes += len(bounded)
        split = set(chosen[: len(bounded) // 2])
        kept = [kid for kid in bounded if not _crossed(kid)]
        empty += len(bounded) - len(kept)
        leaves = [p for k, p in enumerate(leaves) if k not in split] + kept


def split_refine(chain: list[Layer], pre: Chain, low: np.ndarray, high: np.ndarray, *,
                 options: SplitOptions = SplitOptions(), budget: float | None = None,
                 deadline: float | None = None) -> SplitOutcome:
    """``pre`` refined by :func:`split_tree` (planned ``budget``, capped by ``deadline``): the union of
    its leaves' bounds, then CROWN from them (module doc). Raises :class:`InvalidInput` when every leaf
    came out empty (``pre`` was not sound: a box holds inputs)."""
    tree = split_tree(chain, pre, low, high, options=options, budget=budget, deadline=deadline)
    if not tree.leaves:
        raise InvalidInput("split-crown: every leaf of the split tree came out empty (the root bounds are not sound)")
    return SplitOutcome(node_bounds(chain, [_union(tree.leaves)], low, high, options.beta_iterations)[0], tree)


def _body(graph: Graph) -> tuple[Graph, bool] | None:
    """``graph`` without a last ReLU (ERAN's nets end with one) and whether it had one; ``graph`` as it
    is when it ends otherwise; None when it ends with another activation."""
    last = graph.nodes[graph.output]
    if not (isinstance(last, Activation) and len(last.inputs) == 1):
        return graph, False
    if not _is_relu(last):
        return None
    return graph.rebuilt({k: v for k, v in graph.nodes.items() if k != graph.output}, last.inputs[0]), True


def _chain(graph: Graph) -> list[Layer] | None:
    """``graph`` as :func:`.relu_boxes.relu_chain` reads it; a chain that ends with a ReLU (ERAN's
    nets) as the chain before it, then the identity (so the last ReLU's input is a hidden layer too)."""
    body = _body(graph)
    chain = None if body is None else relu_chain(body[0])
    if chain is None or not body[1]:
        return chain
    n = chain[-1].W.shape[0]
    eye, zero = torch.eye(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    return [*chain, Layer(eye, torch.zeros_like(eye), zero, zero.clone())]


def relu_chain_depth(graph: Graph) -> int:
    """The number of hidden ReLU layers of ``graph`` when it is a chain of affine layers and ReLUs
    (what :func:`split_crown_bounds` takes), else 0: from its structure alone
    (:func:`.relu_boxes.chain_relus`; no weight is read)."""
    body = _body(graph)
    relus = 0 if body is None else chain_relus(body[0])
    return relus + body[1] if relus else 0


def split_crown_bounds(graph: Graph, low: torch.Tensor, high: torch.Tensor, crown: dict[str, Any], *,
                       options: SplitOptions = SplitOptions(), budget: float | None = None,
                       deadline: float | None = None) -> tuple[dict[str, Any], SplitOutcome]:
    """CROWN's pre bounds ``crown`` (``{activation name: (l, u)}``, sound on the box ``[low, high]``) of
    the ReLU chain ``graph`` refined by :func:`split_refine` (planned ``budget`` seconds, capped by
    ``deadline``), in the same form. Raises
    :class:`UnsupportedOperation` when ``graph`` is not a chain of affine layers and ReLUs."""
    chain = _chain(graph)
    if chain is None:
        raise UnsupportedOperation("split-crown", f"graph '{graph.name}'",
                                   "split-refined pre bounds need a chain of affine layers and ReLUs (an MLP)")
    names = [n.name for n in graph if isinstance(n, Activation)]
    pre = [(crown[n][0].reshape(-1).numpy().astype(np.float64), crown[n][1].reshape(-1).numpy().astype(np.float64))
           for n in names]
    lo = low.reshape(-1).cpu().numpy().astype(np.float64)
    hi = high.reshape(-1).cpu().numpy().astype(np.float64)
    out = split_refine(chain, pre, lo, hi, options=options, budget=budget, deadline=deadline)
    refined = {n: (torch.from_numpy(l).reshape(crown[n][0].shape), torch.from_numpy(u).reshape(crown[n][1].shape))
               for n, (l, u) in zip(names, out.pre)}
    return {**crown, **refined}, out
