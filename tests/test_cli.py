"""CLI: the printed numbers against numpy norms of the model's weights, exit codes and one-line
errors."""

import json
import re
import textwrap

import pytest
import torch
from torch import nn

from lipbound.cli import main
from oracles import norm2, witnessed_lower

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


def mlp_oracle(state: dict | None = None) -> tuple[nn.Module, float, float]:
    """``models.py:mlp`` rebuilt here (with ``state`` loaded), its first layer's norm and its AutoLip
    value ``||W1|| ||W2||`` (ReLU: factor 1), from numpy SVDs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    if state is not None:
        model.load_state_dict(state)
    n1, n2 = (norm2(model[i].weight.detach().double().numpy()) for i in (0, 2))
    return model, n1, n1 * n2


def assert_certified(value: float, exact: float) -> None:
    """A certified AutoLip value: the exact product plus the rounding margin (1e-9 per layer)."""
    assert exact * (1 + 1e-10) <= value <= exact * (1 + 1e-6)


def test_estimate_prints_the_table_and_the_bracket(model_file, capsys):
    code, out, err = run(["estimate", f"{model_file}:mlp", "--input-shape", "4", "--quiet", "--time-budget", "2"],
                         capsys)
    assert code == 0, err
    model, n1, autolip = mlp_oracle()
    layer = re.search(r"^0 +Linear +\(8,\) +(\S+) +(\S+)", out, re.M)
    assert layer and float(layer[2]) == pytest.approx(n1, rel=1e-4)  # 5 digits
    value = re.search(r"^autolip +(\S+) +certified_upper", out, re.M)
    assert value and float(value[1]) == pytest.approx(autolip, rel=1e-5)  # 6 digits
    bracket = re.search(r"^bracket: lower (\S+) \(\S+\) +upper (\S+) \(\S+\)", out, re.M)
    assert bracket, out
    lower, upper = float(bracket[1]), float(bracket[2])
    witnessed = witnessed_lower(model, (4,))
    assert witnessed * (1 - 1e-5) <= lower <= upper * (1 + 1e-5) and upper <= autolip * (1 + 1e-5)


def test_json_output_is_the_report(model_file, capsys):
    code, out, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "--json", "-m", "autolip"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["input_shape"] == [4] and [r["method"] for r in d["results"]] == ["autolip"]
    assert d["upper"] == d["results"][0]["value"]
    assert_certified(d["upper"], mlp_oracle()[2])


def test_weights_are_loaded(model_file, tmp_path, capsys):
    torch.manual_seed(5)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    torch.save(other.state_dict(), tmp_path / "w.pt")
    _, out, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "--json", "-m", "autolip", "-w", tmp_path / "w.pt"],
                    capsys)
    loaded, original = mlp_oracle(other.state_dict())[2], mlp_oracle()[2]
    assert abs(loaded - original) > 1e-3 * original
    assert_certified(json.loads(out)["upper"], loaded)


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


VNNLIB_4 = "".join(f"(declare-const X_{i} Real)\n(assert (<= X_{i} 0.5))\n(assert (>= X_{i} -0.5))\n" for i in range(4))


@pytest.mark.parametrize("setup,message", [
    ({"prop.vnnlib": VNNLIB_4 + "(assert (< X_0 0.1))\n"}, "prop.vnnlib, line 13: unknown or malformed expression"),
    ({"prop.vnnlib": VNNLIB_4.replace("(declare-const X_3 Real)\n(assert (<= X_3 0.5))\n(assert (>= X_3 -0.5))\n", "")},
     "declares 3 input variables but the input shape (4,)"),
    ({"--domain": "1,0"}, "low > high at index (0,)"),
    ({"center.pt": torch.zeros(4), "--radius": "-1"}, "radius must be a positive finite number"),
    ({"center.pt": torch.tensor([0.0, float("nan"), 0.0, 0.0]), "--radius": "1"}, "NaN"),
    ({"center.pt": torch.zeros(3), "--radius": "1"}, "shape (3,) but the model's input shape is (4,)"),
    ({"center.pt": torch.zeros(4)}, "--center and --radius go together"),
])
def test_bad_region_exits_2_with_one_line(model_file, tmp_path, capsys, setup, message):
    args = ["estimate", f"{model_file}:mlp", "-s", "4", "-m", "autolip", "-q"]
    for key, value in setup.items():
        if key.endswith(".vnnlib"):
            (tmp_path / key).write_text(value)
            args += ["--domain", tmp_path / key]
        elif key.endswith(".pt"):
            torch.save(value, tmp_path / key)
            args += ["--center", tmp_path / key]
        else:
            args += [key, value]
    code, _, err = run(args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lipbound: error:"), err
    assert message in lines[0]


def test_ball_and_vnnlib_regions_reach_the_report(model_file, tmp_path, capsys):
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "c.npy", np.full(4, 0.25))
    code, out, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "-m", "lower", "--time-budget", "1", "-q",
                        "--center", tmp_path / "c.npy", "--radius", "0.1", "--norm", "inf", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["region"]["type"] == "ball" and report["region"]["norm"] == "inf"
    x = torch.tensor(report["results"][0]["witness"]["x"], dtype=torch.float64)
    assert ((x - 0.25).abs() <= 0.1).all()
    (tmp_path / "p.vnnlib").write_text(VNNLIB_4)
    code, out, _ = run(["estimate", f"{model_file}:mlp", "-s", "4", "-m", "autolip", "-q",
                        "--domain", tmp_path / "p.vnnlib"], capsys)
    assert code == 0 and "region: box [-0.5, 0.5]^n" in out
