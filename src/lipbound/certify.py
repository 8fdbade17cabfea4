"""Robustness certificates from certified Lipschitz bounds (DESIGN §1, §7).

For a classifier ``f : R^n -> R^m`` (logits) and an input ``x`` predicted as class ``y``, with
``g_j = f_y - f_j``: if ``g_j(x) > r L_j`` for every ``j != y``, where ``L_j`` is a certified upper
bound of the Lipschitz constant of ``g_j`` (L2 -> absolute value), then ``g_j(x') >= g_j(x) -
L_j ||x' - x|| > 0`` for every ``||x' - x|| <= r``: no such perturbation changes the class. So the
**certified radius** is ``min_j g_j(x) / L_j``, computed from

* the **pair constants** ``L_yj`` (:func:`lipbound.margins.margin_constants`: the certified methods
  on the network followed by the row ``e_y - e_j``), the *pair radius*; and
* the constant ``U`` of the whole logit vector: ``|d_y - d_j| <= sqrt(2) ||d||`` gives
  ``L_j <= sqrt(2) U`` for every ``j``, the *global radius* ``margin / (sqrt(2) U)``.

The reported radius is the larger of the two (both are certified), so it is never below the
global radius. Margins are the float64 logits' margins minus a rigorous bound of their rounding
error (:func:`lipbound.methods.rounding.enclose`) and every quotient is rounded down, so a radius
holds for the exact network. With a ``domain`` the constants are those on the (convex) region and
the radius holds for the perturbations that stay in it.

**Local certificates** (``local=True``). On the L2 ball ``B(x, r)`` only the constants of the pair
networks on that ball matter (localized by bound propagation): each ``L_yj`` is the least of the
certified methods' values on the localized pair network, of the global ``L_yj`` and of
``sqrt(2)`` times the local constant of ``f``. The largest certified radius is searched by
doubling and bisection on ``r``, each candidate ball bounded anew, from the radius above (whose ball
is already certified, so the local radius is never smaller). With ``radius=R`` one ball
``B(x, R)`` per input is checked instead of searched, every ``L_yj`` bounded.

**Datasets.** ``certify`` works on a batch or on one input at a time: compute ``U`` and the pair
constants once (``upper=lipbound.estimate(...).upper``, ``pair_constants=margin_constants(...)``),
pass them to each call, and join the results with :meth:`Certificate.concat`.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from .api import Model, as_graph
from .certificate import Certificate
from .errors import InvalidInput
from .graph.ir import Graph
from .margins import least_certified, margin_constants, margin_rows, with_output_map
from .methods import get_method
from .methods.carried_bounds import localize_keeping
from .methods.region import Ball, BoxUnion, as_region
from .methods.rounding import enclose
from .methods.selection import DEFAULT_TIME_BUDGET, default_methods

__all__ = ["Certificate", "certify"]


def certify(model: Model, x: torch.Tensor, upper: float | None = None, *, labels: Any = None,
            radii: Sequence[float] = (), pair_constants: torch.Tensor | bool = True,
            methods: Sequence[str] | None = None, domain: Any = None, input_shape: Sequence[int] | None = None,
            device: str | torch.device | None = None, seed: int = 0, progress: bool = False, local: bool = False,
            local_methods: Sequence[str] = ("autolip", "seqlip"), bisection_steps: int = 10,
            time_budget: float | None = None, radius: float | None = None) -> Certificate:
    """Logit margins and certified L2 radii of the classifier ``model`` at the inputs ``x`` (module doc).

    Args:
        model: a classifier (``nn.Module``, Graph or model file) whose flattened output is the logits.
        x: inputs ``(N, *input_shape)`` (``N = 1`` for one input at a time).
        upper: a certified upper bound ``U`` of the Lipschitz constant (L2 -> L2); default: the
            least certified value of ``methods``.
        labels: the true classes, ``(N,)`` integers in ``[0, m)`` (or one integer for every input):
            a wrongly predicted input is certified at no radius; gives the clean accuracy.
        radii: L2 radii at which to report the certified accuracy (the certified fraction without labels).
        pair_constants: True: compute the certified constants ``L_yj`` of ``f_y - f_j``
            (:func:`lipbound.margins.margin_constants` with ``methods``); a tensor ``(m, m)``: use
            those (computed once for a dataset); False: the global radius only.
        methods: certified methods (``certified_upper`` or ``exact``) for ``U`` and the pair
            constants, the least value kept; default: the default set's certified methods.
        domain: an input region (as in :func:`lipbound.estimate`) holding every input: the
            constants on it, and radii for the perturbations that stay in it (for a union of
            boxes: in the union, so that ``upper`` may be the union's bound from
            :func:`lipbound.estimate`, which holds for pairs in the union; the constants computed
            here hold on its hull, which contains the union).
        input_shape: the input shape without batch axis (default: ``x.shape[1:]``).
        device, seed: as in :func:`lipbound.estimate`; ``progress``: progress bars of the methods.
        local: search, per input, the largest L2 ball certified by local pair constants.
        local_methods: the certified methods that bound each pair network on a ball.
        bisection_steps: bisection steps on the radius (after doubling finds a failing radius).
        time_budget: seconds for the local search of each input (None: no cap); when it ends,
            the largest radius certified so far is kept. With ``radius``: seconds for the bound
            propagation of each input's ball (the certified methods then run to the end).
        radius: check this one L2 radius instead of searching: ``certified[i]`` says whether
            ``B(x_i, radius)`` is certified by the local pair constants ``L_yj`` on it
            (``pair_constants``, ``inf`` at the predicted class; every ``j`` is bounded).

    Returns:
        A :class:`~lipbound.certificate.Certificate` (its ``to_dict()`` holds one record per input).
    """
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise InvalidInput("x must be a tensor of inputs (N, *input_shape)")
    graph = as_graph(model, input_shape if input_shape is not None else tuple(x.shape[1:]), device)
    if tuple(x.shape[1:]) != graph.input_shape:
        raise InvalidInput(f"inputs must have shape (N, {', '.join(map(str, graph.input_shape))}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InvalidInput("inputs contain NaN or infinite values")
    n_out = math.prod(graph.output_shape)
    if n_out < 2:
        raise InvalidInput(f"certify needs a classifier with at least 2 logits, the output has {n_out}")
    radius = None if radius is None else _positive(radius, "the radius to check")
    if time_budget is not None:
        _positive(time_budget, "time_budget")
    names = _certified(methods, "methods") if methods is not None else None
    local_methods = _certified(local_methods, "local_methods")
    labels = _checked_labels(labels, len(x), n_out)
    radii = _checked_radii(radii)
    on = _on_domain(graph, domain, x)
    chosen = names if names is not None else default_methods(on, lower=False)
    if upper is None:
        upper, best = least_certified(on, chosen, seed, DEFAULT_TIME_BUDGET, progress=progress)
        source = f"{best}, the least of {', '.join(chosen)}"
    else:
        upper, source = float(upper), "given"
    if not (upper > 0 and math.isfinite(upper)):
        raise InvalidInput(f"the Lipschitz upper bound must be a positive finite number, got {upper}")
    if on.region is not None:
        source += f"; on {on.region.describe()}"
    constants = _pair_matrix(on, pair_constants, names, seed, n_out)

    logits, error = _logits(graph, x)
    predicted = logits.argmax(dim=1)
    margins = _pair_margins(logits, error, predicted)
    margin = margins.min(dim=1).values.clamp_min(0.0)
    global_radius = _down(margin / _up(_up(math.sqrt(2.0) * upper)))
    pair_radius = None if constants is None else _pair_radius(margins, constants[predicted])
    best_radius = global_radius if pair_radius is None else torch.maximum(global_radius, pair_radius)
    cert = Certificate(predicted, margin, best_radius, upper, source, global_radius, pair_radius, constants,
                       labels, radii)
    if not local and radius is None:
        return cert
    cert.source += "; local pair constants on L2 balls"
    rows = constants[predicted] if constants is not None else torch.full_like(margins, math.inf)
    if radius is not None:
        cert.checked_radius = radius
        checks = [_ball_check(graph, x[i], int(predicted[i]), margins[i], rows[i], radius, upper, local_methods,
                              seed, None if time_budget is None else time.perf_counter() + time_budget, every=True)
                  for i in range(len(x))]
        cert.certified = torch.tensor([ok for ok, _ in checks], dtype=torch.bool)
        cert.pair_constants = (torch.stack([c for _, c in checks]) if checks
                               else torch.empty(0, n_out, dtype=torch.float64))
    if local:
        cert.local = True
        cert.radius = torch.tensor([
            _local_radius(graph, x[i], int(predicted[i]), margins[i], rows[i], float(best_radius[i]), upper,
                          local_methods, bisection_steps, seed, time_budget) for i in range(len(x))],
            dtype=torch.float64)
    return cert


def _positive(value: Any, what: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise InvalidInput(f"{what} must be a positive finite number, got {value}")
    return value


def _certified(methods: Sequence[str] | str, what: str) -> list[str]:
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise InvalidInput(f"{what} must name at least one certified method")
    for m in names:
        if not get_method(m).guarantee.is_upper:
            raise InvalidInput(f"{what} must give certified upper bounds; {m!r} gives a {get_method(m).guarantee}")
    return names


def _checked_labels(labels: Any, n: int, m: int) -> torch.Tensor | None:
    """``labels`` as ``(n,)`` int64 classes in ``[0, m)`` (one integer: the same for every input)."""
    if labels is None:
        return None
    t = torch.as_tensor(labels)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InvalidInput(f"labels must be integers (class indices), got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(n)
    t = t.reshape(-1) if t.dim() == 2 and 1 in t.shape else t
    if t.dim() != 1 or len(t) != n:
        raise InvalidInput(f"labels must hold one class per input ({n}), got shape {tuple(t.shape)}")
    if len(t) and (t.min() < 0 or t.max() >= m):
        raise InvalidInput(f"labels must be class indices in [0, {m}), got values in [{int(t.min())}, {int(t.max())}]")
    return t.to(device="cpu", dtype=torch.int64)


def _checked_radii(radii: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(r) for r in radii)
    except (TypeError, ValueError):
        raise InvalidInput(f"radii must be a sequence of numbers, got {radii!r}") from None
    if any(not (math.isfinite(r) and r >= 0) for r in out):
        raise InvalidInput(f"radii must be non-negative finite numbers, got {list(out)}")
    return out


def _on_domain(graph: Graph, domain: Any, x: torch.Tensor) -> Graph:
    """``graph`` localized to ``domain`` (the hull of a union of boxes), which must hold every input
    (CROWN, intersected with the bounds a graph localized on a region containing it carries)."""
    region = as_region(domain, graph.input_shape)
    if region is None:
        return graph
    outside = ~region.contains(x.detach().to(device="cpu", dtype=torch.float64))
    if outside.any():
        raise InvalidInput(f"input {int(outside.nonzero()[0])} lies outside the domain {region.describe()}: a "
                           f"certificate on a domain covers inputs inside it")
    return localize_keeping(graph, region.hull() if isinstance(region, BoxUnion) else region)


def _pair_matrix(graph: Graph, given: torch.Tensor | bool, methods: list[str] | None, seed: int,
                 m: int) -> torch.Tensor | None:
    """The ``(m, m)`` pair constants: computed (``given`` True), checked (a tensor) or None (False)."""
    if isinstance(given, bool):
        return margin_constants(graph, methods=methods, seed=seed) if given else None
    if not isinstance(given, torch.Tensor) or given.shape != (m, m):
        raise InvalidInput(f"pair_constants must be True, False or a tensor ({m}, {m}), got "
                           f"{tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__}")
    given = given.detach().to(device="cpu", dtype=torch.float64)
    if torch.isnan(given).any() or (given < 0).any():
        raise InvalidInput("pair_constants must be non-negative upper bounds (inf where unknown)")
    return given


def _up(v: float) -> float:
    return math.nextafter(v, math.inf)


def _down(t: torch.Tensor) -> torch.Tensor:
    """Each finite positive entry lowered by one ulp: below the exact quotient it was rounded from."""
    return torch.where(torch.isfinite(t) & (t > 0), torch.nextafter(t, torch.zeros_like(t)), t)


def _pair_radius(margins: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
    """``min_j margins[:, j] / constants[:, j]`` rounded down, 0 where a margin is not positive;
    ``margins`` is ``inf`` at the predicted class, which therefore never decides."""
    q = torch.where(margins > 0, margins / constants, torch.zeros_like(margins))
    return _down(q).min(dim=1).values


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


def _ball_check(graph: Graph, x: torch.Tensor, y: int, margins: torch.Tensor, global_pairs: torch.Tensor,
                r: float, upper: float, methods: Sequence[str], seed: int, deadline: float | None,
                every: bool = False) -> tuple[bool, torch.Tensor]:
    """Is ``B(x, r)`` certified, ``margins[j] > r L_yj(B(x, r))`` for every ``j != y`` (module doc)?
    Returns that and the constants ``L_yj`` (``inf`` at ``y`` and, unless ``every``, after the first
    ``j`` that fails); ``global_pairs[j]`` bounds ``L_yj`` on all of ``R^n``."""
    ball = Ball(x.detach().to(torch.float64).cpu(), r, 2)
    left = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
    local = localize_keeping(graph, ball, time_budget=left)
    f_const = min(upper, least_certified(local, methods, seed)[0])
    m = len(margins)
    constants = torch.full((m,), math.inf, dtype=torch.float64)
    ok = True
    for j in range(m):
        if j == y:
            continue
        on_ball = least_certified(with_output_map(local, margin_rows(m, y, j), f"logit {y} - logit {j}"), methods,
                                  seed)[0]
        constants[j] = min(_up(math.sqrt(2.0) * _up(f_const)), float(global_pairs[j]), on_ball)
        if not float(margins[j]) > r * float(constants[j]):
            ok = False
            if not every:
                break
    return ok, constants


def _local_radius(graph: Graph, x: torch.Tensor, y: int, margins: torch.Tensor, global_pairs: torch.Tensor,
                  r_start: float, upper: float, methods: Sequence[str], steps: int, seed: int,
                  time_budget: float | None) -> float:
    """The largest ``r`` found with every ``margins[j] > r L_yj(B(x, r))`` (module doc), at least
    ``r_start`` (a certified radius); doubling from ``r_start`` until a radius fails, then bisection."""
    deadline = None if time_budget is None else time.perf_counter() + time_budget

    def holds(r: float) -> bool:
        return _ball_check(graph, x, y, margins, global_pairs, r, upper, methods, seed, deadline)[0]

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline
    if not (r_start > 0 and math.isfinite(r_start)):
        return r_start if r_start > 0 else 0.0
    good, bad = r_start, None
    r = 2 * r_start
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
