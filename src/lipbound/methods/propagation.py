"""Sound bounds of every activation's input over an input region (DESIGN §7): interval bound
propagation (IBP) and CROWN-style back-substitution of linear relaxations.

:func:`localize` is what the API calls: it returns ``graph.localized(region, pre)`` where, for every
:class:`~lipbound.graph.ir.Activation` and :class:`~lipbound.graph.ir.MaxPool` node,
``pre[name] = (l, u)`` holds ``l <= z <= u`` element-wise for the node's input ``z`` at every ``x``
in the region, for the **exact real** network (not only its float64 evaluation). The methods then
read per-neuron slope intervals from them (:meth:`~lipbound.graph.ir.Activation.slope_bounds`).
Why a local constant computed from them is sound: for ``x, y`` in a convex region every neuron's
input stays in ``[l_i, u_i]`` along the segment, so ``s(z_x) - s(z_y) = d_i (z_x - z_y)`` with
the secant slope ``d_i`` in the neuron's interval, and ``f(x) - f(y) = W_k D_{k-1} ... D_1 W_1 (x - y)``
with every ``D`` a diagonal of admissible slopes.

**IBP** (:func:`interval_bounds`), node by node in topological order, each node's interval
``[l, u]`` from its inputs':

* input: the region's bounding box ``[region.low, region.high]``;
* affine ``A h + b``: center/radius form ``A c + b +- |A| r`` with ``c = (l + u) / 2``,
  ``r = (u - l) / 2``; ``|A|`` is the operator with absolute weights where it is cheap, else the
  certified-norm substitute ``(|A| r)_i <= ||A||_2 ||r||_2`` (both from :mod:`.rounding`);
* activation: its range on ``[l, u]`` (:func:`.relaxations.value_range`): exact for piecewise-linear
  ones (the ends and the breakpoints inside), from slope intervals on pieces of ``[l, u]`` for the
  others;
* max pooling: ``[pool(l), pool(u)]`` (the max is monotone); add: the sum; concat: the concatenation.

**CROWN** (:func:`crown_bounds`, the default of :func:`localize`): for each activation/max-pool input
node, the back-substitution of the linear relaxations of :mod:`.relaxations` to the input,
concretised over the region and intersected with IBP; max pooling enters by the IBP interval of
its output.

**Rounding.** Every step runs in float64 and is widened outwards by a rigorous margin, so the
bounds hold for the exact network: the affine step is :func:`.rounding._linear` (error
``gamma_k (|A| |c|)`` plus ``|A| r``, ``gamma_k = k u / (1 - k u)``, ``u = 2^-53``, ``k`` the
operator's input size, bounded whatever the order of summation: Higham §3.1); a result of at most
``m`` floating-point operations on terms whose absolute values sum to ``M`` is widened by
``gamma_{m+2} M + 2^-1022`` (:func:`_widen`); activation values carry the error bound of
:func:`.rounding._activation_rounding` (exact pieces: ``gamma_4``; smooth: 16 ulp, the assumption
that torch's float64 kernels are accurate to a few ulp, as in :mod:`.rounding`), and slope
intervals come from ``facts.slopes_on``, padded outwards by its own rule.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..errors import InvalidInput, UnsupportedOperation
from ..graph.ir import Activation, Add, Affine, Concat, Graph, Input, MaxPool, Node
from ..linalg.operators import Compose, Function, Permute, Reshape
from .relaxations import Relaxation, relax, value_range
from .rounding import _TINY, _U, _gamma, _linear, _up

__all__ = ["localize", "interval_bounds", "crown_bounds", "Bounds"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), element-wise, float64


def _widen(lo: torch.Tensor, hi: torch.Tensor, mag: torch.Tensor, ops: int = 6) -> Bounds:
    """``[lo, hi]`` computed by at most ``ops`` float64 operations on terms whose absolute values
    sum to at most ``mag``, widened to a rigorous enclosure of the exact values:
    ``-+ (gamma_{ops+2} mag + tiny)`` (the widening's own rounding is within the headroom)."""
    pad = _gamma(ops + 2) * (mag + lo.abs() + hi.abs()) + _TINY
    return lo - pad, hi + pad


def region_box(region: Any, graph: Graph) -> Bounds:
    """The region's bounding box ``(low, high)``, float64 on the graph's device, checked against the
    input shape. Raises :class:`InvalidInput` for a wrong shape, a non-finite or an empty box."""
    if region is None:
        raise InvalidInput("bounds on activations need an input region, got None (all of R^n)")
    try:
        low, high = region.low, region.high
    except AttributeError:
        raise InvalidInput(f"a region needs .low and .high (its bounding box), got {region!r}") from None
    low = torch.as_tensor(low, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    shape = tuple(graph.input_shape)
    if tuple(low.shape) != shape or tuple(high.shape) != shape:
        raise InvalidInput(f"the region's box has shape {tuple(low.shape)}, the network's input is {shape}")
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise InvalidInput("the region's bounding box must be finite")
    if bool((low > high).any()):
        raise InvalidInput("the region is empty (low > high in some element)")
    device = graph.device
    return low.to(device), high.to(device)


def _center_radius(l: torch.Tensor, u: torch.Tensor) -> Bounds:
    """``(c, r)`` in float64 with ``[c - r, c + r]`` containing ``[l, u]`` exactly: ``c = fl((l + u) / 2)``
    is within ``u |c| + tiny`` of the midpoint, which the radius absorbs."""
    c = (l + u) / 2
    r = (u - l) / 2
    return c, _up(r + 2 * _U * c.abs(), 2)


def _ibp_affine(node: Affine, h: Bounds) -> Bounds:
    """``A h + b`` over the box ``h`` (module doc)."""
    c, r = _center_radius(*h)
    y, e = _linear(node.op, c.unsqueeze(0), r.unsqueeze(0))
    y, e = y[0], e[0]
    if node.bias is not None:
        k = node.op.in_numel + 1
        e = _up(e + _gamma(k) * node.bias.abs(), k)
        y = y + node.bias
    return _widen(y - e, y + e, y.abs() + e)


def _ibp_add(node: Add, *hs: Bounds) -> Bounds:
    lo, hi = sum(h[0] for h in hs), sum(h[1] for h in hs)
    return _widen(lo, hi, sum(h[0].abs() + h[1].abs() for h in hs), len(hs))


def interval(node: Node, ins: list[Bounds], box: Bounds) -> Bounds:
    """The IBP interval of ``node``'s output from its inputs' intervals ``ins`` (module doc);
    ``box`` is the input's. Raises :class:`UnsupportedOperation` for an unknown node kind."""
    if isinstance(node, Input):
        return box
    if isinstance(node, Affine):
        return _ibp_affine(node, ins[0])
    if isinstance(node, Activation):
        return value_range(node, *ins[0])
    if isinstance(node, MaxPool):
        l, u = ins[0]
        return node.evaluate(l.unsqueeze(0))[0], node.evaluate(u.unsqueeze(0))[0]
    if isinstance(node, Add):
        return _ibp_add(node, *ins)
    if isinstance(node, Concat):
        return (torch.cat([h[0] for h in ins], dim=node.axis), torch.cat([h[1] for h in ins], dim=node.axis))
    raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'",
                               f"bound propagation has no rule for {node.kind} nodes")


def _float64(graph: Graph) -> Graph:
    """The graph in float64 on its own device (a float32 model's exact float64 fold where it has
    one); a float64 graph as it is (a conversion rebuilds every operator)."""
    if graph.dtype == torch.float64:
        return graph
    return graph.to(device=graph.device, dtype=torch.float64)


def _targets(graph: Graph) -> dict[str, str]:
    """``{activation or max-pool name: the name of its input node}``."""
    return {n.name: n.inputs[0] for n in graph if isinstance(n, (Activation, MaxPool))}


def _pre(graph: Graph, bounds: dict[str, Bounds]) -> dict[str, Bounds]:
    """The pre bounds of every activation and max-pool node, float64 on the CPU."""
    return {name: (bounds[z][0].cpu(), bounds[z][1].cpu()) for name, z in _targets(graph).items()}


def interval_bounds(graph: Graph, region: Any) -> dict[str, Bounds]:
    """IBP pre bounds ``{node name: (l, u)}`` of every activation and max-pool node's input over
    ``region`` (module doc): float64 CPU tensors of the node's input shape, rigorous for the exact
    network."""
    g = _float64(graph)
    box = region_box(region, g)
    bounds: dict[str, Bounds] = {}
    with torch.no_grad():
        for node in g:
            bounds[node.name] = interval(node, [bounds[i] for i in node.inputs], box)
    return _pre(g, bounds)


# ---- CROWN ----------------------------------------------------------------------------------------
class _Backward:
    """Back-substitution of lower bounds ``sum_n <A_n, v_n> + const`` of a batch of rows (linear
    forms of one target node's value) down to the input, through the relaxations of the nodes
    already bounded (:func:`crown_bounds`). Every step replaces ``<A_y, y>`` by a lower bound in the
    node's inputs; ``slack`` collects the rigorous rounding bound of each replacement (module doc
    of :func:`crown_bounds`), ``mag`` the magnitudes summed into ``const``."""

    def __init__(self, graph: Graph, bounds: dict[str, Bounds], relaxations: dict[str, Relaxation],
                 region: Any, cache: dict[str, torch.Tensor]) -> None:
        self.graph, self.bounds, self.relaxations, self.region, self.cache = graph, bounds, relaxations, region, cache

    def magnitude(self, name: str) -> torch.Tensor:
        """``max(|l|, |u|)`` of a node's interval: bounds ``|v|`` over the region."""
        l, u = self.bounds[name]
        return torch.maximum(l.abs(), u.abs())

    def affine_error(self, node: Affine) -> torch.Tensor:
        """``E`` with ``|<fl(A^T a) - A^T a, h>| + |fl(<a, b>) - <a, b>| <= <|a|, E>`` for every
        ``h`` in the input's interval: ``gamma_K |A| m_h + gamma_n |b|`` with ``K`` the terms of the
        adjoint's sums over all stages (``in + out`` sizes; none for reshapes and permutations);
        a black-box stage adds ``gamma_K max(|A| m_h)``, as in :mod:`.rounding`."""
        if node.name not in self.cache:
            stages = node.op.ops if isinstance(node.op, Compose) else [node.op]
            k = sum(0 if isinstance(o, (Reshape, Permute)) else o.in_numel + o.out_numel for o in stages)
            m = self.magnitude(node.inputs[0]).unsqueeze(0)
            _, am = _linear(node.op, torch.zeros_like(m), m)
            err = _gamma(k + 4) * am[0]
            if any(isinstance(o, Function) for o in stages):
                err = err + _gamma(k + 4) * am.max()
            if node.bias is not None:
                err = err + _gamma(node.op.out_numel + 4) * node.bias.abs()
            self.cache[node.name] = _up(err, 4)
        return self.cache[node.name]

    def run(self, target: str, rows: torch.Tensor) -> torch.Tensor:
        """Rigorous lower bounds of the linear forms ``rows`` (``(R, *shape)``) of the target's value."""
        coef: dict[str, torch.Tensor] = {target: rows}
        n = rows.shape[0]
        const = torch.zeros(n, dtype=rows.dtype, device=rows.device)
        slack, mag = torch.zeros_like(const), torch.zeros_like(const)
        terms = 0
        order = list(self.graph.nodes)
        for name in reversed(order[: order.index(target) + 1]):
            a = coef.pop(name, None)
            if a is None:
                continue
            node = self.graph.nodes[name]
            c, e, pushed = self.step(node, a)
            for into, a_in in pushed:
                if into in coef:  # the sum rounds: |fl(x + y) - (x + y)| <= u |x + y|
                    e = e + self._dot(a_in.abs() + coef[into].abs(), 2 * _U * self.magnitude(into))
                    a_in = coef[into] + a_in
                coef[into] = a_in
            const, mag, slack, terms = const + c, mag + c.abs(), slack + e, terms + 1
        # the running sums of const and slack round too: gamma_terms of their magnitudes
        return const - _up(slack, terms + 1) - _up(_gamma(terms + 8) * (mag + const.abs()), 4) - _TINY

    @staticmethod
    def _dot(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Upper bound of ``<a, w>`` per row for non-negative ``a`` and ``w``."""
        return _up((a * w).flatten(1).sum(1), w.numel())

    def step(self, node: Node, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """``<a, v_node> >= <a', v_inputs> + c - e``: returns ``c``, ``e`` and the ``(input, a')``."""
        zero = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        flat = lambda t: t.flatten(1).sum(1)  # noqa: E731
        if isinstance(node, Input):
            return (*self.concretize(a), [])
        if isinstance(node, Affine):
            c = zero if node.bias is None else flat(a * node.bias)
            return c, self._dot(a.abs(), self.affine_error(node)), [(node.inputs[0], node.op.rmatvec(a))]
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        if isinstance(node, Activation):
            r = self.relaxations[node.name]
            c = flat(pos * r.b_low + neg * r.b_up)
            slopes = torch.maximum(r.a_low.abs(), r.a_up.abs())
            bias = torch.maximum(r.b_low.abs(), r.b_up.abs())
            e = self._dot(a.abs(), 2 * _U * slopes * self.magnitude(node.inputs[0]) + _gamma(a[0].numel() + 4) * bias)
            return c, e, [(node.inputs[0], pos * r.a_low + neg * r.a_up)]
        if isinstance(node, MaxPool):  # IBP of its output: <a, y> >= <a+, l_y> + <a-, u_y>
            l, u = self.bounds[node.name]
            return flat(pos * l + neg * u), self._dot(a.abs(), _gamma(l.numel() + 4) * self.magnitude(node.name)), []
        if isinstance(node, Add):
            return zero, zero, [(i, a) for i in node.inputs]
        if isinstance(node, Concat):
            sizes = [self.graph.nodes[i].shape[node.axis] for i in node.inputs]
            return zero, zero, list(zip(node.inputs, torch.split(a, sizes, dim=node.axis + 1)))
        raise UnsupportedOperation(type(node).__name__, f"node '{node.origin}'", "CROWN has no rule for it")

    def concretize(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``min over the region of <a, x>`` as ``c - e``: over the box ``<a, c> - <|a|, r>``; over an
        L2 ball also ``<a, center> - radius ||a||_2``; the larger of the two (both are sound)."""
        flat = lambda t: t.flatten(1).sum(1)  # noqa: E731
        n = a[0].numel()
        center, radius = _center_radius(*self.bounds[self.graph.input])
        c = flat(a * center) - flat(a.abs() * radius)
        e = self._dot(a.abs(), _gamma(n + 4) * (center.abs() + radius))
        if getattr(self.region, "norm", None) == 2:
            x0 = torch.as_tensor(self.region.center, dtype=torch.float64).to(a.device)
            norm = _up(a.flatten(1).norm(dim=1), n)
            c2 = flat(a * x0) - float(self.region.radius) * norm
            e2 = self._dot(a.abs(), _gamma(n + 4) * x0.abs()) + _gamma(4) * float(self.region.radius) * norm
            better = c2 - e2 > c - e
            c, e = torch.where(better, c2, c), torch.where(better, e2, e)
        return c, e


def _rows_needed(consumers: list[Node], bounds: Bounds) -> torch.Tensor:
    """Flat indices of the target's neurons worth a CROWN pass: all of them, unless every consumer
    is a piecewise-linear activation; then those with a breakpoint strictly inside ``(l, u)``
    (the others are on one piece, whose relaxation is exact whatever the bounds)."""
    l, u = (t.flatten() for t in bounds)
    if not all(isinstance(c, Activation) and c.pieces is not None for c in consumers):
        return torch.arange(l.numel(), device=l.device)
    unstable = torch.zeros_like(l, dtype=torch.bool)
    for c in consumers:
        for b in c.pieces.breakpoints:
            unstable |= (l < b) & (b < u)
    return unstable.nonzero().flatten()


def _intersect(a: Bounds, b: Bounds) -> Bounds:
    return torch.maximum(a[0], b[0]), torch.minimum(a[1], b[1])


def _crown_pass(graph: Graph, region: Any, time_budget: float | None, chunk_bytes: int,
                max_work: float = 2e8) -> tuple[dict[str, Bounds], list[str], list[str], list[str], list[str]]:
    """Bounds of every node of the float64 ``graph``: IBP from the inputs' bounds, intersected with
    plain IBP, and for each activation/max-pool input node a CROWN pass intersected with that,
    while the budget lasts. A target is left to IBP when no relaxed node lies before it and the
    region is a box (IBP of an affine map of a box is exact) or when its pass would touch more than
    ``max_work`` elements (rows x the elements of the nodes it depends on: a deterministic cap, so
    the same inputs give the same bounds on any machine). Returns the bounds and the names of the
    targets that got CROWN, kept IBP after the time budget, kept IBP by the work cap, and kept IBP
    as exact."""
    start = time.perf_counter()
    box = region_box(region, graph)
    users = graph.users()
    targets = set(_targets(graph).values())
    bounds: dict[str, Bounds] = {}
    ibp: dict[str, Bounds] = {}  # plain IBP: the non-monotone activations' rule is not inclusion-isotone
    relaxations: dict[str, Relaxation] = {}
    backward = _Backward(graph, bounds, relaxations, region, {})
    widest = max(math.prod(n.shape) for n in graph)
    crowned, kept, kept_work, exact_ibp = [], [], [], []
    ball = region if getattr(region, "norm", None) == 2 else None
    upstream = _upstream(graph)
    for node in graph:
        ibp[node.name] = interval(node, [ibp[i] for i in node.inputs], box)
        lu = _intersect(interval(node, [bounds[i] for i in node.inputs], box), ibp[node.name])
        if isinstance(node, Activation):
            h = bounds[node.inputs[0]]
            relaxations[node.name] = relax(node, *h)
        if node.name in targets and not isinstance(node, Input):
            consumers = [graph.nodes[c] for c in users[node.name] if isinstance(graph.nodes[c], (Activation, MaxPool))]
            rows = _rows_needed(consumers, lu)
            cost = rows.numel() * 2 * upstream[node.name][1]
            if (ball is None and not upstream[node.name][0]) or cost > max_work:
                # IBP is already exact for an affine map of a box; or the pass would cost too much
                (kept_work if cost > max_work else exact_ibp).append(node.name)
                bounds[node.name] = lu
                continue
            l, u = lu[0].flatten().clone(), lu[1].flatten().clone()
            chunk = max(1, chunk_bytes // (16 * widest * 4))
            done = True
            for s in range(0, rows.numel(), chunk):
                if time_budget is not None and time.perf_counter() - start > time_budget:
                    done = False
                    break
                idx = rows[s: s + chunk]
                eye = torch.zeros((idx.numel(), l.numel()), dtype=torch.float64, device=l.device)
                eye[torch.arange(idx.numel(), device=l.device), idx] = 1.0
                eye = eye.reshape(-1, *node.shape)
                low = backward.run(node.name, torch.cat([eye, -eye]))
                l[idx] = torch.maximum(l[idx], low[: idx.numel()])
                u[idx] = torch.minimum(u[idx], -low[idx.numel():])
            lu = (l.reshape(node.shape), u.reshape(node.shape))
            if rows.numel():  # a target with every neuron on one piece needs no pass
                (crowned if done else kept).append(node.name)
        bounds[node.name] = lu
    return bounds, crowned, kept, kept_work, exact_ibp


def _upstream(graph: Graph) -> dict[str, tuple[bool, int]]:
    """Per node: whether a relaxed node (activation or max pooling) lies between it and the input,
    and the number of elements of the nodes it depends on (its own included): the size of one
    coefficient row's back-substitution."""
    out: dict[str, tuple[bool, int]] = {}
    seen: dict[str, set[str]] = {}
    for node in graph:
        anc = set().union(*(seen[i] for i in node.inputs)) | {node.name} if node.inputs else {node.name}
        seen[node.name] = anc
        relaxed = any(isinstance(graph.nodes[a], (Activation, MaxPool)) for a in anc if a != node.name)
        out[node.name] = (relaxed, sum(math.prod(graph.nodes[a].shape) for a in anc))
    return out


def crown_bounds(graph: Graph, region: Any, *, time_budget: float | None = None,
                 chunk_bytes: int = 2 ** 28) -> dict[str, Bounds]:
    """CROWN pre bounds ``{node name: (l, u)}`` of every activation and max-pool node's input over
    the convex ``region``, intersected with IBP; float64 CPU tensors, rigorous for the exact network.

    For each such input node in topological order, the linear forms ``+-z_i`` are bounded below by
    back-substitution to the input through the earlier nodes (batched over the neurons, chunked
    to ``chunk_bytes`` per coefficient tensor, on the graph's device): affine nodes by their adjoint
    (``rmatvec``), activations by their linear relaxation on the bounds already found
    (:mod:`.relaxations`; positive coefficients take the lower line, negative ones the upper),
    max pooling by the interval of its output, adds and concats by passing the coefficients on.
    At the input, a box gives ``<a, c> - <|a|, r>``; an L2 ball (``region.norm == 2``) also
    ``<a, center> - radius ||a||_2``, and the larger is kept. Only the neurons whose consumers are
    not all on one linear piece are back-substituted (the others keep IBP, which is then exact for
    the slopes). ``time_budget`` (seconds) caps the pass: the neurons it does not reach keep IBP.

    Rounding: each computed coefficient ``a'`` differs from the exact ``A^T a`` or ``D a`` by at
    most ``gamma_K |A|^T |a|`` (or ``u |D| |a|``); its effect on the bound is at most that times
    ``max(|l_h|, |u_h|)``, the input's interval, and is subtracted (``slack``), as are the
    roundings of the offsets' dot products (``gamma_n``) and of the running constant."""
    pre, _ = _crown(graph, region, time_budget, chunk_bytes)
    return pre


def _crown(graph: Graph, region: Any, time_budget: float | None, chunk_bytes: int = 2 ** 28) -> tuple[dict[str, Bounds], str]:
    """:func:`crown_bounds` and the note saying which layers got which bounds."""
    if time_budget is not None and not time_budget >= 0:
        raise InvalidInput(f"time_budget must be a number of seconds >= 0 or None, got {time_budget!r}")
    g = _float64(graph)
    with torch.no_grad():
        bounds, crowned, kept, heavy, exact = _crown_pass(g, region, time_budget, chunk_bytes)
    note = f"pre bounds: CROWN (with IBP) on the inputs of {len(crowned)} layers"
    if kept:
        note += f"; IBP only, after the time budget of {time_budget:g} s, on {', '.join(kept)}"
    if heavy:
        note += f"; IBP only, CROWN's pass too large, on {', '.join(heavy)}"
    if exact:
        note += f"; IBP (exact for an affine map of the box) on {', '.join(exact)}"
    return _pre(g, bounds), note


def localize(graph: Graph, region: Any, *, method: str = "crown", time_budget: float | None = None) -> Graph:
    """``graph.localized(region, pre)`` with sound pre bounds of every activation and max-pool node
    over the convex ``region`` (module doc): ``method="ibp"`` (:func:`interval_bounds`) or
    ``"crown"`` (:func:`crown_bounds`, intersected with IBP; ``time_budget`` caps its pass). The
    returned graph's notes say which layers got which bounds."""
    if method == "ibp":
        pre, note = interval_bounds(graph, region), "pre bounds: IBP on every layer"
    elif method == "crown":
        pre, note = _crown(graph, region, time_budget)
    else:
        raise InvalidInput(f"unknown bound propagation method {method!r}: use 'crown' or 'ibp'")
    out = graph.localized(region, pre)
    out.notes.append(note)
    return out
