"""A zonotope (affine-arithmetic) enclosure of the Jacobians of a ReLU chain on many boxes at once:
a tighter part bound of the batched ``local-bab`` search (:func:`.relu_boxes.bound_boxes`) on
parts that keep tens of unstable neurons.

**What is enclosed.** On a box, each ReLU's slope lies in ``{1}``, ``{0}`` or ``[0, 1]`` (from the
box's pre bounds), and every Jacobian of the chain (and every secant matrix ``f(x) - f(y) = J(D)
(x - y)``, :mod:`.slope_box`) is ``J(D) = W_K D_{K-1} ... D_1 W_1`` for admissible diagonals ``D``.
The interval Jacobian (:mod:`.relu_boxes`) encloses each partial product ``H_j = D_j W_j ... D_1 W_1``
entry by entry, so ``|W|`` is applied to the radius at every later layer and the signs that cancel
are lost. Here ``H_j`` is enclosed by a **zonotope of matrices**

``H_j in { C + sum_s eps_s G_s + Delta : eps in [-1, 1]^S, |Delta| <= R }``

whose **generators** ``G_s`` go through later layers exactly (``W G_s``), so the cancellations of
the first-order terms are kept:

* **affine** ``W* = W + dW``, ``|dW| <= E`` (the enclosure of :class:`.relu_boxes.Layer`): ``C -> W C``,
  ``G_s -> W G_s`` and ``R -> |W| (R + gamma_n (|C| + A)) + E (|C| + A + R)`` with ``A = sum_s |G_s|``
  (Higham's bound of the products' rounding: each ``|eps_s| <= 1``; and the weight error on every
  matrix of the set);
* **ReLU**: a stable row is kept (slope 1) or zeroed (slope 0), exactly. An unstable neuron ``n``
  has slope ``s = (1 + eps_n) / 2`` with a **new symbol** ``eps_n`` (each neuron's slope is used once),
  so its row ``h = c + sum_s eps_s g_s + delta`` becomes
  ``c / 2 + sum_s eps_s g_s / 2 + eps_n c / 2 + eps_n (sum_s eps_s g_s) / 2 + s delta``: the centre
  and old generators halved (exact in binary), one new generator ``c / 2`` in row ``n`` for
  ``eps_n``, the product term (``|.| <= a / 2`` per column, ``a = sum_s |g_s|``) as **one new symbol
  per column** with the single entry ``a_c / 2`` (a box is the product of its columns' segments),
  and ``|s delta| <= R``: the row of ``R`` is kept.
* **Order reduction**: past ``keep`` generators per box, the smallest (by ``sum |G_s|``) are moved to
  ``R`` as ``|G_s|`` (their segment lies in that box).

Every step maps the set to a superset of the image of the previous one, so the final set holds every
``J(D)``: ``|J - C| <= A + R`` entry-wise, and :func:`.relu_boxes.norm_bound` gives a **certified upper
bound** of ``sup_D ||J(D)||_2``, hence of the constant on the box (L2 -> L2). Symbols are treated as
independent (their products and the slopes' dependence on the input forgotten): a relaxation.

Measured on the 4 largest-bound cells of the 4x4x4x4x4 grid of ACAS Xu 1_1 prop 3 (34-39 unstable
neurons): 305-333 against 1730-1897 for the interval Jacobian with its meeting points (no order
reduction; ``keep=64``: 5% above), the sampled maximum of the Jacobian norm being 20-45 there; on
all 1024 cells the median ratio to the interval bound is 0.21. Cost: ~5 ms per box (one core),
~3x the interval bound with CROWN pre bounds. Not tried further: the same enclosure of ``J^T``
(from the output backwards) was no tighter on these boxes, and enumerating the slopes of 6
unstable neurons (64 zonotopes) lowered the bound by 15-25% only.
"""

from __future__ import annotations

import torch

from .float_error import gamma, round_up
from .relu_boxes import Layer, norm_bound

__all__ = ["zonotope_bound"]

Bounds = tuple[torch.Tensor, torch.Tensor]  # (l, u), each (B, n), float64


def zonotope_bound(layers: list[Layer], pre: list[Bounds], d: int, keep: int = 64, chunk: int = 64) -> torch.Tensor:
    """Certified upper bounds ``(B,)`` of ``||J(D)||_2`` over every admissible ``D`` of each box
    (module doc), from the boxes' sound pre bounds ``pre[k] = (l, u)`` of ReLU layer ``k``; ``keep``:
    generators kept per box; ``chunk``: boxes enclosed at once (memory)."""
    B = pre[0][0].shape[0]
    out = torch.empty(B, dtype=torch.float64)
    for s in range(0, B, chunk):
        out[s: s + chunk] = _chunk(layers, [(l[s: s + chunk], u[s: s + chunk]) for l, u in pre], d, keep)
    return out.nan_to_num(nan=torch.inf)  # overflow (inf * 0 in the masks): no bound, never a small one


def _chunk(layers: list[Layer], pre: list[Bounds], d: int, keep: int) -> torch.Tensor:
    """:func:`zonotope_bound` on one chunk of boxes, feature-major (one matrix product per layer):
    centre ``C`` ``(n, B, d)``, generators ``G`` ``(n, B, S, d)``, remainder ``R`` ``(n, B, d)``."""
    B = pre[0][0].shape[0]
    C = torch.eye(d, dtype=torch.float64)[:, None, :].expand(d, B, d)
    G = torch.zeros(d, B, 0, d, dtype=torch.float64)
    R = torch.zeros(d, B, d, dtype=torch.float64)
    for layer, (l, u) in zip(layers, pre):
        C, G, R = _affine(layer, C, G, R)
        C, G, R = _relu(C, G, R, l.T, u.T, keep)
    C, G, R = _affine(layers[-1], C, G, R)
    return norm_bound(C.permute(1, 0, 2), round_up(_spread(G) + R, 2).permute(1, 0, 2))


def _spread(G: torch.Tensor) -> torch.Tensor:
    """``>= sum_s |G_s|`` (rounded up), ``(n, B, d)``."""
    return round_up(G.abs().sum(dim=2), max(1, G.shape[2]))


def _matmul(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``W`` applied to the first axis of ``X`` ``(n, ...)``, as one matrix product."""
    return (W @ X.reshape(X.shape[0], -1)).reshape(W.shape[0], *X.shape[1:])


def _affine(layer: Layer, C: torch.Tensor, G: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The set through ``W* = W + dW`` (module doc)."""
    n = layer.W.shape[1]
    CA = C.abs() + _spread(G)
    R = round_up(_matmul(layer.W.abs(), R + gamma(n) * CA) + _matmul(layer.E, CA + R), 2 * n + 4)
    return _matmul(layer.W, C), _matmul(layer.W, G), R


def _relu(C: torch.Tensor, G: torch.Tensor, R: torch.Tensor, l: torch.Tensor, u: torch.Tensor,
          keep: int) -> tuple[torch.Tensor, ...]:
    """The set through the slopes of the pre bounds ``l, u`` ``(n, B)`` (module doc), reduced to at
    most ``keep`` generators per box: the candidates are the old generators (halved on unstable
    rows, zeroed on inactive ones), one per unstable neuron ``n`` (row ``n``: ``c / 2``) and one per
    unstable neuron and column (the product term); the largest by ``sum |G_s|`` are built, the others
    go to ``R`` as their absolute values."""
    n, B, S, d = G.shape
    on, unstable = l >= 0, (l < 0) & (u > 0)
    mid = on.to(torch.float64) + 0.5 * unstable  # (n, B)
    half = (0.5 * unstable.to(torch.float64))[..., None]
    Gabs = G.abs()
    product = half * round_up(Gabs.sum(dim=2), max(1, S))  # (n, B, d)
    slope = half * C  # (n, B, d): row n of the generator of eps_n
    sizes = torch.cat([(Gabs.sum(dim=3) * mid[..., None]).sum(dim=0), slope.abs().sum(dim=2).T,
                       product.permute(1, 0, 2).reshape(B, n * d)], dim=1)  # (B, S + n + n d)
    k = min(keep, int((sizes > 0).sum(dim=1).max()))
    top = sizes.topk(k, dim=1).indices  # (B, k)
    kept = torch.zeros_like(sizes).scatter_(1, top, 1.0)
    old, new = top < S, top - S
    K = G.gather(2, top.clamp(max=max(0, S - 1))[None, ..., None].expand(n, B, k, d)) \
        * (mid[..., None] * old[None])[..., None] if S else torch.zeros(n, B, k, d, dtype=torch.float64)
    row = torch.where(new < n, new, (new - n).div(d, rounding_mode="floor")).clamp(0, n - 1)  # (B, k)
    col = (new - n).remainder(d)
    values = torch.where(((new >= 0) & (new < n))[..., None],
                         slope.permute(1, 0, 2).gather(1, row[..., None].expand(B, k, d)),
                         torch.nn.functional.one_hot(col, d) * product.permute(1, 0, 2).reshape(B, n * d)
                         .gather(1, new.clamp(min=n, max=n + n * d - 1) - n)[..., None])
    values = values * (~old)[..., None]
    K = K.scatter_add(0, row[None, ..., None].expand(1, B, k, d), values[None])
    dropped = (Gabs * (1 - kept[:, :S])[None, ..., None]).sum(dim=2) * mid[..., None] \
        + (1 - kept[:, S: S + n]).T[..., None] * slope.abs() + (1 - kept[:, S + n:]).reshape(B, n, d).permute(1, 0, 2) * product
    R = round_up(R * (on | unstable).to(torch.float64)[..., None] + dropped, S + 3)
    return mid[..., None] * C, K, R
