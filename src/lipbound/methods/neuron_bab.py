"""``"neuron-bab"``: the Lipschitz constant (L2 -> L2) of a ReLU MLP on a box by branch and bound
over the unstable neurons' slopes (neuron splitting, LipBaB-style: Bhowmick et al. 2021).

**What is bounded.** On a box ``X`` (convex), ``L_X = sup ||J(x)||_2`` over its interior with
``J(x) = W_K D_{K-1}(x) ... D_1(x) W_1`` (DESIGN §7). A **node** fixes the state (active: slope 1,
``z_i >= 0``; inactive: slope 0, ``z_i <= 0``) of some unstable neurons; the nodes of a split cover
their parent (every input satisfies ``z_i >= 0`` or ``z_i <= 0``), so the largest bound over the
open leaves bounds ``L_X`` (a point on the split plane belongs to both children; interior points
of the box away from all kinks have an open neighbourhood in one leaf, and the kinks are a null
set, so the sup over interior points is the max over the leaves' sups).

**A node's bound** (certified). 1. Its pre-activation bounds ``[l_i, u_i]``: at the **root**, the
CROWN bounds of :func:`~lipbound.methods.propagation.localize` intersected with those the graph
carries when it is localized on a region that contains the box (the API's ``method="auto"``
localization: on deep ReLU MLPs CROWN refined by a split tree; :mod:`.carried_bounds`: both hold on
the box, so does their intersection); on a graph that carries none, by default
(``root_bounds="auto"``) those of ``localize(method="auto")`` (on ReLU MLPs of at least 3 hidden
layers CROWN refined by a split tree: sound by :mod:`.split_bounds`); in both cases the later layers are then bounded
again by CROWN from the tighter earlier ones and intersected (:func:`.split_crown.node_bounds`);
then tightened by the LP relaxation
(:mod:`~lipbound.methods.split_lp`: weak duality, rigorous rounding) for at most ``root_lp_units``
unstable neurons, the most influential first, within ``root_lp_share`` of the budget (both sides of
each: their optimal points are the first witnesses, and the best starts of ``lower``) (the others keep
their bounds, intersected with CROWN's from the tightened layers: every bound kept holds, so a cut
tightening is still sound); at every **other node**, the parent's bounds with the split neuron clamped
at 0, intersected with CROWN's under the node's splits (:mod:`~lipbound.methods.split_crown`, batched
over the children of up to ``batch`` nodes). Crossing bounds (``l_i > u_i``) prove a node **empty**
(dropped). 2. Each neuron's slope then lies in ``{1}``, ``{0}`` or ``[0, 1]`` at every input of the
node, and ``sup ||J(D)||_2`` over that slope box is bounded by a backward interval Jacobian with the
``vertex_units`` most influential free neurons' slopes enumerated at their ends
(:func:`.interval_jacobian.slope_bound`: certified, rigorous rounding, the weights' materialisation
error carried: :func:`.interval_jacobian.weight_enclosures`).
3. When the node reaches the top of the queue (lazily: a node closed by its interval bound never
pays for them), its bounds are tightened by its LP (at most ``node_lp_units`` neurons, the most
influential first, within ``node_lp_share`` of the budget; the LP enforces the node's splits,
which CROWN relaxes away; one side per neuron, the one that can make it stable, and only the
neurons near enough to stability, with ``node_lp_reach``), and it is also bounded by LipSDP-Neuron (:mod:`.bab_sdp`, its certificate
checked in float64, at most ``sdp_share`` of the budget per call) on the graph whose ReLUs carry
the node's bounds: its LMI (Fazlyab et al. 2019, Theorem 2) holds for every increment
``(dx, dh = D W dx)`` with ``D`` in the per-neuron sectors, so it bounds ``||J(D) v||`` for every ``D``
in the slope box, hence ``||Df(x)||_2`` at every differentiable input of the node. The root's is a
full solve; every other node starts from its parent's checked multipliers, which stay feasible on
the node's LMI (:mod:`.lipsdp_warm`: at most ``warm_iter`` first-order steps, 10x cheaper than a
full solve on mnistfc_256x2). The smaller bound is kept, and never more than the parent's (its
inputs and slope box contain the child's).
(On mnistfc_256x2 the slope-box maximum is within ~5% of LipSDP's value, the interval bound ~3x
above it: benchmarks/results/local_mnistfc.md.)

Only pointwise Jacobian bounds are used: a node's inputs need not be convex (a split of a second
layer neuron cuts the box by a non-linear surface), and no pair argument is made inside a node.

**Branching and pruning.** Best first: the open node with the largest bound is split on its free
neuron of largest influence ``(u - l)``-free rank-one term ``||B_{:,i}|| ||F_{i,:}||`` (``B``: the
interval Jacobian from the output to the neuron, ``F``: from the input to it). A child whose bound
does not exceed the best witnessed lower bound times ``1 + rtol`` is closed.

**Lower bound.** Jacobians at witnesses (:class:`~lipbound.methods.exact_network.WitnessedNet`:
inside the box, off every kink by the rounding bound): the points of every LP solved (root and nodes),
and, once the root is bounded and unsolved, the witnesses of ``lower`` (gradient ascent and region
walk, on ``ascent_share`` of the budget, half of its starts at the best LP points) and ``lower-milp``
(on ``lower_share``) (:class:`~lipbound.methods.bab_witness.WitnessPool`); the best is re-checked
independently at the end. **A lower end whatever happens**: the box's centre is re-checked on the
graph itself before any root work, and so are the root LP's best points before the root's LipSDP
(:class:`~lipbound.methods.bab_witness.Rechecked`: independent of the net's own acceptance test, which
rejects points near a kink and, before its bound was tightened in session 10, every point of ERAN 9x200),
and the root's work ends
by ``1 - ascent_share - lower_share`` of the budget, so the witness searches keep their shares (planned
from the budget, not from a measured time; the root's LPs end ``sdp_share`` before, so that its LipSDP
keeps its share: measured on ERAN 9x200 idx_2954 at 60 s, the root's upper end is 490 (976 once in 3 runs)
with this plan, 731-1077 when the LPs ran first into LipSDP's time, 466 without the witness searches' reserve).
The lower end is the larger of the two re-checked ones; the result carries it, with its witness, as its
``bracket``'s lower end (so :attr:`~lipbound.report.Report.lower` reports it whether or not the search closed).
A **leaf** (every neuron's state known) is one activation pattern: ``exact``'s region check
(:meth:`~lipbound.methods.exact_search.BranchAndBound.check_region`: an LP proposes, an exact-arithmetic
certificate proves the region has no interior point in the box) drops it when empty, and its
verified interior point witnesses its Jacobian's norm otherwise.

It stops when the largest open bound meets the lower bound (``"converged"``, kind ``exact``),
after ``max_nodes`` nodes (``"work"``), when the budget is spent (``"time"``, an outer cap), or
with an open leaf on top whose point was not accepted as a witness (``"open-leaf"``; a best
witness that fails the final re-check says ``"witness-recheck"``): the result is then the
**certified upper** bound reached, never a guess.

The search itself lives in :mod:`.neuron_bab_search`; this module checks the input and assembles the result.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..errors import InvalidInput, NotApplicable, UnsupportedOperation
from ..graph.ir import Graph
from ..report import Result
from .exact import rechecked
from .exact_search import BranchAndBound
from .interval_jacobian import weight_enclosures
from .neuron_bab_search import NodeSearch
from .bab_sdp import NodeSdp
from .bab_witness import Rechecked
from .piecewise import mlp_layers
from .carried_bounds import carried_bounds, localize_keeping
from .region import Box, as_box
from .split_crown import chain_of, node_bounds
from .split_lp import FREE, states

__all__ = ["neuron_bab"]

ROOT_BOUNDS = ("crown", "auto", "split-crown")  # how an unlocalized root is localized (neuron_bab's root_bounds)
RECHECK_SHARE = 0.02  # of the budget: the cap of each re-check's nudges on the graph (bab_witness.Rechecked)


def neuron_bab(graph: Graph, *, seed: int = 0, progress: bool = False, domain: Any = None,
               time_budget: float = 60.0, max_nodes: int = 100_000, rtol: float = 1e-6,
               vertex_units: int = 8, lower_share: float = 0.0, ascent_share: float = 0.25, node_sdp: bool = True, root_lp_share: float = 0.3,
               root_lp_units: int = 256, sdp_share: float = 0.25, batch: int = 8, node_lp_units: int = 256,
               node_lp_share: float = 0.1, node_lp_reach: float | None = 0.2, warm_iter: int = 50,
               strong: int = 1, root_bounds: str = "auto", root_share: float = 0.25) -> Result:
    """Certified local Lipschitz bound (L2 -> L2) of a ReLU MLP on a box by neuron branch and bound
    (module doc).

    Args:
        graph: a chain of affine layers and ReLUs, localized on a box or not.
        seed: seed of ``lower-milp``.
        progress: unused (the method signature).
        domain: a box ``(low, high)``, a ``Box`` or an L-infinity ``Ball``; None: the graph's region.
        time_budget: seconds, an outer cap of the whole call.
        max_nodes: most nodes expanded (a work cap).
        rtol: stop when the upper bound is within this relative gap of the lower bound.
        vertex_units: free neurons whose slope ends are enumerated in each node's bound (``2^k`` batch).
        lower_share: fraction of the budget given to ``lower-milp`` for the first lower bound (default 0:
            measured on mnistfc_256x2 prop 3, a lower-milp run earlier in the same process left the
            root bound at 26.28 instead of 23.90, cause not found; run ``lower-milp`` beside it instead).
        ascent_share: fraction of the budget given to ``lower`` (gradient ascent on the Jacobian's norm in
            the box, half of its starts at the root LP's best points) after the root's bounds, before the
            search (it prunes nodes from the start); on mnistfc_256x2 it stops on its work cap in 7-14 s on a
            loaded machine. What stopped these witness searches is ``details["seed_stopped_by"]``
            (``"time"``: the lower end may differ between runs); ``details["stopped_by"]`` is the search's;
            ``details["lp_lower"]`` the lower end from the root's LP points alone.
        node_sdp: also bound each node by LipSDP-Neuron on its slope box (module doc), while time is left.
        root_lp_share: fraction of the budget the root's LP tightening may take (a cap).
        root_lp_units: most unstable neurons the root's LP tightens, the most influential first (a work cap).
        sdp_share: fraction of the budget one LipSDP bound may take (a cap).
        batch: most nodes expanded together (their children's CROWN bounds in one batch).
        node_lp_units: most unstable neurons a node's LP tightens when it reaches the top (a work cap; 0: none).
        node_lp_share: fraction of the budget one node's LP tightening may take (a cap).
        node_lp_reach: a node's LP bounds each neuron on one side only, the side nearer 0 (the one that
            can make it stable), and only the neurons whose nearer bound is within this fraction of their
            interval from 0 (0.5: all of them; the others' LPs almost never make them stable:
            :meth:`.neuron_bab_search.NodeSearch._tighten`); None: both sides of every one. The root's
            LPs bound both sides. 0.2, not 0.1: on box 8_0.03 the LP points of neurons between 0.1 and
            0.2 carry the witness that closes it (0.1: open at 60 s, lower end 3.08 instead of 4.28).
        warm_iter: most first-order iterations of a node's LipSDP bound warm-started from its parent's
            certificate (:mod:`~lipbound.methods.lipsdp_warm`; 0: a full solve at every node). Each child
            continues from its parent's multipliers, so the steps add up along a branch: on mnistfc_256x2
            box 3_0.05 (60 s, loaded machine) 50 reached 39.9 in 22 nodes, 100 42.7 in 14.
        strong: split candidates tried per node, the most influential first: each one's children
            refined, the pair with the least larger bound kept (1: the most influential, no trial).
        root_bounds: how the root's pre bounds are found when the graph carries none that hold on the
            box (:func:`.carried_bounds.covers`; it does when the API localized it on the region):
            ``"crown"``, or ``"auto"`` / ``"split-crown"`` (CROWN refined by a split tree,
            :func:`~lipbound.methods.propagation.localize`, the tree capped at ``root_share`` of the
            budget). Carried bounds are intersected with CROWN's and no tree is grown again. "auto"
            (split-crown on ReLU MLPs of at least 3 hidden layers, CROWN otherwise), measured on ERAN
            9x200 called directly (60 s per box, benchmarks/results/local.md, "Session 10"): upper bounds
            199, 670, 462, 53839, 8.06 on its 5 boxes against 3120, 1388, 3831, 19474, 8.11 from CROWN's
            root (the tree leaves 19-31% fewer neurons unstable, but 1.3% on the fourth box, where its
            time is lost to the root's LipSDP); on mnistfc 256x6 the tree stalls at once, both within 9%.
        root_share: fraction of the budget the root's split tree may take (``root_bounds`` not "crown").
    """
    if not (time_budget > 0 and max_nodes >= 1 and rtol >= 0 and 0 <= vertex_units <= 16 and 0 <= lower_share < 1
            and 0 <= ascent_share < 1 and ascent_share + lower_share < 1 and 0 <= root_lp_share <= 1 and root_lp_units >= 0 and 0 < sdp_share <= 1 and batch >= 1
            and node_lp_units >= 0 and 0 <= node_lp_share <= 1 and (node_lp_reach is None or 0 < node_lp_reach <= 0.5)
            and warm_iter >= 0 and strong >= 1 and root_bounds in ROOT_BOUNDS and 0 < root_share < 1):
        raise InvalidInput("neuron-bab: time_budget must be > 0, max_nodes >= 1, rtol >= 0, "
                           "0 <= vertex_units <= 16, 0 <= lower_share, 0 <= ascent_share, ascent_share + lower_share < 1, "
                           "0 <= root_lp_share <= 1, "
                           "root_lp_units >= 0, 0 < sdp_share <= 1, batch >= 1, node_lp_units >= 0, "
                           "0 <= node_lp_share <= 1, node_lp_reach None or in (0, 0.5], warm_iter >= 0, strong >= 1, "
                           f"root_bounds one of {ROOT_BOUNDS} and 0 < root_share < 1")
    t0 = time.perf_counter()
    region = graph.region if domain is None else domain
    if region is None:
        raise NotApplicable("neuron-bab: needs a box domain (the constant on a region)")
    if hasattr(region, "norm") and region.norm != math.inf:
        raise NotApplicable("neuron-bab: the region must be a box or an L-infinity ball")
    box = as_box(region if isinstance(region, Box) or not hasattr(region, "low") else (region.low, region.high),
                 graph.input_shape)
    checked = Rechecked(graph, box, seed, RECHECK_SHARE * time_budget)  # a lower end before any root work: the centre's
    checked.offer(box.center.reshape(1, -1).to(torch.float64).numpy())
    try:
        kept = bool(carried_bounds(graph, box))
        method = "crown" if kept else root_bounds
        local = localize_keeping(graph.to(device="cpu", dtype=torch.float64), box, method=method,
                                 time_budget=root_share * time_budget if method != "crown" else None)
        layers = mlp_layers(local, method="neuron-bab")
    except UnsupportedOperation as exc:
        raise NotApplicable(f"neuron-bab: {exc}") from None
    if len(layers) < 2:
        raise NotApplicable("neuron-bab: the network has no ReLU (an affine map: autolip is its constant)")
    if any(l.pieces.two_slope != (0.0, 1.0) for l in layers[:-1]):
        raise NotApplicable("neuron-bab: every activation must be a ReLU")
    net = BranchAndBound(layers, box, rtol)  # its witnesses, and its region checks for the leaves
    pre = [(l.pre[0].numpy(), l.pre[1].numpy()) for l in layers[:-1]]
    chain = chain_of(local, net.w[:-1], net.num.b[:-1])  # with the weights' enclosures
    if kept or method != "crown":  # later layers' CROWN from the tighter earlier ones (intersected: never looser)
        pre = node_bounds(chain, [pre], net.lo, net.hi)[0]
    sdp = NodeSdp(local, warm_iter) if node_sdp else None
    search = NodeSearch(net, weight_enclosures(local, net.w), chain, pre, rtol, vertex_units, sdp, batch, checked)
    search.strong = strong
    search.pool.add(box.center.reshape(1, -1).to(torch.float64).numpy())
    root_end = t0 + (1 - ascent_share - lower_share) * time_budget  # the witness searches' shares kept after it
    lp_end = min(time.perf_counter() + root_lp_share * time_budget, root_end - sdp_share * time_budget)  # LipSDP's kept
    search.start(t0 + time_budget, lp_end, root_lp_units, sdp_share * time_budget,
                 (node_lp_units, node_lp_share * time_budget, node_lp_reach), root_deadline=root_end)
    root_upper = search.upper()
    lp_lower = search.pool.best
    seed_stop = "converged"
    if search.upper() > search.pool.best * (1 + rtol):  # not solved at the root: search for witnesses
        seed_stop = search.pool.search(local, box, seed, (ascent_share, lower_share), time_budget)
    seeded = search.pool.best
    status = search.run(t0 + time_budget, max_nodes)
    if status != "time":  # the nodes' best LP points, re-checked on the graph while time is left
        search.pool.confirm()
    upper = search.upper()
    lower, witness = rechecked(local, net, box, None)
    if checked.value > lower:  # the graph's re-check found a larger lower end than the net's best witness
        lower, witness = checked.value, checked.witness
    unstable = int(sum((states(l, u) == FREE).sum() for l, u in pre))
    details = {"lower": lower if lower > -math.inf else None, "upper": upper, "search_nodes": search.nodes,
               "open_nodes": len(search.heap), "empty_nodes": search.empty, "closed_nodes": search.closed,
               "lps": search.lps, "sdp_bounds": search.sdp_calls,
               "sdp_full": sdp.full if sdp else 0, "sdp_warm": sdp.warm if sdp else 0, "unstable_neurons": unstable, "lp_tightening": search.use_lp,
               "domain": box.describe(), "root_upper": root_upper,
               "root_bounds": ("carried, intersected with crown" if kept else method),
               "seeded_lower": seeded if seeded > -math.inf else None,
               "lp_lower": lp_lower if lp_lower > -math.inf else None,
               "lp_units": search.lp_units,
               "stopped_by": status, "seed_stopped_by": seed_stop}
    if status == "converged" and not upper <= lower * (1 + rtol):  # the best witness failed its re-check
        details["stopped_by"] = "witness-recheck"
    seconds = time.perf_counter() - t0
    if status == "converged" and lower > -math.inf and upper <= lower * (1 + rtol):
        return Result("neuron-bab", lower, "exact", seconds, witness=witness, details=details,
                      bracket=(lower, max(upper, lower)))
    bracket = (min(lower, upper), upper) if witness is not None and lower > -math.inf else None
    return Result("neuron-bab", upper, "certified_upper", seconds, witness=witness, details=details, bracket=bracket)
