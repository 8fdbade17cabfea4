"""Keys of the results file: a graph's digest changes with any weight and any activation and
not with how the graph was built; Ctrl-C keeps what finished and says the run was interrupted."""

from __future__ import annotations

import torch
from torch import nn

import lipbound
from lipbound.sweep.keys import graph_digest, settings_digest
from lipbound.sweep.runner import execute
from lipbound.sweep.tasks import Task

from test_sweep_support import CrashJob, tiny_net


def test_graph_digest_follows_the_weights_and_activations():
    a, b = tiny_net(), tiny_net()
    assert graph_digest(lipbound.as_graph(a, (3,))) == graph_digest(lipbound.as_graph(b, (3,)))
    with torch.no_grad():
        b[2].bias[0] = torch.nextafter(b[2].bias[0], torch.tensor(1.0))
    assert graph_digest(lipbound.as_graph(a, (3,))) != graph_digest(lipbound.as_graph(b, (3,)))
    c = tiny_net()
    c[1] = nn.Tanh()
    assert graph_digest(lipbound.as_graph(a, (3,))) != graph_digest(lipbound.as_graph(c, (3,)))


def test_settings_digest_ignores_key_order_only():
    assert settings_digest({"a": 1, "b": [0.1]}) == settings_digest({"b": [0.1], "a": 1})
    assert settings_digest({"a": 1, "b": [0.1]}) != settings_digest({"a": 1, "b": [0.2]})


def test_ctrl_c_keeps_the_finished_instances(tmp_path):
    out = tmp_path / "r.jsonl"
    tasks = [Task(i, f"k{i}", f"i{i}", p) for i, p in enumerate([0, 1, "interrupt", 3])]
    run = execute(CrashJob(), tasks, out=out, backend="serial")
    assert run.interrupted and [r["value"] for r in run.records] == [0, 1]
    assert len(out.read_text().splitlines()) == 2
    rerun = execute(CrashJob(), [t if t.payload != "interrupt" else Task(2, "k2", "i2", 2) for t in tasks],
                    out=out, backend="serial")
    assert not rerun.interrupted and rerun.resumed == 2 and [r["value"] for r in rerun.records] == [0, 1, 2, 3]
