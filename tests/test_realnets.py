"""The real-network suite: every network loads, computes what the original computes, and the
methods run on it with consistent results.

Files under a permissive licence are in ``tests/data`` (see its NOTICE) and always tested; the
others are read from ``../shared/realnets`` through the ``realnets`` fixture (skipped when absent).
Oracles: ``onnx.reference`` or the original torch module (forward), numpy SVDs of the stored
weights and of each layer materialised by autograd (tests/oracles.py), sampled Jacobian norms (a
certified bound must exceed them), and the lower bound's witness re-checked in exact arithmetic.
No method call is wrapped in a try: a method that fails here fails the test.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")

import lipbound  # noqa: E402
from lipbound.frontends.from_onnx import reference_evaluator  # noqa: E402

from conftest import REPO  # noqa: E402
from oracles import reference_autolip, relu_witness_value  # noqa: E402

DATA = Path(__file__).parent / "data"


def _examples():
    spec = importlib.util.spec_from_file_location("lipbound_examples_realnets", REPO / "examples" / "realnets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EX = _examples()
BUNDLED = sorted(p.name for p in DATA.iterdir() if p.name in EX.SUITE)
SHARED_ONLY = sorted(set(EX.SUITE) - set(BUNDLED))


def _original(path: Path):
    """The original function on a batch of single samples: onnx.reference or the torch module."""
    loader, _ = EX.SUITE[path.name]
    if loader is None:
        model = onnx.load(str(path))
        ev = reference_evaluator(model)
        inits = {t.name for t in model.graph.initializer}
        inp = next(i for i in model.graph.input if i.name not in inits)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        batched = len(dims) >= 2 and dims[0] in (None, 1)
        out = model.graph.output[0].name
        last = model.graph.node[-1]
        if last.op_type == "Softmax":  # the suite bounds the logits
            out = last.input[0]

        def run(x: torch.Tensor) -> torch.Tensor:
            rows = [ev.run([out], {inp.name: (xi[None] if batched else xi).numpy()})[0] for xi in x]
            return torch.as_tensor(np.stack([np.asarray(r).reshape(-1) for r in rows]))
        return run
    module, _ = loader(path)
    return lambda x: module(x.to(next(module.parameters()).dtype)).detach().reshape(len(x), -1)


def _check_forward(path: Path) -> lipbound.Graph:
    graph = EX.load_realnet(path)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((3, *graph.input_shape), generator=gen, dtype=graph.dtype)
    want = _original(path)(x).double()
    got = graph.forward(x).detach().reshape(3, -1).double()
    scale = max(1.0, want.abs().max().item())
    assert (got - want).abs().max().item() <= 1e-5 * scale, path.name
    return graph


def _jacobian_lower(graph: lipbound.Graph, n: int = 3) -> float:
    g = graph.to(dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    best = 0.0
    for _ in range(n):
        x = torch.rand(graph.input_shape, generator=gen, dtype=torch.float64)
        j = torch.autograd.functional.jacobian(lambda z: g.forward(z[None]).reshape(-1), x)
        best = max(best, torch.linalg.matrix_norm(j.reshape(j.shape[0], -1), ord=2).item())
    return best


def _autolip_pair(graph: lipbound.Graph) -> tuple[float, float]:
    """Certified and power-method AutoLip; layers are materialised for an exact SVD only up to
    2^16 entries, to keep the suite fast (larger ones get a certified bound)."""
    options = {"dense_limit": 1 << 16, "max_iter": 300}
    rep = lipbound.estimate(graph, methods=["autolip", "autolip-power"], progress=False, **options)
    return rep.result("autolip").value, rep.result("autolip-power").value


# ---- bundled files (always run) --------------------------------------------------------------
@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_network_forward_and_autolip(name):
    """Certified AutoLip is above witnessed Jacobian norms and above the power-method estimate by at
    least its rounding margin; where every layer can be materialised (all but the CIFAR CNN) it is
    the reference propagation on exact norms, which the power method reaches from below."""
    graph = _check_forward(DATA / name)
    cert, power = _autolip_pair(graph)
    assert cert >= _jacobian_lower(graph) * (1 - 1e-6)
    assert cert >= power * (1 + 1e-10)  # certified >= exact norm >= power iterate, plus the margin
    if max(n.op.in_numel * n.op.out_numel for n in graph.fused().affine_nodes()) <= 1 << 20:
        ref = reference_autolip(graph)
        assert ref * (1 + 1e-10) <= cert <= ref * (1 + 1e-6)
        assert ref * (1 - 1e-6) <= power <= ref * (1 + 1e-9)


def lipsdp_random() -> tuple[lipbound.Graph, list[np.ndarray]]:
    """The LipSDP random net, loaded as a Graph through a factory, and its weights read by scipy."""
    import scipy.io
    mat = scipy.io.loadmat(str(DATA / "lipsdp_random_weights.mat"))
    ws = [np.asarray(w, dtype=np.float64) for w in mat["weights"].ravel()]
    graph = lipbound.load(DATA / "lipsdp_random_weights.mat", factory=f"{REPO / 'examples' / 'realnets.py'}:lipsdp_mat")
    return graph, ws


def test_lipsdp_random_net_every_entry_point_against_the_weights():
    """All weights positive and no biases: every ReLU is active on the positive orthant, where the
    Jacobian is ``W4 W3 W2 W1``, so ``L >= ||W4 W3 W2 W1||``; AutoLip is the product of the
    layer norms, and SeqLip lies between (it is strictly tighter on this net). Each entry point takes
    the loaded Graph without being told the input shape again."""
    graph, ws = lipsdp_random()
    product = np.linalg.norm(ws[3] @ ws[2] @ ws[1] @ ws[0], 2)
    norms = math.prod(np.linalg.norm(w, 2) for w in ws)
    x = torch.rand(2, dtype=torch.float64) + 0.1  # inside the positive orthant: all ReLUs active
    j = torch.autograd.functional.jacobian(lambda z: graph.forward(z[None])[0], x)
    assert torch.linalg.matrix_norm(j, ord=2).item() == pytest.approx(product, rel=1e-9)
    autolip = lipbound.autolip(graph).value
    assert norms * (1 + 1e-10) <= autolip <= norms * (1 + 1e-6)
    seqlip = lipbound.seqlip(graph)
    assert seqlip.kind == "certified_upper" and product <= seqlip.value <= 0.95 * norms
    lower = lipbound.lower_bound(graph, starts=8, steps=30, walk_rounds=2, time_budget=60)  # step-limited: repeatable
    assert lower.kind == "witnessed_lower"
    # the witness proves the value: a pair exactly (its quotient must carry a rounding margin); a
    # Jacobian norm is a floating-point value (DESIGN §1), allowed 1e-12
    proved = relu_witness_value(ws, lower.witness)
    assert lower.value <= (proved if lower.witness["form"] == "pair" else proved * (1 + 1e-12))
    assert 0.999 * product <= lower.value <= seqlip.value  # the search finds the all-active region


def test_the_two_acasxu_exports_are_the_same_function():
    a = EX.load_realnet(DATA / "acasxu_1_1.onnx")
    b = EX.load_realnet(DATA / "acasxu_1_1_eran.onnx")
    assert a.input_shape == (1, 1, 5) and b.input_shape == (5,)
    x = torch.rand(4, 5) - 0.5
    assert torch.allclose(a.forward(x.reshape(4, 1, 1, 5)), b.forward(x), atol=1e-5)
    ref = reference_autolip(b)
    for g in (a, b):
        assert ref * (1 + 1e-10) <= lipbound.autolip(g).value <= ref * (1 + 1e-5)


def test_input_scale_on_a_cifar_net():
    graph = EX.load_realnet(DATA / "oval21_cifar_base_kw.onnx")
    std = EX.SUITE["oval21_cifar_base_kw.onnx"][1]
    scaled = lipbound.as_graph(graph, input_scale=std)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(scaled.forward(x), graph.forward(x / std[0]), atol=1e-5)
    assert any("std" in n for n in scaled.notes)
    # per-channel std on the channel axis, and refusals
    per_channel = lipbound.as_graph(graph, input_scale=(0.2, 0.25, 0.5))
    s = torch.tensor([0.2, 0.25, 0.5]).reshape(3, 1, 1)
    assert torch.allclose(per_channel.forward(x), graph.forward(x / s), atol=1e-5)
    with pytest.raises(lipbound.InvalidInput, match="no first or last axis"):
        lipbound.as_graph(graph, input_scale=(0.1, 0.2))
    with pytest.raises(lipbound.InvalidInput, match="positive"):
        lipbound.as_graph(graph, input_scale=(0.0,))


def test_cli_on_an_onnx_file_with_input_scale(capsys):
    from lipbound.cli import main
    code = main(["estimate", str(DATA / "acasxu_1_1_eran.onnx"), "-q", "-m", "autolip", "--json",
                 "--input-scale", "2"])
    out = capsys.readouterr().out
    import json
    d = json.loads(out)
    assert code == 0 and d["input_shape"] == [5]
    ref = reference_autolip(EX.load_realnet(DATA / "acasxu_1_1_eran.onnx")) / 2  # inputs divided by 2
    assert ref * (1 + 1e-10) <= d["upper"] <= ref * (1 + 1e-6)


def test_load_with_a_factory_in_both_forms(tmp_path):
    # a factory taking the path (reads .mat itself) and one building the architecture (state dict)
    g1 = lipbound.load(DATA / "lipsdp_mnist_weights.mat", factory=f"{REPO / 'examples' / 'realnets.py'}:lipsdp_mat")
    assert g1.input_shape == (784,)
    factory = tmp_path / "arch.py"
    factory.write_text("import torch.nn as nn\n"
                       "def mlp():\n"
                       "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100),"
                       " nn.ReLU(), nn.Linear(100, 10))\n")
    g2 = lipbound.load(DATA / "lirpa_mnist_spectral_nor_mlp_b.pth", (1, 28, 28), factory=f"{factory}:mlp")
    g3 = EX.load_realnet(DATA / "lirpa_mnist_spectral_nor_mlp_b.pth")
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(g2.forward(x), g3.forward(x))
    with pytest.raises(lipbound.InvalidInput, match="input shape"):
        lipbound.load(DATA / "lirpa_mnist_spectral_nor_mlp_b.pth", factory=f"{factory}:mlp")


# ---- the whole suite from ../shared/realnets ---------------------------------------------------
@pytest.mark.parametrize("name", SHARED_ONLY)
def test_shared_network_loads_and_matches_the_original(realnets, name):
    path = realnets / name
    if not path.is_file():
        pytest.skip(f"{name} is not in {realnets}")
    graph = _check_forward(path)
    assert len(graph.affine_nodes()) >= 2


def test_resnet2b_checkpoint_and_onnx_agree(realnets):
    a = EX.load_realnet(realnets / "cifar10_resnet_2b.onnx")
    b = EX.load_realnet(realnets / "abcrown_cifar10_resnet2b.pth")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(a.forward(x), b.forward(x), atol=1e-5)
    assert [n.kind for n in a.fused()] == [n.kind for n in b.fused()]


def test_tanh_net_softmax_is_stripped_with_a_note(realnets):
    graph = EX.load_realnet(realnets / "vnn20_mnist_tanh_200_50.onnx")
    assert any("Softmax" in n for n in graph.notes)
    assert [n.label for n in graph if n.kind == "activation"] == ["Tanh", "Tanh"]


def test_estimate_takes_a_path():
    report = lipbound.estimate(str(DATA / "acasxu_1_1_eran.onnx"), methods=["autolip"], progress=False)
    ref = reference_autolip(EX.load_realnet(DATA / "acasxu_1_1_eran.onnx"))
    assert report.input_shape == (5,) and ref * (1 + 1e-10) <= report.upper <= ref * (1 + 1e-6)
