"""Every bad input of a sweep: a global problem raises (the CLI exits 2 with one line) before any
work; a problem of one instance gives that instance an ``error`` record and the others run. The
verdicts are checked against the torch net by sampling the box (certified) and at the
counterexample (violated)."""

from __future__ import annotations

import math

import pytest
import torch

from lipbound.cli import main
from lipbound.errors import InvalidInput
from lipbound.sweep import certify_dataset, run_instances
from lipbound.sweep.dataset import check_dataset

from test_sweep_support import METHODS, OPTIONS, property_text, tiny_net, write_benchmark

pytest.importorskip("onnx")

NET = tiny_net()
X = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])


@pytest.mark.parametrize("inputs, labels, radii, match", [
    (X, Y[:3], [0.1], "4 inputs but 3 labels"),
    (X[:, :2], Y, [0.1], "inputs must have shape"),
    (torch.where(torch.arange(3) == 1, math.nan, X), Y, [0.1], "input 0 contains NaN"),
    (X, torch.tensor([0, 1, 3, 0]), [0.1], "label 3 of input 2 is outside 0..2"),
    (X, torch.tensor([0, -1, 2, 0]), [0.1], "label -1 of input 1"),
    (X, Y, [0.1, -0.2], "radii must be positive"),
    (X, Y, [], "radii must be positive"),
    (X[:0], Y[:0], [0.1], "no inputs"),
])
def test_bad_data_sets_are_refused_before_any_work(inputs, labels, radii, match):
    with pytest.raises(InvalidInput, match=match):
        certify_dataset(NET, inputs, labels, radii, input_shape=(3,), backend="serial")


def test_inputs_outside_the_domain_and_bad_execution_options():
    with pytest.raises(InvalidInput, match="input 1 lies outside the domain"):
        certify_dataset(NET, X + torch.tensor([[0.0], [5.0], [0.0], [0.0]]), Y, [0.1], domain=(0, 1), backend="serial")
    with pytest.raises(InvalidInput, match="backend"):
        certify_dataset(NET, X, Y, [0.1], backend="threads")
    with pytest.raises(InvalidInput, match="workers"):
        certify_dataset(NET, X, Y, [0.1], workers=0)


def test_check_dataset_accepts_good_input():
    from lipbound import as_graph

    x, y, radii = check_dataset(as_graph(NET, (3,)), X.numpy(), Y.double(), [0.5, 0.1])
    assert x.shape == X.shape and y.dtype == torch.int64 and radii == [0.1, 0.5]


@pytest.mark.parametrize("text, match", [
    ("net.onnx,p0.vnnlib\n", "expected onnx,vnnlib,timeout"),
    ("net.onnx,p0.vnnlib,soon\n", "timeout must be a number"),
    ("net.onnx,p0.vnnlib,-3\n", "timeout must be positive"),
    ("\n", "lists no instance"),
])
def test_bad_csv_exits_2_with_one_line(tmp_path, capsys, text, match):
    csv = tmp_path / "instances.csv"
    csv.write_text(text)
    with pytest.raises(InvalidInput, match=match):
        run_instances(csv, backend="serial")
    assert main(["run-instances", str(csv), "--backend", "serial"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match.split()[0] in err


def test_missing_csv_and_bad_scale(tmp_path, capsys):
    assert main(["run-instances", str(tmp_path / "absent.csv")]) == 2
    assert "instances file not found" in capsys.readouterr().err
    _, csv = write_benchmark(tmp_path / "b", n=1)
    with pytest.raises(InvalidInput, match="timeout_scale"):
        run_instances(csv, timeout_scale=0, backend="serial")
    with pytest.raises(InvalidInput, match="unknown method|method"):
        run_instances(csv, ["no-such-method"], backend="serial")


def test_missing_files_are_error_rows_and_the_rest_runs(tmp_path):
    net, csv = write_benchmark(tmp_path / "b", n=1)
    csv.write_text(csv.read_text() + "absent.onnx,p0.vnnlib,600\nnet.onnx,absent.vnnlib,600\n")
    run = run_instances(csv, ["autolip"], backend="serial")
    assert [r["status"] for r in run.records] == ["ok", "error", "error"]
    assert "absent.onnx" in run.records[1]["reason"] and "absent.vnnlib" in run.records[2]["reason"]


def _sampled_min_margin(net, low, high, label, n=4000):
    """Oracle: the least sampled margin f_label - max_other over the box (corners included)."""
    gen = torch.Generator().manual_seed(5)
    pts = low + torch.rand(n, len(low), generator=gen, dtype=torch.float64) * (high - low)
    corners = torch.cartesian_prod(*[torch.stack([lo, hi]) for lo, hi in zip(low, high)])
    with torch.no_grad():
        out = net.double()(torch.cat([pts, corners]))
    others = torch.cat([out[:, :label], out[:, label + 1:]], dim=1)
    return (out[:, label] - others.max(dim=1).values).min().item()


def test_verdicts_agree_with_the_net(tmp_path):
    net = tiny_net()
    c = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    with torch.no_grad():
        logits = net.double()(c[None])[0]
    label = int(logits.argmax())
    wrong = (label + 1) % 3
    folder = tmp_path / "v"
    _, csv = write_benchmark(folder, n=1)
    boxes = [(c - 1e-3, c + 1e-3, label), (c - 1e-3, c + 1e-3, wrong), (c - 0.1, c + 0.1, label),
             (c - 3.0, c + 3.0, label)]
    rows = []
    for i, (lo, hi, y) in enumerate(boxes):
        (folder / f"v{i}.vnnlib").write_text(property_text(lo, hi, y))
        rows.append(f"net.onnx,v{i}.vnnlib,600")
    csv.write_text("\n".join(rows) + "\n")
    run = run_instances(csv, METHODS, backend="serial", method_options=OPTIONS)
    assert [r["verdict"] for r in run.records[:2]] == ["certified", "violated"]
    assert {r["verdict"] for r in run.records[2:]} <= {"certified", "unknown", "violated"}
    margin = (logits[label] - torch.cat([logits[:label], logits[label + 1:]]).max()).item()
    for (lo, hi, y), record in zip(boxes, run.records):
        if record["verdict"] == "certified":  # the Lipschitz argument holds, and no sample breaks it
            reach = torch.linalg.vector_norm((hi - lo) / 2).item()
            assert margin > math.sqrt(2) * record["upper"] * reach
            assert _sampled_min_margin(net, lo, hi, y) > 0
    x = torch.tensor(run.records[1]["counterexample"], dtype=torch.float64)
    assert bool(((x >= boxes[1][0]) & (x <= boxes[1][1])).all())
    with torch.no_grad():
        out = net.double()(x[None])[0]
    assert max(out[j] for j in range(3) if j != wrong) >= out[wrong]  # the unsafe set: some Y_j >= Y_wrong


def test_cli_run_instances_writes_and_resumes(tmp_path, capsys):
    _, csv = write_benchmark(tmp_path / "b", n=2)
    out = tmp_path / "r.jsonl"
    argv = ["run-instances", str(csv), "-m", "autolip", "--backend", "serial", "--out", str(out), "-q"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "2/2 instances done" in first and len(out.read_text().splitlines()) == 2
    assert main(argv) == 0
    assert "2 read back from the results file" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 2


def test_dataset_cli_options_and_plot(tmp_path, capsys):
    """``lipbound certify --labels ... --plot`` runs the sweep (labels from an .npz file)."""
    import numpy as np

    pytest.importorskip("matplotlib")
    factory = tmp_path / "net.py"
    factory.write_text("from test_sweep_support import tiny_net\n")
    inputs, labels, png = tmp_path / "x.pt", tmp_path / "y.npz", tmp_path / "acc.png"
    torch.save(X, inputs)
    np.savez(labels, labels=Y.numpy())
    base = ["certify", f"{factory}:tiny_net", "--inputs", str(inputs), "--labels", str(labels), "--backend", "serial",
            "--domain", "0,1", "-q"]
    assert main(base + ["--radii", "0.3,0.05", "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "clean accuracy" in text and "0.05" in text and png.stat().st_size > 0
    assert main(base + ["--radii", "a,b"]) == 2
    assert "--radii" in capsys.readouterr().err
    assert main(["certify", f"{factory}:tiny_net", "--inputs", str(inputs), "--labels", str(tmp_path / "absent.pt"),
                 "--backend", "serial"]) == 2
    assert "--labels file not found" in capsys.readouterr().err
