"""The small defects of issue 14, each with a test that failed before its fix."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import lipbound
from lipbound import InvalidInput, UnsupportedOperation
from lipbound.cli import main

DATA = Path(__file__).parent / "data"


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(x + self.att(x, x, x, need_weights=False)[0]).flatten(1)


class Split(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        a, b = torch.split(self.fc(x), 2, dim=1)
        return torch.cat([x[:, :2] + a, b], dim=1)


@pytest.mark.parametrize("model,shape,op,where", [
    (SelfAttention(), (3, 8), "MultiheadAttention", "module 'att'"),
    (Split(), (4,), "split", "fx node 'split'"),
])
def test_operations_returning_several_tensors_are_refused_by_name(model, shape, op, where):
    """Before: their outputs passed for constants, and the check of the graph against the model
    failed with "internal check failed ... please report"."""
    with pytest.raises(UnsupportedOperation) as info:
        lipbound.as_graph(model, shape)
    assert op in str(info.value) and where in str(info.value)


PICKLED_CLASS = textwrap.dedent("""
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x).relu()
""")


@pytest.fixture
def pickled_model(tmp_path):
    """A model pickled whole (``torch.save(model)``) whose class lives in the user's own module,
    which is not importable afterwards (the module name is unique to this test)."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    name = "lipbound_defects_user_models"
    (folder / f"{name}.py").write_text(PICKLED_CLASS)
    sys.path.insert(0, str(folder))
    try:
        module = __import__(name)
        torch.manual_seed(0)
        model = module.Tiny()
        torch.save(model, tmp_path / "model.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
    return tmp_path / "model.pt", folder, model


def test_trust_pickle_names_the_missing_module_and_the_way_to_give_it(pickled_model):
    path, folder, model = pickled_model
    with pytest.raises(InvalidInput, match=r"'lipbound_defects_user_models'.*PYTHONPATH.*--module-path"):
        lipbound.load(path, (4,), trust_pickle=True)
    graph = lipbound.load(path, (4,), trust_pickle=True, module_path=folder)
    x = torch.randn(5, 4)
    assert torch.allclose(graph.forward(x), model(x))
    sys.modules.pop("lipbound_defects_user_models", None)


def test_cli_module_path(pickled_model, capsys):
    path, folder, _ = pickled_model
    assert main(["estimate", str(path), "-s", "4", "--trust-pickle", "-m", "autolip", "-q"]) == 2
    assert "--module-path" in capsys.readouterr().err
    assert main(["estimate", str(path), "-s", "4", "--trust-pickle", "--module-path", str(folder),
                 "-m", "autolip", "-q"]) == 0
    sys.modules.pop("lipbound_defects_user_models", None)


def test_estimate_writes_no_progress_bars_into_a_pipe(capsys):
    """The API default: bars only when stderr is a terminal (captured here: not one)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lipbound.estimate(net, (4,), methods=("autolip",))  # draws a bar per layer when progress is on
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("head", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1)])
def test_a_final_softmax_is_removed_with_a_note_as_for_onnx(head):
    """The graph computes the logits (checked on the model's own layers) and says what it removed."""
    torch.manual_seed(0)
    logits = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    graph = lipbound.as_graph(nn.Sequential(logits, head), (4,))
    x = torch.randn(6, 4)
    assert torch.allclose(graph.forward(x), logits(x), atol=1e-6)
    assert len(graph.notes) == 1 and type(head).__name__ in graph.notes[0] and "logits" in graph.notes[0]
    with pytest.raises(UnsupportedOperation, match="only accepted as the last operation"):
        lipbound.as_graph(nn.Sequential(logits, head, nn.Linear(3, 2)), (4,))


def test_a_wrong_onnx_input_shape_names_the_shape_to_give():
    with pytest.raises(InvalidInput, match=r"\(1, 1, 5\) without the batch axis: give --input-shape 1,1,5"):
        lipbound.load(DATA / "acasxu_1_1.onnx", (5,))
