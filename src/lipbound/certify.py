"""Robustness certificates from a Lipschitz bound (DESIGN §1).

For a classifier ``f : R^n -> R^m`` (logits) with ``||f(x) - f(y)|| <= U ||x - y||`` and an input
``x`` predicted as class ``i`` with logit margin ``M = f_i(x) - max_{j != i} f_j(x)``: for every
``j`` the map ``z -> f_i(z) - f_j(z)`` is ``sqrt(2) U``-Lipschitz (``|d_i - d_j| <= sqrt(2)
||d||``), so no perturbation with ``||delta|| < M / (sqrt(2) U)`` changes the predicted class.
That **certified radius** is only as good as ``U``: it must be a certified upper bound.

**Local certificates** (``local=True``). On the L2 ball ``B(x, r)`` only the constant of ``f`` on
that ball matters. With ``L_yj`` a certified bound of the constant of ``g_j = f_y - f_j`` on
``B(x, r)`` (the network with one more output row ``e_y - e_j``, bounded on the ball localized by
bound propagation), ``g_j(x') >= g_j(x) - L_yj ||x' - x|| > 0`` for every ``x'`` in the ball when
``g_j(x) > r L_yj`` for every ``j``: the ball is certified, with no ``sqrt(2)``. Each ``L_yj`` is
the least of the certified methods' values on the pair network and of ``sqrt(2)`` times the local
constant of ``f`` itself. The largest certified radius is searched by bisection on ``r``, each
candidate ball bounded anew; it starts at the global radius (whose ball is certified by the global
constant, so the local radius is never smaller). Margins are the float64 logits' margins minus a
rigorous bound of their rounding error (:func:`lipbound.methods.rounding.enclose`). With
``radius=R`` one ball ``B(x, R)`` per input is checked instead of searched, every ``L_yj`` bounded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .api import as_graph, estimate
from .errors import InvalidInput, NotApplicable, UnsupportedOperation
from .graph.ir import Affine, Graph
from .linalg.operators import Dense, Reshape, compose
from .methods import get_method
from .methods.propagation import localize
from .methods.region import Ball
from .methods.rounding import enclose
from .methods.selection import default_methods

__all__ = ["Certificate", "certify"]


@dataclass
class Certificate:
    """Per input: ``predicted`` class, logit ``margin`` and certified L2 ``radius``; ``upper``
    is the certified Lipschitz bound used and ``source`` where it came from."""

    predicted: torch.Tensor
    margin: torch.Tensor
    radius: torch.Tensor
    upper: float
    source: str
    global_radius: torch.Tensor | None = None  # with local=True: the radius from the global constant
    checked_radius: float | None = None  # with radius=R: R, and per input:
    certified: torch.Tensor | None = None  # whether B(x, R) is certified
    pair_constants: torch.Tensor | None = None  # (N, m): the L_yj used on B(x, R), inf at j = y

    def to_dict(self) -> dict[str, Any]:
        out = {"upper": self.upper, "source": self.source, "predicted": self.predicted.tolist(),
               "margin": self.margin.tolist(), "radius": self.radius.tolist()}
        if self.global_radius is not None:
            out["global_radius"] = self.global_radius.tolist()
        if self.checked_radius is not None:
            out["checked_radius"] = self.checked_radius
            out["certified"] = self.certified.tolist()
            out["pair_constants"] = [[c if math.isfinite(c) else None for c in row]
                                     for row in self.pair_constants.tolist()]
        return out

    def table(self) -> str:
        head = f"certified Lipschitz bound U = {self.upper:.6g} ({self.source}); "
        if self.global_radius is None:
            lines = [head + "radius = margin / (sqrt(2) U)", f"{'input':>6} {'class':>6} {'margin':>12} {'radius':>12}"]
            rows = [(m, r) for m, r in zip(self.margin.tolist(), self.radius.tolist())]
        else:
            lines = [head + "radius: the largest L2 ball certified by local constants (global radius beside it)",
                     f"{'input':>6} {'class':>6} {'margin':>12} {'radius':>12} {'global':>12}"]
            rows = [(m, r, g) for m, r, g in zip(self.margin.tolist(), self.radius.tolist(), self.global_radius.tolist())]
        for i, (c, row) in enumerate(zip(self.predicted.tolist(), rows)):
            lines.append(f"{i:>6} {c:>6} " + " ".join(f"{v:>12.6g}" for v in row))
        if self.checked_radius is not None:
            lines.append(f"L2 radius {self.checked_radius:.6g} checked with local pair constants L_yj:")
            lines.append(f"{'input':>6} {'certified':>10} {'max L_yj':>12}")
            for i, (ok, row) in enumerate(zip(self.certified.tolist(), self.pair_constants.tolist())):
                finite = [c for c in row if math.isfinite(c)]
                lines.append(f"{i:>6} {'yes' if ok else 'no':>10} {max(finite) if finite else math.nan:>12.6g}")
        if len(self.radius):
            lines.append(f"median radius {self.radius.median().item():.6g}, min {self.radius.min().item():.6g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def certify(model, x: torch.Tensor, upper: float | None = None, *, input_shape: Sequence[int] | None = None,
            seed: int = 0, progress: bool = False, local: bool = False,
            local_methods: Sequence[str] = ("autolip", "seqlip"), bisection_steps: int = 10,
            time_budget: float | None = None, radius: float | None = None) -> Certificate:
    """Logit margins and certified radii of ``model`` at the inputs ``x``.

    Args:
        model: a classifier (``nn.Module`` or Graph) whose output is the logits.
        x: inputs ``(N, *input_shape)``.
        upper: a certified upper bound ``U`` of the Lipschitz constant (L2 -> L2); default: the
            best certified bound of :func:`lipbound.estimate` with the default set's upper-bound
            methods (AutoLip, SeqLip when available, exact for small ReLU nets).
        input_shape: the input shape without batch axis (default: ``x.shape[1:]``).
        seed, progress: as in :func:`lipbound.estimate`.
        local: also search, per input, the largest L2 ball certified by local pair constants
            (module doc); ``radius`` is then that radius and ``global_radius`` the global one.
        local_methods: the certified methods that bound each pair network on a ball.
        bisection_steps: bisection steps on the radius (after doubling finds a failing radius).
        time_budget: seconds for the local search of each input (None: no cap); when it ends,
            the largest radius certified so far is kept. With ``radius``: seconds for the bound
            propagation of each input's ball (the certified methods then run to the end).
        radius: check this one L2 radius instead of searching: ``certified[i]`` says whether
            ``B(x_i, radius)`` is certified by the local pair constants ``L_yj`` on it
            (``pair_constants``, ``inf`` at the predicted class; every ``j`` is bounded).

    Returns:
        A :class:`Certificate`.
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InvalidInput("x must be a tensor of inputs (N, *input_shape)")
    graph = as_graph(model, input_shape if input_shape is not None else tuple(x.shape[1:]))
    if tuple(x.shape[1:]) != graph.input_shape:
        raise InvalidInput(f"inputs must have shape (N, {', '.join(map(str, graph.input_shape))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInput("inputs contain NaN or infinite values")
    if radius is not None:
        radius = float(radius)
        if not (math.isfinite(radius) and radius > 0):
            raise InvalidInput(f"the radius to check must be a positive finite number, got {radius}")
    if time_budget is not None and not (time_budget > 0 and math.isfinite(time_budget)):
        raise InvalidInput(f"time_budget must be a positive number of seconds, got {time_budget!r}")
    n_out = math.prod(graph.output_shape)
    if n_out < 2:
        raise InvalidInput(f"certify needs a classifier with at least 2 logits, the output has {n_out}")
    if upper is None:
        report = estimate(graph, methods=default_methods(graph, lower=False), seed=seed, progress=progress)
        upper, source = report.upper, "best of " + ", ".join(r.method for r in report.results
                                                             if r.kind in ("certified_upper", "exact"))
    else:
        upper, source = float(upper), "given"
    if not upper > 0 or math.isnan(upper):
        raise InvalidInput(f"the Lipschitz upper bound must be positive, got {upper}")
    logits, error = _logits(graph, x)
    predicted = logits.argmax(dim=1)
    margins = _pair_margins(logits, error, predicted)
    margin = margins.min(dim=1).values.clamp_min(0.0)
    global_radius = margin / (math.sqrt(2.0) * upper)
    if not local and radius is None:
        return Certificate(predicted, margin, global_radius, upper, source)
    for m in local_methods:
        if not get_method(m).guarantee.is_upper:
            raise InvalidInput(f"local_methods must give certified upper bounds; {m!r} does not")
    cert = Certificate(predicted, margin, global_radius, upper, source + "; local pair constants on L2 balls")
    if radius is not None:
        cert.checked_radius = radius
        checks = [_ball_check(graph, x[i], int(predicted[i]), margins[i], radius, upper, local_methods, seed,
                              None if time_budget is None else time.perf_counter() + time_budget, every=True)
                  for i in range(len(x))]
        cert.certified = torch.tensor([ok for ok, _ in checks], dtype=torch.bool)
        cert.pair_constants = (torch.stack([c for _, c in checks]) if checks
                               else torch.empty(0, n_out, dtype=torch.float64))
    if local:
        cert.global_radius = global_radius
        cert.radius = torch.stack([
            torch.tensor(_local_radius(graph, x[i], int(predicted[i]), margins[i], float(global_radius[i]), upper,
                                       local_methods, bisection_steps, seed, time_budget), dtype=torch.float64)
            for i in range(len(x))]) if len(x) else global_radius.clone()
    return cert


def _logits(graph: Graph, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits ``(N, m)`` at ``x`` and rigorous bounds of their rounding errors."""
    g64 = graph.to(device="cpu", dtype=torch.float64)
    enc = enclose(g64, x.detach().to(device="cpu", dtype=torch.float64))
    n = len(x)
    return enc.values[g64.output].reshape(n, -1), enc.errors[g64.output].reshape(n, -1)


def _pair_margins(logits: torch.Tensor, error: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """``(N, m)``: a rigorous lower bound of ``f_y(x) - f_j(x)`` (``y`` predicted), ``+inf`` at ``j = y``."""
    idx = predicted[:, None]
    diff = logits.gather(1, idx) - logits - error.gather(1, idx) - error
    diff = diff - diff.abs() * 2.0 ** -52  # the subtraction's own rounding
    return diff.scatter(1, idx, math.inf)


def _ball_check(graph: Graph, x: torch.Tensor, y: int, margins: torch.Tensor, r: float, upper: float,
                methods: Sequence[str], seed: int, deadline: float | None,
                every: bool = False) -> tuple[bool, torch.Tensor]:
    """Is ``B(x, r)`` certified, ``margins[j] > r L_yj(B(x, r))`` for every ``j != y`` (module doc)?
    Returns that and the constants ``L_yj`` (``inf`` at ``y`` and, unless ``every``, after the first
    ``j`` that fails)."""
    ball = Ball(x.detach().to(torch.float64).cpu(), r, 2)
    left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
    local = localize(graph, ball, time_budget=left)
    f_const = min(upper, _least_upper(local, methods, seed, ball))
    constants = torch.full((len(margins),), math.inf, dtype=torch.float64)
    ok = True
    for j in range(len(margins)):
        if j == y:
            continue
        constants[j] = min(math.sqrt(2.0) * f_const, _least_upper(_pair_graph(local, y, j), methods, seed, ball))
        if not float(margins[j]) > r * float(constants[j]):
            ok = False
            if not every:
                break
    return ok, constants


def _local_radius(graph: Graph, x: torch.Tensor, y: int, margins: torch.Tensor, r_global: float, upper: float,
                  methods: Sequence[str], steps: int, seed: int, time_budget: float | None) -> float:
    """The largest ``r`` found with every ``margins[j] > r L_yj(B(x, r))`` (module doc), at least
    ``r_global``; doubling from ``r_global`` until a radius fails, then bisection."""
    deadline = None if time_budget is None else time.perf_counter() + time_budget

    def holds(r: float) -> bool:
        return _ball_check(graph, x, y, margins, r, upper, methods, seed, deadline)[0]

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline
    if not r_global > 0:
        return 0.0
    good, bad = r_global, None
    r = 2 * r_global
    for _ in range(30):
        if out_of_time():
            return good
        if holds(r):
            good, r = r, 2 * r
        else:
            bad = r
            break
    if bad is None:
        return good
    for _ in range(steps):
        if out_of_time():
            break
        mid = (good + bad) / 2
        if holds(mid):
            good = mid
        else:
            bad = mid
    return good


def _least_upper(graph: Graph, methods: Sequence[str], seed: int, ball: Ball) -> float:
    """The least certified upper bound of ``methods`` on the localized ``graph`` (inf if none applies)."""
    best = math.inf
    for name in methods:
        spec = get_method(name)
        kwargs = {"domain": ball} if spec.takes_domain else {}
        try:
            res = spec(graph, seed=seed, **kwargs)
        except (NotApplicable, UnsupportedOperation):
            continue
        if res.upper is not None:
            best = min(best, res.upper)
    return best


def _pair_graph(graph: Graph, y: int, j: int) -> Graph:
    """``graph`` followed by the row ``e_y - e_j`` on its flattened output: the map ``f_y - f_j``."""
    out = graph.nodes[graph.output]
    m = math.prod(out.shape)
    row = torch.zeros(1, m, dtype=graph.dtype, device=graph.device)
    row[0, y], row[0, j] = 1.0, -1.0
    op = Dense(row, (m,))
    if len(out.shape) != 1:
        op = compose(Reshape(out.shape, (m,)), op)
    name = f"{graph.output}__margin_{y}_{j}"
    nodes = dict(graph.nodes)
    nodes[name] = Affine(name, [graph.output], (1,), f"logit {y} - logit {j}", op, None)
    return graph.rebuilt(nodes, name)
