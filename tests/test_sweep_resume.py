"""Resumable and loss-free: a 2-worker run killed with SIGKILL leaves a valid results file, and
the rerun finishes with every instance exactly once and the numbers of an uninterrupted run (the
oracle: a serial run from scratch into another file). A partial last line is ignored and cut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lipbound.sweep import run_instances
from lipbound.sweep.results import ResultsFile, read_results

from test_sweep_support import METHODS, OPTIONS, without_timings, write_benchmark

pytest.importorskip("onnx")

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPT = """
import sys
from lipbound.sweep import run_instances
if __name__ == "__main__":
    run_instances(sys.argv[1], {methods!r}, workers=2, backend="process", out=sys.argv[2], method_options={options!r})
"""


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    _, csv = write_benchmark(tmp_path / "bench", n=8)
    out = tmp_path / "results.jsonl"
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(methods=METHODS, options=OPTIONS))
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(csv), str(out)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _lines(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its workers
        proc.wait()
    killed_with = _lines(out)
    assert 2 <= killed_with < 8, "the run was not killed part way"
    read_results(out)  # a valid file: only a partial last line may be cut
    resumed = run_instances(csv, METHODS, backend="serial", out=out, method_options=OPTIONS)
    assert resumed.resumed >= 2
    fresh = run_instances(csv, METHODS, backend="serial", out=tmp_path / "fresh.jsonl", method_options=OPTIONS)
    on_disk = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in on_disk) == sorted(r["key"] for r in fresh.records)  # each exactly once
    by_key = {r["key"]: without_timings(r) for r in on_disk}
    assert [by_key[r["key"]] for r in fresh.records] == [without_timings(r) for r in fresh.records]


def test_partial_last_line_is_ignored_and_cut(tmp_path):
    out = tmp_path / "r.jsonl"
    with ResultsFile(out) as results:
        results.append({"key": "a", "instance": "a", "status": "ok"})
        results.append({"key": "b", "instance": "b", "status": "ok"})
    whole = out.read_bytes()
    out.write_bytes(whole + whole.splitlines()[1][:-7])  # a run killed while writing a third line
    back = read_results(out)
    assert [r["key"] for r in back.records] == ["a", "b"] and back.partial is not None
    with ResultsFile(out) as results:
        assert set(results.done) == {"a", "b"}
        results.append({"key": "c", "instance": "c", "status": "ok"})
    assert [json.loads(line)["key"] for line in out.read_text().splitlines()] == ["a", "b", "c"]


def test_a_corrupt_line_before_the_last_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(Exception, match="line 2"):
        read_results(out)


def test_ctrl_c_stops_the_pool_and_prints_the_summary_so_far(tmp_path):
    _, csv = write_benchmark(tmp_path / "bench", n=8)
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "lipbound.cli", "run-instances", str(csv), "--workers", "2", "--out", str(out),
            "-q"] + [a for m in METHODS for a in ("-m", m)]
    # the child starts with Ctrl-C's default disposition whatever this process inherited or set: an ignored
    # SIGINT is inherited across exec, and Python then keeps ignoring it (the suspected, unproven cause of two
    # full-suite runs of fresh clones where the run finished with status 0)
    proc = subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while _lines(out) < 1 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    done = _lines(out)
    assert f"{done}/8 instances done (interrupted)" in stdout
    left = b"?"
    for _ in range(100):  # the fork server and resource tracker leave once they see the parent gone
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).stdout
        if not left:
            break
        time.sleep(0.1)
    assert left == b"", "a worker outlived the run"
