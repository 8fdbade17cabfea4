"""Independent oracles for the tests: nothing here calls a lipbound method.

* :func:`dense_linear` materialises the linear part of an affine torch function (its Jacobian at
  0, by autograd on the original module) as a numpy matrix.
* :func:`pair_max` is the brute force ``max_{d_j in {lo, hi}} ||A diag(d) B||_2`` over all ``2^n``
  vertices with numpy SVDs (the map ``d -> ||A diag(d) B||`` is convex, so the maximum over the
  box is at a vertex: DESIGN §5).
* :class:`SeqLipOracle` is the SeqLip formula of DESIGN §5 written again from the matrices: thin
  SVDs ``M_i = U_i S_i V_i^T``, ``T_1 = S_1``, ``T_K = S_K``, ``T_i = S_i^{1/2}`` otherwise, and
  each pair ``max_D ||T_{i+1} V_{i+1}^T D U_i T_i||`` by brute force, kept at most at the pair's
  AutoLip factor ``||T_{i+1}|| max(|a|, |b|) ||T_i||`` (both are upper bounds).
* :func:`slope_range` reads an activation's derivative range from a dense grid (autograd on the
  module), plus points 1e-9 either side of small integers, where kinks sit.
* :func:`witnessed_lower` is the largest Jacobian norm and pair quotient at sampled inputs of the
  original module: a lower bound of the true constant that every certified upper bound must reach.
* :func:`reference_autolip` applies AutoLip's rules again to exact layer norms; it reads only the
  structure of lipbound's graph (nodes, slope ranges, pooling multiplicities) and materialises each
  layer by autograd through its operator.
* :func:`relu_witness_value` re-checks a lower bound's witness on a ReLU MLP from its weights alone:
  a pair quotient in exact rational arithmetic, or a Jacobian rebuilt from the activation pattern
  (refused at a kink).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import lipbound


def dense_linear(fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Sequence[int]) -> np.ndarray:
    """The linear part of an affine ``fn`` on a batch of one input of shape ``in_shape``, as an
    ``(out, in)`` float64 matrix: the Jacobian at 0 by autograd."""
    z = torch.zeros(1, *in_shape, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(lambda x: fn(x).reshape(-1), z)
    return j.reshape(j.shape[0], -1).detach().numpy()


def norm2(M: np.ndarray) -> float:
    """Spectral norm by numpy's SVD."""
    return float(np.linalg.norm(M, 2)) if M.size else 0.0


def vertex_norm(A: np.ndarray, B: np.ndarray, d: np.ndarray) -> float:
    """``||A diag(d) B||_2``."""
    return norm2((A * d) @ B)


def pair_max(A: np.ndarray, B: np.ndarray, lo: float, hi: float) -> tuple[float, np.ndarray]:
    """Brute force ``max ||A diag(d) B||_2`` over ``d in {lo, hi}^n`` and a maximising ``d``."""
    n = A.shape[1]
    assert n <= 16, "brute force over 2^n vertices"
    best, arg = -1.0, None
    patterns = np.array(list(itertools.product((lo, hi), repeat=n)), dtype=np.float64)
    for chunk in np.array_split(patterns, max(1, len(patterns) // 4096)):
        mats = np.einsum("pn,kn,nq->kpq", A, chunk, B)
        vals = np.linalg.norm(mats, 2, axis=(1, 2))
        k = int(vals.argmax())
        if vals[k] > best:
            best, arg = float(vals[k]), chunk[k]
    return best, arg


def slope_range(act: nn.Module) -> tuple[float, float]:
    """``(inf, sup)`` of the derivative of an element-wise activation, sampled on ``[-30, 30]``
    (step 1e-4), at ``+-10^k`` up to ``10^8`` (slow tails such as Softsign's) and 1e-9 either side
    of the integers in ``[-8, 8]``, where kinks sit: an inner approximation, accurate to about
    1e-8 for the activations of the tests."""
    grid = torch.linspace(-30, 30, 600_001, dtype=torch.float64)
    tails = torch.logspace(1.5, 8, 2000, dtype=torch.float64)
    kinks = torch.arange(-8, 9, dtype=torch.float64)
    x = torch.cat([grid, tails, -tails, kinks - 1e-9, kinks + 1e-9]).requires_grad_(True)
    (d,) = torch.autograd.grad(act.double()(x).sum(), x)
    return d.min().item(), d.max().item()


def mlp_parts(net: nn.Sequential) -> tuple[list[np.ndarray], list[tuple[float, float]]]:
    """The weight matrices of a ``Linear, act, Linear, ..., Linear`` network and the slope ranges
    of its activations."""
    mats = [m.weight.detach().double().numpy() for m in net if isinstance(m, nn.Linear)]
    slopes = [slope_range(m) for m in net if not isinstance(m, nn.Linear)]
    assert len(slopes) == len(mats) - 1
    return mats, slopes


class SeqLipOracle:
    """SeqLip (DESIGN §5) of a chain ``M_K s_{K-1} ... s_1 M_1`` from its dense matrices and the
    slope ranges of its activations; ``k`` keeps only the top ``k`` singular triplets of each
    layer (the paper's top-k truncation)."""

    def __init__(self, mats: Sequence[np.ndarray], slopes: Sequence[tuple[float, float]], k: int | None = None):
        self.K = len(mats)
        self.slopes = list(slopes)
        svds = [np.linalg.svd(M, full_matrices=False) for M in mats]
        self.norms = [float(s[0]) for _, s, _ in svds]
        self.svd = [(U[:, :k], s[:k], Vh[:k]) for U, s, Vh in svds] if k else svds

    def _t(self, i: int, s: np.ndarray) -> np.ndarray:
        return s if i in (0, self.K - 1) else np.sqrt(s)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``A = T_{i+1} V_{i+1}^T`` and ``B = U_i T_i`` of the pair after layer ``i`` (0-based)."""
        Ui, si, _ = self.svd[i]
        _, sj, Vhj = self.svd[i + 1]
        return self._t(i + 1, sj)[:, None] * Vhj, Ui * self._t(i, si)[None, :]

    def autolip_factor(self, i: int) -> float:
        """``||T_i|| max(|a_i|, |b_i|) ||T_{i+1}||`` with the full (untruncated) norms."""
        t = [n if j in (0, self.K - 1) else math.sqrt(n) for j, n in enumerate(self.norms)]
        a, b = self.slopes[i]
        return t[i] * max(abs(a), abs(b)) * t[i + 1]

    def pair_max(self, i: int) -> float:
        A, B = self.pair(i)
        return pair_max(A, B, *self.slopes[i])[0]

    def at_pattern(self, i: int, pattern: Sequence[int]) -> float:
        """The pair's value at a vertex (``pattern[j]`` true: slope ``b``, else ``a``)."""
        A, B = self.pair(i)
        a, b = self.slopes[i]
        return vertex_norm(A, B, np.where(np.asarray(pattern, dtype=bool), b, a))

    def all_high(self, i: int) -> float:
        """The pair's value at ``D = b I``: the greedy's start, below its result."""
        return self.at_pattern(i, [1] * self.pair(i)[0].shape[1])

    def certified(self) -> float:
        """``prod_i min(pair maximum, AutoLip factor)``: SeqLip's certified value of the chain."""
        return math.prod(min(self.pair_max(i), self.autolip_factor(i)) for i in range(self.K - 1))

    def autolip(self) -> float:
        return math.prod(self.norms) * math.prod(max(abs(a), abs(b)) for a, b in self.slopes)


def seeded_mlp(seed: int, widths: Sequence[int], act=nn.ReLU) -> nn.Sequential:
    """A float64 MLP ``widths[0] -> ... -> widths[-1]`` with torch's default initialisation from ``seed``
    and ``act`` between the linear layers."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(nn.Linear(a, b).double())
        if i < len(widths) - 2:
            mods.append(act())
    return nn.Sequential(*mods)


def jacobian_norms(model: nn.Module, xs: torch.Tensor) -> torch.Tensor:
    """Spectral norms of the Jacobian of ``model`` (float64) at each input of the batch ``xs``."""
    model = model.double().eval()
    f = lambda z: model(z[None]).reshape(-1)  # noqa: E731
    jac = torch.stack([torch.autograd.functional.jacobian(f, x) for x in xs.double()])
    return torch.linalg.matrix_norm(jac.reshape(len(xs), jac.shape[1], -1), ord=2)


def witnessed_lower(model: nn.Module, shape: Sequence[int], n: int = 12, seed: int = 0) -> float:
    """Largest Jacobian norm and pair quotient ``||f(x) - f(y)|| / ||x - y||`` (``y`` at distance
    about 1e-3 of ``x``) at ``n`` random inputs of scales 1, 2, 3: each is at most the true
    constant, up to float64 rounding (relative 1e-9 is ample at these sizes)."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    scales = (1 + torch.arange(n) % 3).reshape(-1, *[1] * len(shape))
    xs = torch.randn(n, *shape, generator=g, dtype=torch.float64) * scales
    ys = xs + 1e-3 * torch.randn(xs.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        q = (model(xs) - model(ys)).reshape(n, -1).norm(dim=1) / (xs - ys).reshape(n, -1).norm(dim=1)
    return max(jacobian_norms(model, xs).max().item(), q.max().item())


def reference_autolip(model, shape=None) -> float:
    """AutoLip's rules (DESIGN §4) over lipbound's fused graph of ``model``, with the exact norm of
    every affine node (numpy SVD of its matrix, materialised by autograd through the node's
    operator), ``max(|a|, |b|)`` per activation, ``sqrt(m)`` per max pool (``m`` windows per
    input), sums at additions and root-sum-of-squares at concatenations."""
    g = lipbound.as_graph(model, shape).fused().to(dtype=torch.float64)
    L: dict[str, float] = {}
    for node in g:
        ins = [L[i] for i in node.inputs]
        if node.kind == "input":
            L[node.name] = 1.0
        elif node.kind == "affine":
            L[node.name] = norm2(dense_linear(node.op.matvec, node.op.in_shape)) * ins[0]
        elif node.kind == "activation":
            L[node.name] = max(abs(s) for s in node.slope) * ins[0]
        elif node.kind == "maxpool":
            L[node.name] = math.sqrt(node.multiplicity) * ins[0]
        elif node.kind == "add":
            L[node.name] = sum(ins)
        else:
            assert node.kind == "concat", node.kind
            L[node.name] = math.sqrt(sum(v * v for v in ins))
    return L[g.output]


def _exact(t: torch.Tensor) -> list[Fraction]:
    return [Fraction(float(v)) for v in t.double().reshape(-1)]


def _sqrt_down(q2: Fraction) -> float:
    """The largest float whose square is at most ``q2``."""
    q = math.sqrt(float(q2))
    while Fraction(q) ** 2 > q2:
        q = math.nextafter(q, 0.0)
    while Fraction(math.nextafter(q, math.inf)) ** 2 <= q2:
        q = math.nextafter(q, math.inf)
    return q


def relu_witness_value(ws: Sequence[np.ndarray], witness: dict) -> float:
    """The value a lower bound's witness proves for the bias-free ReLU MLP ``W_K relu(... W_1 x)``,
    in exact rational arithmetic on the floats of the weights and the witness (rounded down).

    ``form="pair"``: ``||f(x) - f(y)|| / ||x - y||``. ``form="jacobian"``: ``||Df(x) v|| / ||v||``,
    where ``Df(x)`` is the product along the activation pattern at ``x``; every pre-activation at
    ``x`` must be non-zero (else an AssertionError: a Jacobian at a kink proves nothing), which makes
    ``x`` interior to its linear region."""
    mats = [[[Fraction(float(v)) for v in row] for row in W] for W in ws]

    def run(x: list[Fraction], v: list[Fraction] | None = None) -> tuple[list[Fraction], list[Fraction] | None]:
        for k, W in enumerate(mats):
            x = [sum((w * a for w, a in zip(row, x)), Fraction(0)) for row in W]
            v = None if v is None else [sum((w * a for w, a in zip(row, v)), Fraction(0)) for row in W]
            if k < len(mats) - 1:
                assert v is None or all(a != 0 for a in x), "Jacobian witness at a kink"
                v = None if v is None else [b if a > 0 else Fraction(0) for a, b in zip(x, v)]
                x = [max(a, Fraction(0)) for a in x]
        return x, v

    def sq(u: list[Fraction]) -> Fraction:
        return sum((a * a for a in u), Fraction(0))

    x = _exact(witness["x"])
    if witness["form"] == "pair":
        y = _exact(witness["y"])
        fx, fy = run(x)[0], run(y)[0]
        return _sqrt_down(sq([a - b for a, b in zip(fx, fy)]) / sq([a - b for a, b in zip(x, y)]))
    assert witness["form"] == "jacobian", witness["form"]
    v = _exact(witness["v"])
    return _sqrt_down(sq(run(x, v)[1]) / sq(v))


class ZeroNet(nn.Module):
    """``f(x) = 10 x - 10 relu(x) + 10 relu(-x)``: identically 0 (L = 0). At ``x = 0`` both neurons
    kink and autograd's slopes ``relu'(0) = 0`` give 10; off the kink ``J = 10 - 10 = 0`` exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(1, 2, bias=False).double(), nn.Linear(2, 1, bias=False).double()
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.l2.weight.copy_(torch.tensor([[-10.0, 10.0]]))

    def forward(self, x):
        return 10 * x + self.l2(torch.relu(self.l1(x)))
