"""Standing soundness fuzz: random networks, every lipbound method, independent checks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/soundness.py --nets 10000 [--seed 0] [--minutes 60]
        [--onnx] [--jobs 1] [--out benchmarks/results/soundness.md]
    .venv/bin/python benchmarks/soundness.py --seed S --only INDEX      # one net, verbose

For each net of :func:`soundness_nets.make_case` every method of ``lipbound.METHODS`` runs with a
small time budget (:data:`OPTIONS`; the slow ones only on small nets, :func:`plan`), and:

* ``upper<oracle``: every ``certified_upper`` / ``exact`` value is ``>=`` the independent lower
  bound of :func:`soundness_nets.lower_oracle` (on the domain the method was given; a method
  that does not take the domain bounds all of ``R^n``), relative tolerance ``1e-7``;
* ``lower>upper``: every witnessed lower bound is ``<=`` every certified upper bound of the same
  net (relative ``1e-9``) whose domain contains its own;
* ``witness-*``, ``pair-no-margin``: every witness re-checked on the module
  (:func:`soundness_nets.recheck_witness`);
* ``exact>regions``: on tiny piecewise-linear nets ``exact`` is at most the brute-force region
  enumeration's upper bound (:func:`soundness_nets.region_bound`), and at least the Jacobians at
  the regions' centres and, with 1-2 inputs, on a fine grid (part of the oracle);
* with ``--onnx``: the net exported by ``torch.onnx.export`` and loaded by ``lipbound.load``
  computes the module's outputs (``onnx-forward``), and its ``autolip`` / ``seqlip`` values are
  sound and equal the torch frontend's (a difference is counted as a mismatch, not a violation).

An exception other than lipbound's ``InvalidInput`` / ``UnsupportedOperation`` / ``NotApplicable``
is a crash; those three are refusals, counted with their reasons. Every violation and crash
prints one line with ``seed``, net index, method and values; ``--only`` reruns that net.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lipbound  # noqa: E402
from lipbound.errors import InvalidInput, NotApplicable, UnsupportedOperation  # noqa: E402
from lipbound.methods import METHODS  # noqa: E402
from soundness_nets import (Case, Oracle, grid_oracle, lower_oracle, make_case, recheck_witness,  # noqa: E402
                            region_bound)

REFUSALS = (InvalidInput, NotApplicable, UnsupportedOperation)
UPPER_RTOL = 1e-7  # certified / exact values against the independent lower bound
CROSS_RTOL = 1e-9  # witnessed lower bounds against certified upper bounds
NOISE = 1e-10  # absolute slack of re-evaluated values, relative to the net's AutoLip (a product of norms)

#: Per-method options: small time budgets so that a net takes a fraction of a second.
OPTIONS: dict[str, dict[str, Any]] = {
    "lower": {"time_budget": 0.05, "starts": 16, "steps": 30, "walk_rounds": 5},
    "exact": {"time_budget": 0.5, "lower_budget": 0.05, "samples": 32},
    "best": {"time_budget": 0.4},
    "lipsdp": {"time_budget": 0.3, "lbfgs_iter": 300, "max_size": 2000},
    "lipsdp-layer": {"time_budget": 0.3, "lbfgs_iter": 300, "max_size": 2000},
    "eclipse-fast": {"max_size": 2000},  # an LMI of order 2000+ takes tens of seconds
    "seqlip": {"pair_budget": 0.05, "time_budget": 0.3},
    "seqlip-greedy": {"pair_budget": 0.05, "time_budget": 0.3},
    "seqlip-topk": {"topk_iter": 30},
}
#: Methods run only on small nets (input size at most ``SMALL_INPUTS``): they are meant for small
#: nets and take seconds on large ones whatever their budget (``exact`` took 90 s with
#: ``time_budget=0.5`` on a batch norm over 1188 inputs). The SDPs and ``best`` run only on every
#: ``SLOW_EVERY``-th net: they take tenths of a second each.
SMALL_ONLY = ("exact", "lipsdp", "lipsdp-layer", "best", "local-bab")
SLOW = ("lipsdp", "lipsdp-layer", "best", "local-bab")
NEEDS_DOMAIN = ("local-bab",)  # bounds the constant on a region only
SMALL_INPUTS = 64
SLOW_EVERY = 3


def plan(case: Case) -> list[str]:
    """The methods to run on ``case``: every registered method, less those of ``SMALL_ONLY`` on
    large nets and those of ``SLOW`` on all but every ``SLOW_EVERY``-th net."""
    small = case.n_inputs <= SMALL_INPUTS
    return [m for m in METHODS if (small or m not in SMALL_ONLY) and (m not in SLOW or case.index % SLOW_EVERY == 0)
            and (case.domain is not None or m not in NEEDS_DOMAIN)]


@dataclass
class Run:
    """One method on one net: ``status`` is ``result``, ``refused`` or ``crashed``."""

    method: str
    status: str
    seconds: float
    result: lipbound.Result | None = None
    message: str = ""
    on_domain: bool = False  # the result bounds the constant on the case's box (else on R^n)


@dataclass
class Finding:
    """A violation (or an ONNX mismatch) with the values that show it."""

    kind: str
    method: str
    message: str


@dataclass
class CaseReport:
    seed: int
    index: int
    description: str
    runs: list[Run] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    mismatches: list[Finding] = field(default_factory=list)
    oracle: float = 0.0
    oracle_how: str = ""
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """One reproducer line per violation, crash and mismatch."""
        head = f"seed={self.seed} net={self.index}"
        out = [f"VIOLATION {head} method={f.method} {f.kind}: {f.message} | {self.description}" for f in self.findings]
        out += [f"CRASH {head} method={r.method}: {r.message} | {self.description}" for r in self.runs
                if r.status == "crashed"]
        out += [f"MISMATCH {head} method={f.method} {f.kind}: {f.message} | {self.description}"
                for f in self.mismatches]
        return out


def run_method(graph: lipbound.Graph, case: Case, method: str, seed: int) -> Run:
    on_domain = case.domain is not None  # estimate localizes the graph: every method bounds the box
    t0 = time.perf_counter()
    try:
        rep = lipbound.estimate(graph, methods=[method], progress=False, seed=seed, domain=case.domain,
                                method_options={method: OPTIONS.get(method, {})})
        return Run(method, "result", time.perf_counter() - t0, rep.results[0], on_domain=on_domain)
    except REFUSALS as exc:
        return Run(method, "refused", time.perf_counter() - t0, message=_one_line(exc), on_domain=on_domain)
    except Exception as exc:  # noqa: BLE001 - a crash is what the fuzz counts
        return Run(method, "crashed", time.perf_counter() - t0, message=_crash_line(exc), on_domain=on_domain)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _crash_line(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames) if "lipbound" in f.filename), "?")
    return f"{type(exc).__name__} at {where}: {_one_line(exc)}"


def _upper_like(r: lipbound.Result) -> bool:
    return r.kind in ("certified_upper", "exact")


def _claimed_lower(r: lipbound.Result) -> float | None:
    """The lower bound a result's witness stands for (an ``exact`` timed out into a certified
    upper bound keeps its witness for ``details["lower"]``)."""
    if r.kind in ("witnessed_lower", "exact"):
        return r.value
    low = r.details.get("lower") if isinstance(r.details, dict) else None
    return float(low) if isinstance(low, (int, float)) and r.witness is not None else None


def check_case(case: Case, *, onnx: bool = False, methods: Iterable[str] | None = None,
               oracle_samples: int = 24) -> CaseReport:
    """Run the methods on ``case`` and check them (module docstring)."""
    t0 = time.perf_counter()
    report = CaseReport(case.seed, case.index, case.describe())
    seed = case.seed * 100003 + case.index
    try:
        graph = lipbound.as_graph(case.module, case.input_shape)
    except REFUSALS as exc:
        report.runs.append(Run("frontend", "refused", time.perf_counter() - t0, message=_one_line(exc)))
        graph = None
    except Exception as exc:  # noqa: BLE001
        report.runs.append(Run("frontend", "crashed", time.perf_counter() - t0, message=_crash_line(exc)))
        graph = None
    if graph is not None:
        report.runs += [run_method(graph, case, m, seed) for m in (methods if methods is not None else plan(case))]

    # the independent lower bounds: on the box (methods given the domain) and on R^n
    regions = region_bound(case)
    centres = regions.centres if regions is not None else None
    samples = oracle_samples if case.n_inputs <= 1000 else oracle_samples // 3  # large: power method, slower
    oracles: dict[bool, Oracle] = {}
    oracles[False] = lower_oracle(case, samples=samples, seed=seed, extra_points=centres, on_domain=False)
    if case.domain is not None:
        oracles[True] = lower_oracle(case, samples=samples, seed=seed, extra_points=centres, on_domain=True)
    if case.mlp is not None and case.n_inputs <= 2:
        for on_domain, oracle in oracles.items():
            if on_domain or case.domain is None:
                grid_oracle(case, 401 if case.n_inputs == 1 else 61, oracle)
    top = oracles.get(True, oracles[False])
    report.oracle, report.oracle_how = top.value, top.how

    results = [r for r in report.runs if r.status == "result"]
    atol = NOISE * next((r.result.value for r in results if r.method == "autolip" and math.isfinite(r.result.value)), 1.0)
    for run in results:
        report.findings += check_result(case, run, oracles[run.on_domain and case.domain is not None],
                                        regions if run.on_domain or case.domain is None else None, atol)
    report.findings += cross_check(results)
    if onnx and graph is not None:
        onnx_roundtrip(case, graph, report, oracles[False])
    report.seconds = time.perf_counter() - t0
    return report


def check_result(case: Case, run: Run, oracle: Oracle, regions, atol: float = 0.0) -> list[Finding]:
    """The checks of one result against the oracle, the region enumeration and its witness
    (``atol``: absolute slack for float64 noise in re-evaluated values)."""
    r, out = run.result, []
    if _upper_like(r) and not (r.value >= oracle.value * (1 - UPPER_RTOL)):
        out.append(Finding(f"upper<oracle[{oracle.how}]", run.method, f"{r.kind} {r.value:.10g} < independent lower bound "
                                                       f"{oracle.value:.10g} ({oracle.how})"))
    if r.kind == "exact" and regions is not None and r.value > regions.upper * (1 + UPPER_RTOL) + atol:
        out.append(Finding("exact>regions", run.method, f"exact {r.value:.10g} > max Jacobian over the "
                                                        f"{regions.regions} enumerated regions {regions.upper:.10g}"))
    claimed = _claimed_lower(r)
    if claimed is not None and r.witness is not None:
        for kind, message in recheck_witness(case, r.witness, claimed, run.on_domain, atol):
            out.append(Finding(kind, run.method, message))
    return out


def cross_check(runs: list[Run]) -> list[Finding]:
    """Every witnessed lower bound is at most every certified upper bound whose domain contains
    its own (a bound on R^n holds on the box, not the other way round)."""
    out = []
    for lo in runs:
        claimed = _claimed_lower(lo.result)
        if claimed is None:
            continue
        for up in runs:
            if _upper_like(up.result) and (lo.on_domain or not up.on_domain) and \
                    claimed > up.result.value * (1 + CROSS_RTOL):
                out.append(Finding("lower>upper", lo.method, f"{lo.method} {claimed:.12g} > {up.method} "
                                                             f"{up.result.kind} {up.result.value:.12g}"))
    return out


def onnx_roundtrip(case: Case, graph: lipbound.Graph, report: CaseReport, oracle: Oracle) -> None:
    """Export ``case.module`` with ``torch.onnx.export``, load it with lipbound, compare."""
    t0 = time.perf_counter()
    dtype = case.dtype
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "net.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(case.module, (torch.zeros(1, *case.input_shape, dtype=dtype),), path,
                                  dynamo=False, opset_version=17)
        except Exception as exc:  # noqa: BLE001 - torch's exporter, not lipbound
            report.runs.append(Run("onnx:load", "refused", time.perf_counter() - t0,
                                   message=f"torch.onnx.export: {_one_line(exc)}"))
            return
        try:
            g2 = lipbound.load(path)
        except REFUSALS as exc:
            report.runs.append(Run("onnx:load", "refused", time.perf_counter() - t0, message=_one_line(exc)))
            return
        except Exception as exc:  # noqa: BLE001
            report.runs.append(Run("onnx:load", "crashed", time.perf_counter() - t0, message=_crash_line(exc)))
            return
    report.runs.append(Run("onnx:load", "result", time.perf_counter() - t0))
    x = torch.randn(8, *case.input_shape, generator=torch.Generator().manual_seed(case.index), dtype=dtype)
    if case.domain is not None:
        x = case.domain[0] + (case.domain[1] - case.domain[0]) * torch.rand(x.shape, dtype=dtype)
    with torch.no_grad():
        want = case.module(x).flatten(1).double()
        try:
            got = g2.forward(x.to(g2.dtype)).flatten(1).double()
        except Exception as exc:  # noqa: BLE001
            report.runs.append(Run("onnx:forward", "crashed", 0.0, message=_crash_line(exc)))
            return
    report.runs.append(Run("onnx:forward", "result", 0.0))
    # ONNX stores activation attributes (LeakyRelu's alpha, HardSigmoid's) as float32
    rtol = 1e-5
    err = float(((got - want).abs() / (1 + want.abs())).max()) if got.shape == want.shape else math.inf
    # torch exports Softplus as ONNX Softplus, without torch's linear switch above the threshold:
    # the file computes another (continuous) function, so the module's oracle does not apply to it
    same_function = not any(isinstance(m, torch.nn.Softplus) or getattr(m, "fn", None) is torch.nn.functional.softplus
                            for m in case.module.modules())
    if not err <= rtol:
        finding = Finding("onnx-forward", "onnx:forward", f"ONNX graph output differs from the module by {err:.3g} "
                                                          f"(shape {tuple(got.shape)})")
        (report.findings if same_function else report.mismatches).append(finding)
    for method in ("autolip", "seqlip"):
        torch_run = next((r for r in report.runs if r.method == method and r.status == "result"), None)
        run = run_method(g2, dataclasses.replace(case, domain=None), method, 0)
        run.method = f"onnx:{method}"
        report.runs.append(run)
        if run.status != "result":
            continue
        if same_function:
            report.findings += check_result(case, run, oracle, None)
        if torch_run is not None and not math.isclose(run.result.value, torch_run.result.value, rel_tol=1e-6):
            report.mismatches.append(Finding("onnx-value", run.method, f"{run.result.value:.10g} from ONNX, "
                                                                       f"{torch_run.result.value:.10g} from torch"))


# ---------------------------------------------------------------------------------------------
# Tally and table
# ---------------------------------------------------------------------------------------------
@dataclass
class MethodTally:
    runs: int = 0
    kinds: Counter = field(default_factory=Counter)
    violations: Counter = field(default_factory=Counter)
    crashes: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)
    mismatches: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    slowest: int = -1  # net index of the slowest run


def _reason(message: str) -> str:
    """A refusal or crash message with its node names and numbers blanked, to group alike ones."""
    message = re.sub(r"'[^']*'", "'.'", message)
    message = re.sub(r"\([^()]*\)", "(.)", message)
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", message)[:160]


class Tally:
    def __init__(self) -> None:
        self.methods: dict[str, MethodTally] = defaultdict(MethodTally)
        self.nets = 0
        self.seconds = 0.0
        self.families: Counter = Counter()
        self.violation_kinds: Counter = Counter()

    def add(self, rep: CaseReport, family: str) -> None:
        self.nets += 1
        self.seconds += rep.seconds
        self.families[family] += 1
        for run in rep.runs:
            t = self.methods[run.method]
            t.runs += 1
            t.seconds += run.seconds
            if run.seconds > t.max_seconds:
                t.max_seconds, t.slowest = run.seconds, rep.index
            if run.status == "result" and run.result is not None:
                t.kinds[run.result.kind] += 1
            elif run.status == "refused":
                t.refusals[_reason(run.message)] += 1
            elif run.status == "crashed":
                t.crashes[_reason(run.message)] += 1
        for f in rep.findings:
            self.methods[f.method].violations[f.kind] += 1
            self.violation_kinds[f.kind] += 1
        for f in rep.mismatches:
            self.methods[f.method].mismatches += 1

    @property
    def violations(self) -> int:
        return sum(self.violation_kinds.values())

    @property
    def crashes(self) -> int:
        return sum(sum(t.crashes.values()) for t in self.methods.values())

    def markdown(self, header: str) -> str:
        kinds = ("certified_upper", "exact", "witnessed_lower", "estimate")
        lines = [header, "",
                 f"{self.nets} nets ({', '.join(f'{k} {v}' for k, v in sorted(self.families.items()))}); "
                 f"{self.violations} violations, {self.crashes} crashes; {self.seconds:.0f} s of checking "
                 f"({self.seconds / max(self.nets, 1):.3f} s per net).", "",
                 "| method | runs | certified | exact | lower | estimate | refused | crashed | violations | "
                 "onnx mismatch | mean s | max s (net) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name in sorted(self.methods, key=lambda m: (m.startswith("onnx"), m)):
            t = self.methods[name]
            viol = ", ".join(f"{k} {v}" for k, v in t.violations.most_common()) or "0"
            lines.append(f"| {name} | {t.runs} | " + " | ".join(str(t.kinds[k]) for k in kinds)
                         + f" | {sum(t.refusals.values())} | {sum(t.crashes.values())} | {viol} | {t.mismatches} | "
                         f"{t.seconds / max(t.runs, 1):.3f} | {t.max_seconds:.2f} ({t.slowest}) |")
        lines += ["", "Violations by kind: " + (", ".join(f"{k} {v}" for k, v in self.violation_kinds.most_common())
                                               or "none"), ""]
        for title, attr in (("Crashes", "crashes"), ("Refusals", "refusals")):
            rows = [(name, reason, n) for name, t in self.methods.items() for reason, n in getattr(t, attr).items()]
            if rows:
                lines += [f"{title} by reason (names and numbers blanked):", "", "| method | count | reason |",
                          "|---|---:|---|"]
                lines += [f"| {m} | {n} | {reason.replace('|', '/')} |" for m, reason, n in sorted(rows)]
                lines.append("")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def _work(args: tuple[int, int, bool]) -> tuple[CaseReport, str]:
    seed, index, onnx = args
    case = make_case(seed, index)
    try:
        return check_case(case, onnx=onnx), case.family
    except Exception as exc:  # noqa: BLE001 - a bug of the fuzz itself: report it, go on
        rep = CaseReport(seed, index, case.describe())
        rep.runs.append(Run("fuzz-harness", "crashed", 0.0, message=_crash_line(exc)))
        return rep, case.family


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip()
        return rev + (" (src modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=None, help="start no new net after this many minutes")
    ap.add_argument("--onnx", action="store_true", help="also round-trip every net through ONNX")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    ap.add_argument("--out", type=str, default=None, help="write the markdown table here")
    ap.add_argument("--only", type=int, default=None, help="run net INDEX alone and print everything")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.only is not None:
        case = make_case(args.seed, args.only)
        rep = check_case(case, onnx=args.onnx)
        print(rep.description)
        print(f"oracle {rep.oracle:.10g} ({rep.oracle_how})")
        for run in rep.runs:
            r = run.result
            print(f"  {run.method:14s} {run.status:8s} {run.seconds:6.2f}s "
                  + (f"{r.kind:16s} {r.value:.10g} {r.witness.get('form') if isinstance(r.witness, dict) else ''}"
                     if r is not None else run.message))
        for line in rep.lines():
            print(line)
        return 1 if rep.findings or any(r.status == "crashed" for r in rep.runs) else 0

    tally = Tally()
    start = time.perf_counter()
    deadline = start + 60 * args.minutes if args.minutes else math.inf
    jobs = ((args.seed, i, args.onnx) for i in range(args.nets) if time.perf_counter() < deadline)
    pool = multiprocessing.get_context("fork").Pool(args.jobs) if args.jobs > 1 else None
    results = pool.imap(_work, jobs, chunksize=4) if pool else map(_work, jobs)
    try:
        for rep, family in results:
            tally.add(rep, family)
            for line in rep.lines():
                print(line, flush=True)
            if tally.nets % 500 == 0:
                print(f"... {tally.nets} nets, {tally.violations} violations, {tally.crashes} crashes, "
                      f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.terminate()
    wall = time.perf_counter() - start
    header = (f"# Soundness fuzz\n\nlipbound commit {_commit()}; `benchmarks/soundness.py --nets {args.nets} "
              f"--seed {args.seed}{' --onnx' if args.onnx else ''}{f' --minutes {args.minutes:g}' if args.minutes else ''}"
              f"{f' --jobs {args.jobs}' if args.jobs > 1 else ''}`, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; wall time {wall / 60:.1f} min.")
    table = tally.markdown(header)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 1 if tally.violations or tally.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
