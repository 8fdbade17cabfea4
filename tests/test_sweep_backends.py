"""The backends of a sweep give the same records as the serial reference (same seeds, whatever
the scheduling), and a worker that dies marks only its own instance ``error``.

Oracles: the serial run in this process (``run_task`` one by one), and for the data set the
torch net itself (its argmax and its float64 margins against the reported bound)."""

from __future__ import annotations

import math

import pytest
import torch

from lipbound.sweep import certify_dataset, run_instances
from lipbound.sweep.runner import execute
from lipbound.sweep.tasks import Task

from test_sweep_support import METHODS, OPTIONS, CrashJob, tiny_net, without_timings, write_benchmark

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return write_benchmark(tmp_path_factory.mktemp("bench"), n=3)


@pytest.fixture(scope="module")
def serial(bench):
    return run_instances(bench[1], METHODS, backend="serial", method_options=OPTIONS)


def _same(a, b):
    assert [r["key"] for r in a.records] == [r["key"] for r in b.records]
    assert [without_timings(r) for r in a.records] == [without_timings(r) for r in b.records]


def test_pool_matches_serial(bench, serial):
    pooled = run_instances(bench[1], METHODS, workers=2, backend="process", method_options=OPTIONS)
    assert all(r["status"] == "ok" for r in serial.records)
    assert all(m["stopped_by"] != "time" for r in serial.records for m in r["methods"])  # stopped on work, not time
    _same(pooled, serial)


def test_ray_matches_serial(bench, serial):
    pytest.importorskip("ray")
    on_ray = run_instances(bench[1], METHODS, workers=2, backend="ray", method_options=OPTIONS)
    _same(on_ray, serial)


def test_a_dying_worker_marks_its_instance_and_the_run_goes_on():
    payloads = [0, 1, "crash", 3, "memory", 5]
    tasks = [Task(i, f"k{i}", f"i{i}", p) for i, p in enumerate(payloads)]
    run = execute(CrashJob(), tasks, workers=2, backend="process")
    status = [(r["instance"], r["status"]) for r in run.records]
    assert status == [(f"i{i}", "error" if p in ("crash", "memory") else "ok") for i, p in enumerate(payloads)]
    assert "died" in run.records[2]["reason"] and "MemoryError" in run.records[4]["reason"]
    assert [r["value"] for r in run.records if r["status"] == "ok"] == [0, 1, 3, 5]


def test_dataset_pool_matches_serial_and_the_net():
    net = tiny_net()
    x = torch.rand(10, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = net(x).double()
    y = logits.argmax(1)
    y[0] = (y[0] + 1) % 3  # one wrong label
    radii = [0.05, 0.2]
    serial = certify_dataset(net, x, y, radii, domain=(0, 1), backend="serial")
    pooled = certify_dataset(net, x, y, radii, domain=(0, 1), workers=2)
    assert [without_timings(r) for r in pooled.run.records] == [without_timings(r) for r in serial.run.records]
    assert serial.clean_accuracy == (logits.argmax(1) == y).double().mean().item()
    # oracle: float64 margins of the torch net against the reported bound, input by input
    top2 = logits.topk(2, dim=1).values
    radius = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * serial.constants["upper"])
    correct = logits.argmax(1) == y
    for k, r in enumerate(radii):
        assert ((radius - r).abs() > 1e-9).all(), "a radius on the edge: pick other radii"
        assert serial.certified_accuracy[k] == (correct & (radius > r)).double().mean().item()
    assert serial.certified_radii[0] == 0.0
