"""CLI: exit codes and one-line errors."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from lipbound.cli import main

MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def with_layernorm():
        return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    def nan_weights():
        m = mlp()
        m[0].weight.data[0, 0] = float("nan")
        return m

    def broken():
        raise RuntimeError("boom")

    def not_a_module():
        return 3
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(MODEL_PY)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_prints_the_table_and_the_bracket(model_file, capsys):
    code, out, err = run(["estimate", f"{model_file}:mlp", "--input-shape", "4", "--quiet"], capsys)
    assert code == 0, err
    assert "autolip" in out and "certified_upper" in out and "bracket:" in out
    assert "Linear" in out and "ReLU" in out


def test_json_output_is_the_report(model_file, capsys):
    code, out, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "--json", "-m", "autolip"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["input_shape"] == [4] and d["results"][0]["method"] == "autolip"
    assert d["upper"] == d["results"][0]["value"]


def test_weights_are_loaded(model_file, tmp_path, capsys):
    torch.manual_seed(5)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    _, out1, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "--json", "-m", "autolip"], capsys)
    _, out2, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "--json", "-m", "autolip", "-w", tmp_path / "w.pt"], capsys)
    assert json.loads(out1)["upper"] != json.loads(out2)["upper"]


@pytest.mark.parametrize("args,message", [
    (["estimate", "missing.py:mlp", "-s", "4"], "not found"),
    (["estimate", "{f}", "-s", "4"], "path/to/file.py:factory"),
    (["estimate", "{f}:nope", "-s", "4"], "no function 'nope'"),
    (["estimate", "{f}:mlp", "-s", "4,a"], "--input-shape"),
    (["estimate", "{f}:mlp", "-s", "5"], "does not fit"),
    (["estimate", "{f}:with_layernorm", "-s", "4"], "LayerNorm at module '1'"),
    (["estimate", "{f}:nan_weights", "-s", "4"], "NaN"),
    (["estimate", "{f}:broken", "-s", "4"], "boom"),
    (["estimate", "{f}:not_a_module", "-s", "4"], "not a torch.nn.Module"),
    (["estimate", "{f}:mlp", "-s", "4", "-m", "nosuch"], "unknown method"),
    (["estimate", "{f}:mlp", "-s", "4", "-w", "missing.pt"], "weights file not found"),
    (["estimate", "{f}:mlp", "-s", "4", "--device", "cuda"] if not torch.cuda.is_available() else
     ["estimate", "{f}:mlp", "-s", "4", "--device", "nodevice"], "cuda" if not torch.cuda.is_available() else "device"),
])
def test_bad_input_exits_2_with_one_line(model_file, capsys, args, message):
    args = [a.replace("{f}", str(model_file)) for a in args]
    code, out, err = run(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lipbound: error:"), err
    assert message in lines[0]


def test_corrupt_weights_file(model_file, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    code, _, err = run(["estimate", f"{model_file}:mlp", "-s", "4", "-w", bad], capsys)
    assert code == 2 and "could not read weights" in err and len(err.strip().splitlines()) == 1


def test_demo_and_console_script():
    proc = subprocess.run([sys.executable, "-m", "lipbound.cli", "demo", "--quiet"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "bracket:" in proc.stdout
