"""SeqLip: exact on one hidden layer (against brute force and a realised Jacobian), certified
above witnessed Jacobian norms on many random nets, AutoLip >= SeqLip >= greedy, top-k equal to
the full computation when it keeps the whole spectrum, and the pair solvers against brute force."""

import itertools

import pytest
import torch
from torch import nn

import lipbound
from conftest import jacobian_norm
from lipbound.methods import seqlip_solvers as S
from lipbound.methods.seqlip import sequential_chains
from zoo import zoo

FAST = {"time_budget": 0.5}


def brute_force(W1: torch.Tensor, W2: torch.Tensor, lo: float, hi: float) -> tuple[float, tuple[int, ...]]:
    """``max_D ||W2 D W1||`` over every diagonal with entries in {lo, hi}, and the best pattern."""
    best, arg = -1.0, None
    for bits in itertools.product((0, 1), repeat=W1.shape[0]):
        d = torch.tensor([hi if b else lo for b in bits], dtype=torch.float64)
        v = torch.linalg.matrix_norm(W2 @ (d[:, None] * W1), ord=2).item()
        if v > best:
            best, arg = v, bits
    return best, arg


@pytest.mark.parametrize("act,lo,hi", [(nn.ReLU(), 0.0, 1.0), (nn.LeakyReLU(0.1), 0.1, 1.0),
                                       (nn.LeakyReLU(-0.5), -0.5, 1.0)])
def test_one_hidden_layer_certified_equals_brute_force_and_a_realised_jacobian(act, lo, hi):
    """Hidden width <= input dim: every pattern is realisable, so SeqLip is the true constant."""
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        h = 3 + seed
        n_in, n_out = h + seed % 3, 2 + seed % 4
        net = nn.Sequential(nn.Linear(n_in, h), act, nn.Linear(h, n_out)).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        W1, b1, W2 = net[0].weight.detach(), net[0].bias.detach(), net[2].weight.detach()
        result = lipbound.seqlip(net, (n_in,), **FAST)
        assert result.kind == "certified_upper"
        truth, bits = brute_force(W1, W2, lo, hi)
        assert result.value == pytest.approx(truth, rel=1e-6)
        assert result.value >= truth
        # realise the maximising pattern: W1 x + b1 = +1 where active, -1 where not
        target = torch.tensor([1.0 if b else -1.0 for b in bits], dtype=torch.float64)
        x = torch.linalg.lstsq(W1, (target - b1)[:, None]).solution[:, 0]
        assert torch.allclose(W1 @ x + b1, target, atol=1e-8)
        assert jacobian_norm(net, x) == pytest.approx(truth, rel=1e-6)
        pairs = result.details["chains"][0]["pairs"]
        assert [p["status"] for p in pairs] == ["exact"]


ACTS = [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Hardswish, nn.Mish, nn.Softsign,
        lambda: nn.LeakyReLU(0.2), lambda: nn.LeakyReLU(-0.3), lambda: nn.ELU(2.0)]


def random_mlp(g: torch.Generator, depth: int, max_width: int) -> tuple[nn.Module, int]:
    widths = [int(w) for w in torch.randint(2, max_width + 1, (depth + 1,), generator=g)]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(ACTS[int(torch.randint(len(ACTS), (1,), generator=g))]())
    net = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 1.5)
    return net, widths[0]


def test_certified_seqlip_is_above_witnessed_jacobians_on_many_random_nets():
    g = torch.Generator().manual_seed(7)
    checked = 0
    for i in range(200):
        net, n_in = random_mlp(g, depth=int(torch.randint(2, 5, (1,), generator=g)), max_width=6)
        value = lipbound.seqlip(net, (n_in,), **FAST).value
        xs = torch.randn(24, n_in, generator=g, dtype=torch.float64) * 3
        jac = torch.func.vmap(torch.func.jacrev(lambda z: net(z[None])[0]))(xs)
        witnessed = torch.linalg.matrix_norm(jac, ord=2).max().item()
        assert value >= witnessed * (1 - 1e-9), (i, value, witnessed)
        checked += 1
    assert checked == 200


def test_autolip_seqlip_greedy_are_ordered_on_random_deep_nets():
    g = torch.Generator().manual_seed(3)
    improved = 0
    for i in range(12):
        net, n_in = random_mlp(g, depth=int(torch.randint(3, 7, (1,), generator=g)), max_width=12)
        rep = lipbound.estimate(net, (n_in,), methods=("autolip", "seqlip", "seqlip-greedy", "seqlip-topk"),
                                progress=False, method_options={"seqlip": FAST, "seqlip-topk": {"topk": 6}})
        auto, cert, greedy, topk = (rep.result(m).value for m in ("autolip", "seqlip", "seqlip-greedy", "seqlip-topk"))
        assert auto >= cert * (1 - 1e-12)
        assert cert >= greedy * (1 - 1e-9)
        assert topk <= auto * (1 + 1e-12)
        assert rep.result("seqlip-greedy").kind == "estimate" and rep.result("seqlip").kind == "certified_upper"
        improved += cert < auto * 0.999
    assert improved >= 8  # SeqLip is usually strictly better


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.GELU(),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


def test_topk_equals_the_full_computation_when_k_covers_the_spectrum():
    net, shape = small_cnn(), (1, 6, 6)
    full = lipbound.seqlip(net, shape, solver="greedy")
    topk = lipbound.seqlip(net, shape, solver="topk", topk=64, topk_iter=50)
    assert topk.value == pytest.approx(full.value, rel=1e-7)
    cert = lipbound.seqlip(net, shape, **FAST)
    assert cert.value >= full.value * (1 - 1e-9)
    # a smaller k keeps fewer directions: never above the full greedy's AutoLip factors
    small = lipbound.seqlip(net, shape, solver="topk", topk=2)
    assert small.value <= lipbound.autolip(net, shape).value * (1 + 1e-12)


def test_every_zoo_model_gets_a_seqlip_number_between_witnessed_and_autolip():
    for name, (model, shape) in zoo().items():
        rep = lipbound.estimate(model, shape, methods=("autolip", "seqlip", "seqlip-greedy"), progress=False,
                                method_options={"seqlip": {"time_budget": 0.2}})
        auto, cert, greedy = (rep.result(m).value for m in ("autolip", "seqlip", "seqlip-greedy"))
        assert greedy <= cert * (1 + 1e-9) <= auto * (1 + 1e-9), name
        m = model.double().eval()
        gen = torch.Generator().manual_seed(0)
        for _ in range(4):
            x = torch.randn(*shape, generator=gen, dtype=torch.float64)
            assert cert >= jacobian_norm(m, x) * (1 - 1e-9), name


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


def test_pairs_fall_back_to_autolip_when_layers_are_too_large_for_an_svd():
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    res = lipbound.seqlip(net, (8,), svd_limit=10)
    auto = lipbound.autolip(net, (8,)).value
    assert res.details["pairs"]["fallback"] == 2
    assert res.value == pytest.approx(auto, rel=1e-12) and res.value <= auto
    greedy = lipbound.seqlip(net, (8,), solver="greedy", svd_limit=10)
    assert "seqlip-topk" in greedy.details["chains"][0]["pairs"][0]["reason"]


def test_the_2018_v_transpose_defect_is_not_repeated():
    """With orthogonal-but-not-symmetric V, using V instead of V^T gives a different (wrong)
    value; ours matches brute force on the product."""
    torch.manual_seed(5)
    W1, W2 = torch.randn(4, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    truth, _ = brute_force(W1, W2, 0.0, 1.0)
    U1, s1, V1h = torch.linalg.svd(W1)
    U2, s2, V2h = torch.linalg.svd(W2)
    A, B = s2[:, None] * V2h, U1 * s1  # T_2 V_2^T and U_1 T_1
    assert S.certified_pair(A, B, 0.0, 1.0).upper == pytest.approx(truth, rel=1e-9)
    wrong = S.certified_pair(s2[:, None] * V2h.T, B, 0.0, 1.0).upper  # T_2 V_2, as in the 2018 code
    assert abs(wrong - truth) > 1e-6 * truth


# ---- the pair solvers -------------------------------------------------------------------------

def vertex(pattern: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.where(pattern, torch.tensor(hi, dtype=torch.float64), torch.tensor(lo, dtype=torch.float64))


def pair_brute(A, B, lo, hi):
    n = A.shape[1]
    return max(S.pair_norm(A, B, torch.tensor([hi if b else lo for b in bits], dtype=torch.float64))
               for bits in itertools.product((0, 1), repeat=n))


@pytest.mark.parametrize("p,n,q,lo,hi", [(5, 9, 6, 0.0, 1.0), (9, 8, 3, -0.13, 1.13), (1, 9, 1, 0.0, 1.0),
                                         (12, 7, 12, 0.0, 0.25), (1, 10, 4, 0.01, 1.0), (3, 11, 30, -1.0, 1.0)])
def test_pair_solvers_against_brute_force(p, n, q, lo, hi):
    g = torch.Generator().manual_seed(p * 100 + n)
    A = torch.randn(p, n, generator=g, dtype=torch.float64)
    B = torch.randn(n, q, generator=g, dtype=torch.float64)
    truth = pair_brute(A, B, lo, hi)
    cert = S.certified_pair(A, B, lo, hi)
    assert cert.status == "exact" and cert.upper == pytest.approx(truth, rel=1e-10)
    assert S.pair_norm(A, B, vertex(cert.pattern, lo, hi)) == pytest.approx(truth, rel=1e-10)
    Ar, Br, _ = S.reduce_pair(A, B)
    assert S.enumerate_pair(Ar, Br, lo, hi).upper == pytest.approx(truth, rel=1e-10)
    bb = S.branch_and_bound(A, B, lo, hi)
    assert bb.upper >= truth * (1 - 1e-12) and bb.status == "exact" and bb.upper == pytest.approx(truth, rel=1e-8)
    box = torch.full((n,), lo, dtype=torch.float64), torch.full((n,), hi, dtype=torch.float64)
    assert S.relaxation_bound(A, B, *box).bound >= truth * (1 - 1e-12)
    greedy = S.greedy_pair(A, B, lo, hi)
    assert greedy.upper <= truth * (1 + 1e-12)
    assert S.greedy_pair_reference(A, B, lo, hi).upper <= truth * (1 + 1e-12)


def test_branch_and_bound_is_exact_beyond_enumeration_and_bounded_under_a_deadline():
    g = torch.Generator().manual_seed(11)
    A = torch.randn(12, 18, generator=g, dtype=torch.float64)
    B = torch.randn(18, 12, generator=g, dtype=torch.float64)
    exact = S.enumerate_pair(A, B, 0.0, 1.0).upper
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
    for sol in (best, sweep):
        assert sol.upper == pytest.approx(S.pair_norm(A, B, vertex(sol.pattern, 0.0, 1.0)), rel=1e-12)
    assert best.upper >= 0.97 * ref.upper
    assert S.certified_pair(A, B, 0.0, 1.0, time_budget=5).upper >= max(best.upper, sweep.upper, ref.upper)
    with pytest.raises(ValueError, match="strategy"):
        S.greedy_pair(A, B, 0.0, 1.0, strategy="worst")


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="certified, greedy, topk"):
        lipbound.seqlip(nn.Linear(2, 2), (2,), solver="magic")
