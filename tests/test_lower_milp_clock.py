"""The deadline of ``lower-milp``'s MILPs (milp_solver's module doc), on a fake clock: no process
starts after the deadline, the worker is sent the time left when it is ready, and one that runs
past the deadline by :data:`~lipbound.methods.milp_solver.GRACE` is killed then, whatever it is
doing. A fake ``subprocess.Popen`` replays a worker's start-up and solve seconds (no timing). The
real worker is checked against a MILP solved by hand (with a deadline and without), and on a fake
clock against a deadline that passed while it read the program (it must not run HiGHS); a worker
that fails is an error."""

from __future__ import annotations

import io
import math
import subprocess
import types

import numpy as np
import pytest
import scipy.sparse as sp

from lipbound.methods import milp_solver, milp_worker
from lipbound.methods.milp_solver import GRACE


class FakeTime:
    """``time`` for the module under test: ``perf_counter`` reads ``now``, which the fakes move."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _answer(x, objective, status="optimal", nodes=3) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.asarray(x, dtype=np.float64), objective=objective, status=status, nodes=nodes)
    return buf.getvalue()


def fake_popen(fake: FakeTime, startup: float, solve: float, procs: list, code: int = 0):
    """A ``Popen`` whose process is ready after ``startup`` seconds (on ``fake``) and answers
    ``solve`` seconds after it was sent the program, or times out first as ``communicate`` does;
    each process records what it was sent, whether it was killed, and when it ended."""

    class Proc:
        def __init__(self, *args, **kwargs) -> None:
            self.killed, self.sent, self.done, self.returncode = False, None, None, None
            self.stdout = types.SimpleNamespace(read=self.ready)
            procs.append(self)

        def ready(self, n):
            fake.now += startup
            return b"R"

        def communicate(self, data=None, timeout=None):
            if data is not None:
                self.sent = dict(np.load(io.BytesIO(data)))
                if timeout is not None and solve > timeout:
                    fake.now += timeout
                    raise subprocess.TimeoutExpired("worker", timeout)
                fake.now += solve
                self.done, self.returncode = fake.now, code
                return (_answer([1.0, 0.5], -1.5), b"") if code == 0 else (b"", b"Segmentation fault")
            return b"", b""

        def poll(self):
            return 0 if self.done is not None or self.killed else None

        def kill(self):
            self.killed, self.returncode = True, -9

    return Proc


def _program():
    """``min -y_0 - y_1``, ``y_0 + y_1 <= 1.5``, ``y`` in ``[0, 1]``, ``y_0`` integer: optimum -1.5
    at ``(1, 0.5)`` (by hand: ``y_0 = 1`` leaves ``y_1 <= 0.5``; ``y_0 = 0`` gives -1)."""
    rows = sp.csr_matrix(np.array([[1.0, 1.0]]))
    return (np.array([-1.0, -1.0]), rows, np.array([-np.inf]), np.array([1.5]), np.zeros(2), np.ones(2),
            np.array([1, 0], dtype=np.uint8), np.zeros(2), 0, 100)


@pytest.fixture
def clock(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(milp_solver, "time", fake)
    return fake


def _solve(monkeypatch, clock, startup, solve, deadline, code=0):
    procs: list = []
    monkeypatch.setattr(milp_solver.subprocess, "Popen", fake_popen(clock, startup, solve, procs, code))
    return milp_solver.solve_milp(*_program(), deadline), procs


def test_the_worker_is_sent_the_time_left_when_it_is_ready(monkeypatch, clock):
    """Deadline 110 s, call at 100 s, start-up 0.4 s: the worker is sent 9.6 s and answers."""
    clock.now = 100.0
    sol, procs = _solve(monkeypatch, clock, 0.4, 2.0, 110.0)
    assert float(procs[0].sent["left"]) == pytest.approx(110.0 - 100.4)
    assert sol["status"] == "optimal" and sol["objective"] == -1.5 and list(sol["x"]) == [1.0, 0.5]
    assert not procs[0].killed


@pytest.mark.parametrize("now", [10.0, 12.5])
def test_no_process_starts_after_the_deadline(monkeypatch, clock, now):
    clock.now = now
    sol, procs = _solve(monkeypatch, clock, 0.4, 1.0, 10.0)
    assert procs == []
    assert sol["status"] == "time" and sol["x"] is None and sol["objective"] == math.inf


@pytest.mark.parametrize("startup,solve", [(0.4, 30.0), (0.4, 9.6 + GRACE + 0.01), (3.0, 12.0)])
def test_a_worker_past_the_deadline_is_killed_by_the_grace(monkeypatch, clock, startup, solve):
    """Deadline 10 s: a worker that would answer after 10 s + GRACE is killed at 10 s + GRACE
    (however long it would run), and the call returns no point, status "time"."""
    sol, procs = _solve(monkeypatch, clock, startup, solve, 10.0)
    assert procs[0].killed and procs[0].done is None
    assert clock.now == pytest.approx(10.0 + GRACE)
    assert sol["status"] == "time" and sol["x"] is None


def test_a_worker_inside_the_grace_is_waited_for(monkeypatch, clock):
    """HiGHS stops a little after its limit (its next check): within GRACE its answer is kept."""
    sol, procs = _solve(monkeypatch, clock, 0.4, 9.6 + GRACE / 2, 10.0)
    assert not procs[0].killed and sol["status"] == "optimal"


def test_a_failed_worker_is_an_error_not_an_answer(monkeypatch, clock):
    with pytest.raises(RuntimeError, match="Segmentation fault"):
        _solve(monkeypatch, clock, 0.4, 1.0, 10.0, code=-11)


@pytest.mark.parametrize("seconds", [60.0, math.inf])
def test_the_real_worker_solves_a_milp_solved_by_hand(seconds):
    sol = milp_solver.solve_milp(*_program(), milp_solver.time.perf_counter() + seconds)
    assert sol["status"] == "optimal"
    assert sol["objective"] == pytest.approx(-1.5, abs=1e-9)
    np.testing.assert_allclose(sol["x"], [1.0, 0.5], atol=1e-9)


def test_the_real_worker_does_not_run_highs_past_its_deadline(monkeypatch):
    """The worker's limit is ``left`` less the seconds since it was ready: with a fake clock at
    which reading the program took 3 s of a 2.5 s ``left``, HiGHS is never run."""
    fake = FakeTime()
    monkeypatch.setattr(milp_worker, "time", fake)
    ran, solve = [], milp_worker.solve

    def recorded(p, time_limit):
        ran.append(time_limit)
        return solve(p, time_limit)

    monkeypatch.setattr(milp_worker, "solve", recorded)
    cost, rows, rlo, rhi, lo, hi, integ, warm, seed, nodes = _program()
    buf = io.BytesIO()
    np.savez(buf, cost=cost, data=rows.data, indices=rows.indices, indptr=rows.indptr, rlo=rlo, rhi=rhi, lo=lo, hi=hi,
             integ=integ, warm=warm, seed=seed, max_nodes=nodes, left=2.5)
    payload = buf.getvalue()

    class Stdin:
        buffer = types.SimpleNamespace(read=lambda: (setattr(fake, "now", fake.now + 3.0), payload)[1])

    out = io.BytesIO()
    monkeypatch.setattr(milp_worker.sys, "stdin", Stdin)
    monkeypatch.setattr(milp_worker.os, "fdopen", lambda fd, mode: out)
    monkeypatch.setattr(milp_worker.os, "dup", lambda fd: fd)
    monkeypatch.setattr(milp_worker.os, "dup2", lambda a, b: None)
    out.close = lambda: None
    milp_worker.main()
    assert ran == [pytest.approx(-0.5)]
    answer = np.load(io.BytesIO(out.getvalue()[1:]))
    assert str(answer["status"]) == "time" and len(answer["x"]) == 0
