"""SeqLip against oracles computed without lipbound (tests/oracles.py): brute force over activation
patterns with numpy SVDs, the SeqLip formula of DESIGN §5 recomputed from the weights, realised
Jacobians and sampled Jacobian norms of the original module.

SeqLip clamps every value to AutoLip's, so comparing it with AutoLip proves nothing: each test
compares it with an independent value, and with AutoLip only through the oracle's own product of
numpy norms."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import lipbound
from conftest import jacobian_norm
from lipbound.methods import seqlip_solvers as S
from lipbound.methods.seqlip import sequential_chains
from oracles import SeqLipOracle, dense_linear, jacobian_norms, pair_max, slope_range, vertex_norm, witnessed_lower
from zoo import zoo

FAST = {"time_budget": 0.5}


def randomise(net: nn.Module, g: torch.Generator, scale: float = 1.0) -> nn.Module:
    net = net.double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return net


def weights(net: nn.Sequential) -> list[np.ndarray]:
    return [m.weight.detach().numpy() for m in net if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("act,lo,hi", [(nn.ReLU(), 0.0, 1.0), (nn.LeakyReLU(0.1), 0.1, 1.0),
                                       (nn.LeakyReLU(-0.5), -0.5, 1.0)])
def test_one_hidden_layer_is_the_true_constant(act, lo, hi):
    """Hidden width <= input dim and generic biases: every pattern is realisable, so the constant
    is the brute-force ``max_D ||W2 D W1||`` (DESIGN §5), and SeqLip must equal it."""
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        h = 3 + seed
        n_in, n_out = h + seed % 3, 2 + seed % 4
        net = randomise(nn.Sequential(nn.Linear(n_in, h), act, nn.Linear(h, n_out)), g)
        result = lipbound.seqlip(net, (n_in,), **FAST)
        assert result.kind == "certified_upper"
        W1, W2 = weights(net)
        truth, d = pair_max(W2, W1, lo, hi)
        assert truth * (1 - 1e-12) <= result.value <= truth * (1 + 1e-6)
        # realise the maximising pattern: W1 x + b1 = +1 where the slope is hi, -1 where it is lo
        b1 = net[0].bias.detach()
        target = torch.tensor(np.where(d == hi, 1.0, -1.0))
        x = torch.linalg.lstsq(torch.as_tensor(W1), (target - b1)[:, None]).solution[:, 0]
        assert torch.allclose(torch.as_tensor(W1) @ x + b1, target, atol=1e-8)
        assert jacobian_norm(net, x) == pytest.approx(truth, rel=1e-9)
        assert [p["status"] for p in result.details["chains"][0]["pairs"]] == ["exact"]


ACTS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Hardswish, nn.Mish, nn.Softsign,
        lambda: nn.LeakyReLU(0.2), lambda: nn.LeakyReLU(-0.3), lambda: nn.ELU(2.0)]
SLOPES = [slope_range(a()) for a in ACTS]


def random_mlp(g: torch.Generator, depth: int, max_width: int) -> tuple[nn.Module, int, list[tuple[float, float]]]:
    """A random MLP of ``depth`` linear layers, its input width and its activations' slope ranges."""
    widths = [int(w) for w in torch.randint(2, max_width + 1, (depth + 1,), generator=g)]
    layers: list[nn.Module] = []
    slopes = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            k = int(torch.randint(len(ACTS), (1,), generator=g))
            layers.append(ACTS[k]())
            slopes.append(SLOPES[k])
    return randomise(nn.Sequential(*layers), g, 1.5), widths[0], slopes


def declared_slopes(result: lipbound.Result, true: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The slope ranges SeqLip used for each pair, checked to contain the true ranges (from
    :func:`oracles.slope_range`, an inner approximation) and to round them outwards by at most 1e-3."""
    [chain] = result.details["chains"]
    used = [tuple(p["slope"]) for p in chain["pairs"]]
    for (a, b), (ta, tb) in zip(used, true, strict=True):
        assert ta - 1e-3 <= a <= ta and tb <= b <= tb + 1e-3, ((a, b), (ta, tb))
    return used


def test_certified_seqlip_is_the_formula_and_above_witnessed_jacobians():
    """On random MLPs of every activation: SeqLip equals the formula recomputed from numpy SVDs and
    brute-force pairs, never clamps, and is above the Jacobian norms at sampled inputs."""
    g = torch.Generator().manual_seed(7)
    for i in range(40):
        net, n_in, slopes = random_mlp(g, depth=int(torch.randint(2, 5, (1,), generator=g)), max_width=6)
        result = lipbound.seqlip(net, (n_in,), **FAST)
        oracle = SeqLipOracle(weights(net), declared_slopes(result, slopes))
        assert result.value == pytest.approx(oracle.certified(), rel=1e-6), i
        [chain] = result.details["chains"]
        assert chain["product"] <= chain["autolip"], i  # the clamp to AutoLip never acts
        xs = torch.randn(24, n_in, generator=g, dtype=torch.float64) * 3
        assert result.value >= jacobian_norms(net, xs).max().item() * (1 - 1e-9), i


def assert_vertex_values(result: lipbound.Result, oracle: SeqLipOracle, full: SeqLipOracle, rel: float) -> None:
    """Each pair of a greedy result is the value at its reported vertex (recomputed by numpy, at most
    the pair's AutoLip factor), at least the greedy's start ``D = b I``, and no single flip
    improves it by more than 0.1 % (the greedy's documented tolerance); the value is their product."""
    [chain] = result.details["chains"]
    for j, p in enumerate(chain["pairs"]):
        at = oracle.at_pattern(j, p["pattern"])
        assert p["value"] == pytest.approx(min(at, full.autolip_factor(j)), rel=rel)
        assert at >= oracle.all_high(j) * (1 - rel)
        flips = [oracle.at_pattern(j, np.logical_xor(p["pattern"], np.eye(len(p["pattern"]))[k]))
                 for k in range(len(p["pattern"]))]
        assert max(flips) <= at * (1 + 1e-3)
    assert result.value == pytest.approx(math.prod(p["value"] for p in chain["pairs"]), rel=1e-12)


def test_certified_greedy_and_topk_against_the_formula_on_deep_nets():
    g = torch.Generator().manual_seed(3)
    improved = 0
    for i in range(8):
        net, n_in, slopes = random_mlp(g, depth=int(torch.randint(3, 7, (1,), generator=g)), max_width=10)
        rep = lipbound.estimate(net, (n_in,), methods=("seqlip", "seqlip-greedy", "seqlip-topk"), progress=False,
                                method_options={"seqlip": FAST, "seqlip-topk": {"topk": 4}})
        cert = rep.result("seqlip")
        slopes = declared_slopes(cert, slopes)
        full, top4 = SeqLipOracle(weights(net), slopes), SeqLipOracle(weights(net), slopes, k=4)
        assert cert.kind == "certified_upper" and cert.value == pytest.approx(full.certified(), rel=1e-6), i
        assert rep.result("seqlip-greedy").kind == "estimate" and rep.result("seqlip-topk").kind == "estimate"
        assert_vertex_values(rep.result("seqlip-greedy"), full, full, rel=1e-9)
        assert_vertex_values(rep.result("seqlip-topk"), top4, full, rel=1e-3)  # power-method triplets
        improved += cert.value < full.autolip() * 0.999
    assert improved >= 6  # SeqLip is usually strictly below the product of the layer norms


def small_cnn() -> tuple[nn.Module, tuple[int, ...], SeqLipOracle, list[np.ndarray], list[tuple[float, float]]]:
    """A strided, padded CNN small enough for brute force: 8 then 4 hidden neurons."""
    net = randomise(nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(2, 4, 2),
                                  nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(4, 3)), torch.Generator().manual_seed(0))
    mats = [dense_linear(net[0], (1, 4, 4)), dense_linear(net[2], (2, 2, 2)), net[5].weight.detach().numpy()]
    slopes = [(0.0, 1.0), (0.1, 1.0)]
    return net, (1, 4, 4), SeqLipOracle(mats, slopes), mats, slopes


def test_convolutions_against_their_materialised_matrices():
    net, shape, oracle, mats, slopes = small_cnn()
    cert = lipbound.seqlip(net, shape, **FAST).value
    assert cert == pytest.approx(oracle.certified(), rel=1e-6)
    assert cert < oracle.autolip() * 0.99
    greedy = lipbound.seqlip(net, shape, solver="greedy")
    assert_vertex_values(greedy, oracle, oracle, rel=1e-9)
    # top-k keeping the whole spectrum is the full greedy; a smaller k is the truncated formula's greedy
    covering = lipbound.seqlip(net, shape, solver="topk", topk=64, topk_iter=50)
    assert covering.value == pytest.approx(greedy.value, rel=1e-7)
    small = lipbound.seqlip(net, shape, solver="topk", topk=2)
    truncated = SeqLipOracle(mats, slopes, k=2)
    assert_vertex_values(small, truncated, oracle, rel=1e-4)
    assert small.value <= truncated.certified() * (1 + 1e-4)


def test_every_zoo_model_gets_a_sound_seqlip_number():
    """Every layer kind: SeqLip above witnessed Jacobian norms and pair quotients, greedy below it,
    no chain clamped; SeqLip strictly below the product of the layer norms on most models."""
    improved = 0
    for name, (model, shape) in zoo().items():
        rep = lipbound.estimate(model, shape, methods=("autolip", "seqlip", "seqlip-greedy"), progress=False,
                                method_options={"seqlip": {"time_budget": 0.2}})
        auto, cert, greedy = (rep.result(m).value for m in ("autolip", "seqlip", "seqlip-greedy"))
        assert cert >= witnessed_lower(model, shape, n=6) * (1 - 1e-9), name
        assert greedy <= cert * (1 + 1e-9), name
        assert all(c["product"] <= c["autolip"] for c in rep.result("seqlip").details["chains"]), name
        improved += cert < auto * 0.99
    assert improved >= 7  # mlp, mlp_acts, cnn_bn_pool, cnn_avg, convT, resnet and permute: 0.29 to 0.87


def test_chains_split_at_pooling_and_branches():
    model, shape = zoo()["resnet"]
    g = lipbound.as_graph(model, shape).fused()
    users = g.users()
    for chain in sequential_chains(g):
        for name in chain.interior:
            assert len(users[name]) == 1 and name != g.output
        kinds = [g.nodes[n].kind for n in chain.affines]
        assert kinds == ["affine"] * len(chain.affines)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * 2 * 2, 3), nn.Tanh(), nn.Linear(3, 2))
    chains = sequential_chains(lipbound.as_graph(cnn, (1, 10, 10)))
    assert [len(c.affines) for c in chains] == [1, 3]  # the pooling ends the first chain; flatten fuses


def test_pairs_too_large_for_an_svd_keep_their_autolip_factors():
    net = randomise(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)),
                    torch.Generator().manual_seed(4))
    oracle = SeqLipOracle(weights(net), [(0.0, 1.0)] * 2)
    res = lipbound.seqlip(net, (8,), svd_limit=10)
    [chain] = res.details["chains"]
    assert res.details["pairs"]["fallback"] == 2
    assert [p["value"] for p in chain["pairs"]] == pytest.approx([oracle.autolip_factor(i) for i in range(2)], rel=1e-8)
    assert chain["product"] == pytest.approx(oracle.autolip(), rel=1e-8)
    assert res.value == pytest.approx(oracle.autolip(), rel=1e-8)
    # with room for the SVDs, the same net gets the formula's value, well below
    full = lipbound.seqlip(net, (8,), **FAST).value
    assert full == pytest.approx(oracle.certified(), rel=1e-6) and full < 0.99 * oracle.autolip()
    greedy = lipbound.seqlip(net, (8,), solver="greedy", svd_limit=10)
    assert "seqlip-topk" in greedy.details["chains"][0]["pairs"][0]["reason"]


def test_the_2018_v_transpose_defect_is_not_repeated():
    """With orthogonal-but-not-symmetric V, using V instead of V^T gives a different (wrong)
    value; ours matches brute force on the product."""
    g = torch.Generator().manual_seed(5)
    W1, W2 = (torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    truth, _ = pair_max(W2.numpy(), W1.numpy(), 0.0, 1.0)
    U1, s1, V1h = torch.linalg.svd(W1)
    U2, s2, V2h = torch.linalg.svd(W2)
    A, B = s2[:, None] * V2h, U1 * s1  # T_2 V_2^T and U_1 T_1
    assert S.certified_pair(A, B, 0.0, 1.0).upper == pytest.approx(truth, rel=1e-9)
    wrong = S.certified_pair(s2[:, None] * V2h.T, B, 0.0, 1.0).upper  # T_2 V_2, as in the 2018 code
    assert abs(wrong - truth) > 1e-6 * truth


# ---- the pair solvers -------------------------------------------------------------------------

def vertex(pattern: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    return np.where(pattern.numpy(), hi, lo)


@pytest.mark.parametrize("p,n,q,lo,hi", [(5, 9, 6, 0.0, 1.0), (9, 8, 3, -0.13, 1.13), (1, 9, 1, 0.0, 1.0),
                                         (12, 7, 12, 0.0, 0.25), (1, 10, 4, 0.01, 1.0), (3, 11, 30, -1.0, 1.0)])
def test_pair_solvers_against_brute_force(p, n, q, lo, hi):
    g = torch.Generator().manual_seed(p * 100 + n)
    A = torch.randn(p, n, generator=g, dtype=torch.float64)
    B = torch.randn(n, q, generator=g, dtype=torch.float64)
    An, Bn = A.numpy(), B.numpy()
    truth, _ = pair_max(An, Bn, lo, hi)
    cert = S.certified_pair(A, B, lo, hi)
    assert cert.status == "exact" and cert.upper == pytest.approx(truth, rel=1e-10)
    assert vertex_norm(An, Bn, vertex(cert.pattern, lo, hi)) == pytest.approx(truth, rel=1e-10)
    Ar, Br, _ = S.reduce_pair(A, B)
    assert S.enumerate_pair(Ar, Br, lo, hi).upper == pytest.approx(truth, rel=1e-10)
    bb = S.branch_and_bound(A, B, lo, hi)
    assert bb.upper >= truth * (1 - 1e-12) and bb.status == "exact" and bb.upper == pytest.approx(truth, rel=1e-8)
    box = torch.full((n,), lo, dtype=torch.float64), torch.full((n,), hi, dtype=torch.float64)
    assert S.relaxation_bound(A, B, *box).bound >= truth * (1 - 1e-12)
    for greedy in (S.greedy_pair(A, B, lo, hi), S.greedy_pair_reference(A, B, lo, hi)):
        assert greedy.upper == pytest.approx(vertex_norm(An, Bn, vertex(greedy.pattern, lo, hi)), rel=1e-10)
        assert greedy.upper <= truth * (1 + 1e-12)


def test_branch_and_bound_is_exact_beyond_enumeration_and_bounded_under_a_deadline():
    g = torch.Generator().manual_seed(11)
    A = torch.randn(12, 15, generator=g, dtype=torch.float64)
    B = torch.randn(15, 12, generator=g, dtype=torch.float64)
    exact, _ = pair_max(A.numpy(), B.numpy(), 0.0, 1.0)
    sol = S.certified_pair(A, B, 0.0, 1.0, enumerate_max=8, time_budget=60)
    assert sol.status == "exact" and sol.upper == pytest.approx(exact, rel=1e-8) and sol.upper >= exact * (1 - 1e-12)
    rushed = S.branch_and_bound(A, B, 0.0, 1.0, deadline=0.0)
    assert rushed.upper >= exact * (1 - 1e-12) and rushed.lower <= exact * (1 + 1e-12)


def test_greedy_strategies_give_vertex_values():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(10, 40, generator=g, dtype=torch.float64)
    B = torch.randn(40, 12, generator=g, dtype=torch.float64)
    best = S.greedy_pair(A, B, 0.0, 1.0, strategy="best")
    sweep = S.greedy_pair(A, B, 0.0, 1.0, strategy="sweep", block=7)
    ref = S.greedy_pair_reference(A, B, 0.0, 1.0)
    for sol in (best, sweep, ref):
        assert sol.upper == pytest.approx(vertex_norm(A.numpy(), B.numpy(), vertex(sol.pattern, 0.0, 1.0)), rel=1e-12)
        assert sol.upper >= vertex_norm(A.numpy(), B.numpy(), np.ones(40))  # the greedy starts at D = I
    assert best.upper >= 0.97 * ref.upper
    assert S.certified_pair(A, B, 0.0, 1.0, time_budget=5).upper >= max(best.upper, sweep.upper, ref.upper)
    with pytest.raises(ValueError, match="strategy"):
        S.greedy_pair(A, B, 0.0, 1.0, strategy="worst")


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="certified, greedy, topk"):
        lipbound.seqlip(nn.Linear(2, 2), (2,), solver="magic")


def test_a_node_read_twice_ends_its_chain():
    """Hand-derived chains (module doc: each node but the last read only by the next): a linear
    layer read by an activation and by an addition, and an activation read by two linear layers,
    end their chains there."""
    torch.manual_seed(0)

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3, self.fc4, self.fc5 = (nn.Linear(4, 4) for _ in range(5))

        def forward(self, x):
            h = self.fc1(x)
            r = torch.relu(self.fc2(torch.relu(h)) + h)  # fc1 is read twice: chain [fc1], then [fc2]
            t = torch.tanh(self.fc3(r))
            return self.fc4(t) + self.fc5(t)  # t is read twice: chains [fc3], [fc4] and [fc5]

    g = lipbound.as_graph(Skip(), (4,)).fused()
    chains = [[g.nodes[a].origin for a in c.affines] for c in sequential_chains(g)]
    assert chains == [["fc1"], ["fc2"], ["fc3"], ["fc4"], ["fc5"]]
    chain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    g = lipbound.as_graph(chain, (4,)).fused()
    [c] = sequential_chains(g)
    assert [g.nodes[a].origin for a in c.affines] == ["0", "2", "4"] and len(c.activations) == 2
