"""The local-bounds benchmark of issue 10 ("Done when"): brackets of the Lipschitz constant
(L2 -> L2) on VNN-LIB input regions, through lipbound's public API only.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/local.py [--quick] [--only FAMILY]
        [--methods M1,M2] [--out benchmarks/results/local.md]

Rows (networks and properties from ``../shared/realnets``, see its MANIFEST.md):
ACAS Xu (every ``acasxu_*.onnx`` x props 1-4, 120 s per box, and the union of the four boxes in
600 s), mnistfc 256x2 and 256x6 on the 20 ``mnistfc_prop_*`` boxes (60 s each), ERAN 9x200 on its 5
boxes (60 s each), ResNet-2B on its 5 boxes (120 s each). Each row runs
``lipbound.estimate(graph, methods=..., domain=lipbound.load_vnnlib(path).region, time_budget=...)``
in its own subprocess, so a crash or a hang costs one row (marked CRASH with its last error line).
The global bracket of each network (``methods=["best", "lower"]``, no domain) is computed once and
cached in ``benchmarks/results/local_global.json``.

Soundness, checked here independently of lipbound's methods (only ``Graph.forward`` is shared):
dense float64 Jacobians (``torch.autograd.functional.jacobian``) at points sampled inside the region
and quotients ``||f(x) - f(y)|| / ||x - y||`` of sampled pairs must not exceed the certified upper
bound (a sampled value is a lower bound of the local constant), and every witness must lie inside
the region. A flagged row fails its family whatever its ratio.

The MNIST ball comparison with ECLipsE-Gen-Local and the local-certify row are in
``benchmarks/local_peer.py``; this script puts their tables in the same results file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REALNETS = HERE.parent.parent / "shared" / "realnets"
VNNLIB = REALNETS / "vnnlib"
GLOBAL_CACHE = HERE / "results" / "local_global.json"
#: the API's default set (``methods=None``: chosen by lipbound's cost model for the localized graph and
#: the budget, as a new user gets it)
DEFAULT_METHODS = ("default",)
#: the methods a family's rows run unless ``--methods`` says otherwise: the search built for that kind
#: of region gets the whole budget (local-bab's input splitting on ACAS Xu's 5 inputs; neuron-bab's
#: neuron splitting on the 2-layer MNIST net, with its own lower end); the other families the default set
FAMILY_METHODS = {"acasxu": ("local-bab",), "acasxu-union": ("local-bab",), "mnistfc_256x2": ("neuron-bab",)}
REL_TOL = 1e-9  # sampled values are float64: a violation must exceed the bound by more than this


# ---- independent soundness check -------------------------------------------------------------------
def jacobian_norms(graph, points: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
    """Spectral norms of the dense float64 Jacobians of ``graph.forward`` at each point, restricted to
    the ``free`` inputs (a flat box fixes the others: pairs inside it never move them, so the
    columns of fixed inputs do not count; ACAS Xu's property 4 fixes one)."""
    g = graph.to(device="cpu", dtype=torch.float64)
    fn = lambda x: g.forward(x.unsqueeze(0)).reshape(-1)  # noqa: E731
    norms = []
    for x in points.to(torch.float64):
        jac = torch.autograd.functional.jacobian(fn, x, vectorize=True).reshape(-1, x.numel())
        if free is not None:
            jac = jac[:, free.reshape(-1)]
        norms.append(torch.linalg.matrix_norm(jac, ord=2))
    return torch.stack(norms)


def pair_quotients(graph, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``||f(x_b) - f(y_b)|| / ||x_b - y_b||`` in float64."""
    g = graph.to(device="cpu", dtype=torch.float64)
    with torch.no_grad():
        diff = (g.forward(x.to(torch.float64)) - g.forward(y.to(torch.float64))).flatten(1).norm(dim=1)
    return diff / (x - y).flatten(1).norm(dim=1)


def sample_box(low: torch.Tensor, high: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand((n, *low.shape), generator=gen, dtype=torch.float64)
    return low + u * (high - low)


def sample_ball(centre: torch.Tensor, radius: float, n: int, gen: torch.Generator, norm: float = 2.0) -> torch.Tensor:
    """``n`` points in the closed ball (L2: uniform direction, radius ``r u^(1/d)`` with a tenth of
    them on the sphere, where the constant is usually largest; Linf: uniform in the box)."""
    c = centre.to(torch.float64)
    if norm == math.inf:
        return sample_box(c - radius, c + radius, n, gen)
    d = torch.randn((n, c.numel()), generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    s = torch.rand((n, 1), generator=gen, dtype=torch.float64) ** (1.0 / c.numel())
    s[: max(1, n // 10)] = 1.0 - 1e-12
    return c + (radius * s * d).reshape(n, *c.shape)


def parts(region) -> list[Any]:
    """The convex parts of a region: a BoxUnion's boxes, else the region itself."""
    return list(region.parts) if hasattr(region, "parts") else [region]


def sample_region(region, n: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``n`` points in each convex part (one tensor per part), from the region's public attributes."""
    out = []
    for p in parts(region):
        if hasattr(p, "radius"):
            out.append(sample_ball(p.center, float(p.radius), n, gen, float(p.norm)))
        else:
            out.append(sample_box(p.low.to(torch.float64), p.high.to(torch.float64), n, gen))
    return out


def inside(region, x: torch.Tensor, tol: float = 1e-12) -> bool:
    """Whether the point ``x`` lies in the closed region (in some part of a union)."""
    x = torch.as_tensor(x, dtype=torch.float64).cpu()
    for p in parts(region):
        if hasattr(p, "radius"):
            d = (x.reshape(-1) - p.center.to(torch.float64).reshape(-1)).norm(p=float(p.norm))
            ok = bool(d <= p.radius * (1 + tol) + tol)
        else:
            lo, hi = p.low.to(torch.float64).reshape(-1), p.high.to(torch.float64).reshape(-1)
            slack = tol * (1 + torch.maximum(lo.abs(), hi.abs()))
            ok = bool(((x.reshape(-1) >= lo - slack) & (x.reshape(-1) <= hi + slack)).all())
        if ok:
            return True
    return False


def soundness(graph, region, upper: float, witnesses: list, samples: int, seed: int = 0) -> dict:
    """The independent checks of one row: the largest sampled Jacobian norm and pair quotient (each
    part of a union on its own), whether either exceeds ``upper``, and the witnesses outside."""
    gen = torch.Generator().manual_seed(seed)
    jac, pair = 0.0, 0.0
    for part, pts in zip(parts(region), sample_region(region, samples, gen)):
        free = None if hasattr(part, "radius") else (part.high > part.low)
        jac = max(jac, float(jacobian_norms(graph, pts, free).max()))
        half = len(pts) // 2
        pair = max(pair, float(pair_quotients(graph, pts[:half], pts[half: 2 * half]).max()))
    flags = [f"sampled {what} {v:.6g} > certified {upper:.6g}"
             for what, v in (("Jacobian norm", jac), ("pair quotient", pair)) if v > upper * (1 + REL_TOL)]
    for method, w in witnesses:
        points = [w.x] + ([w.y] if getattr(w, "form", "") == "pair" else [])
        if not all(inside(region, p) for p in points):
            flags.append(f"{method}'s witness lies outside the region")
    return {"sampled_jac": jac, "sampled_pair": pair, "flags": flags}


# ---- the rows ---------------------------------------------------------------------------------------
def acas_nets() -> list[str]:
    return sorted(p.stem for p in REALNETS.glob("acasxu_*.onnx"))


def row_specs(quick: bool) -> list[dict]:
    """One dict per row: family, net, props (VNN-LIB stems; several = their union), budget (s)."""
    mnist = [f"mnistfc_prop_{i}_{e}" for e in ("0.03", "0.05") for i in range(10)]
    eran = sorted(p.stem for p in VNNLIB.glob("eran_9x200_*.vnnlib"))
    resnet = [f"cifar10_resnet2b_prop_{i}_eps_0.008" for i in range(5)]
    acas_props = [f"acasxu_prop_{k}" for k in range(1, 5)]
    nets = acas_nets()
    families = [("acasxu", [(n, [p]) for n in nets for p in acas_props], 120.0),
                ("acasxu-union", [(n, acas_props) for n in nets], 600.0),
                ("mnistfc_256x2", [("mnistfc_256x2", [p]) for p in mnist], 60.0),
                ("mnistfc_256x6", [("mnistfc_256x6", [p]) for p in mnist], 60.0),
                ("eran_9x200", [("eran_mnist_relu_9x200", [p]) for p in eran], 60.0),
                ("resnet2b", [("cifar10_resnet_2b", [p]) for p in resnet], 120.0)]
    specs = []
    for family, rows, budget in families:
        for net, props in rows[:1] if quick else rows:
            specs.append({"family": family, "net": net, "props": props,
                          "budget": min(budget, 20.0) if quick else budget})
    return specs


TARGETS = {  # family -> (text, test on the list of ratios)
    "acasxu": ("every box <= 1.05", lambda r: max(r) <= 1.05),
    "acasxu-union": ("every union <= 2", lambda r: max(r) <= 2),
    "mnistfc_256x2": ("median <= 2, worst <= 5", lambda r: statistics.median(r) <= 2 and max(r) <= 5),
    "mnistfc_256x6": ("median <= 10", lambda r: statistics.median(r) <= 10),
    "eran_9x200": ("median <= 5", lambda r: statistics.median(r) <= 5),
    "resnet2b": ("median <= 5", lambda r: statistics.median(r) <= 5),
}


def missing_api() -> str | None:
    """None when lipbound has the public API this benchmark needs, else one line saying what lacks."""
    import lipbound

    lacking = [name for name in ("load_vnnlib", "Ball") if not hasattr(lipbound, name)]
    if lacking:
        return (f"lipbound has no {', '.join(lacking)} yet (issue 10's local bounds are not merged): "
                "the local rows cannot run")
    return None


def region_of(lipbound, graph, props: list[str]):
    """The region of one or several VNN-LIB files (several: their union), in the graph's input shape."""
    boxes = []
    for stem in props:
        region = lipbound.load_vnnlib(VNNLIB / f"{stem}.vnnlib").region
        if tuple(region.low.shape) != tuple(graph.input_shape) and region.low.numel() == region.high.numel():
            region = type(region)(region.low.reshape(graph.input_shape), region.high.reshape(graph.input_shape))
        boxes.append(region)
    if len(boxes) == 1:
        return boxes[0]
    union = getattr(lipbound, "BoxUnion", None) or lipbound.methods.region.BoxUnion
    return union(boxes)


def estimate_bracket(lipbound, graph, methods: list[str], budget: float, domain=None) -> tuple[Any, float]:
    """``lipbound.estimate`` with ``methods`` (those lipbound does not know are dropped, e.g.
    "local-bab" before it lands; ``["default"]``: the API's default set); returns the report and its
    wall time."""
    known = None if list(methods) == ["default"] else [m for m in methods if m in lipbound.METHODS]
    kwargs = {} if domain is None else {"domain": domain}
    t0 = time.perf_counter()
    report = lipbound.estimate(graph, methods=known, time_budget=budget, progress=False, seed=0, **kwargs)
    return report, time.perf_counter() - t0


def use_propagation(method: str, budget: float | None = None) -> None:
    """Make the API localize regions with ``method`` instead of its own choice ("auto": split-crown
    on ReLU MLPs of >= 3 hidden layers, else CROWN), for a before/after comparison in the same run;
    "crown" and "alpha-crown" go to local-bab's parts too (a split tree per part would spend its
    budget twice on the root). ``budget`` caps the API's localization (seconds; with "auto" the API's
    own cap, a share of the row's budget, stays)."""
    import functools

    import lipbound.api
    import lipbound.methods.local_bab_part
    from lipbound.methods.propagation import localize

    if method == "auto" and budget is None:
        return

    def api_localize(graph, region, *, method_=method, time_budget=None, **_):
        return localize(graph, region, method=method_, time_budget=budget if budget is not None else time_budget)

    lipbound.api.localize = api_localize
    if method in ("crown", "alpha-crown"):
        lipbound.methods.local_bab_part.localize = functools.partial(localize, method=method)


def measure(spec: dict, methods: list[str], samples: int, propagation: str = "auto",
            propagation_budget: float | None = None) -> dict:
    """One row in this process: the local bracket and the independent soundness check."""
    import lipbound

    use_propagation(propagation, propagation_budget)

    why = missing_api()
    if why:
        raise RuntimeError(why)
    graph = lipbound.load(REALNETS / f"{spec['net']}.onnx")
    region = region_of(lipbound, graph, spec["props"])
    report, seconds = estimate_bracket(lipbound, graph, methods, spec["budget"], region)
    witnesses = [(r.method, r.witness) for r in report.results if r.witness is not None]
    out = {"lower": report.lower, "upper": report.upper, "ratio": report.ratio, "seconds": seconds,
           "methods": [r.method for r in report.results]}
    out.update(soundness(graph, region, report.upper, witnesses, samples))
    return out


def global_bracket(net: str, budget: float) -> dict:
    """The global bracket (``best`` and ``lower``, no domain) of one network, in this process."""
    import lipbound

    report, seconds = estimate_bracket(lipbound, lipbound.load(REALNETS / f"{net}.onnx"), ["best", "lower"], budget)
    return {"lower": report.lower, "upper": report.upper, "ratio": report.ratio, "seconds": seconds, "budget": budget}


def in_child(task: dict, timeout: float) -> dict:
    """Run ``task`` (``{"row": spec, ...}`` or ``{"global": net, ...}``) in a fresh process; a crash,
    an error or a timeout becomes ``{"crash": one line}``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, str(Path(__file__)), "--task", json.dumps(task)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"crash": f"killed after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"crash": ((proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1])[:160]}
    return json.loads(lines[-1])


def run_task(task: dict) -> dict:
    """The child's side of :func:`in_child`: errors become ``{"crash": ...}`` too."""
    try:
        if "global" in task:
            return global_bracket(task["global"], task["budget"])
        if "balls" in task or "certify" in task:
            import local_peer

            if "balls" in task:
                return local_peer.our_balls(task["balls"], task["items"], task["budget"], task["samples"])
            return local_peer.certify_radii(task["certify"], task["upper"])
        return measure(task["row"], task["methods"], task["samples"], task.get("propagation", "auto"),
                       task.get("propagation_budget"))
    except Exception as exc:  # one row's failure, whatever it is, must not lose the table
        return {"crash": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]}


# ---- the table --------------------------------------------------------------------------------------
def fmt(v: float | None, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def row_status(row: dict, budget: float) -> str:
    if "crash" in row:
        return "CRASH: " + row["crash"].replace("|", "/")
    notes = list(row["flags"])
    if row["seconds"] > budget * 1.1 + 1:
        notes.append(f"over its {budget:g} s budget")
    return "; ".join(notes) or "ok"


def family_summary(family: str, rows: list[tuple[dict, dict]], globals_: dict) -> str:
    """One summary line: medians and worst of the ratios, the global ratio, the target, PASS/FAIL.
    A crash, a soundness flag or a row over its budget fails the family."""
    ratios = [r["ratio"] if r["ratio"] is not None else math.inf for _, r in rows if "crash" not in r]
    glob = [globals_.get(s["net"], {}).get("ratio") for s, _ in rows]
    glob = [g for g in glob if g is not None]
    text, test = TARGETS[family]
    clean = all(row_status(r, s["budget"]) == "ok" for s, r in rows)
    verdict = "PASS" if ratios and clean and len(ratios) == len(rows) and test(ratios) else "FAIL"
    med = fmt(statistics.median(ratios)) if ratios else "-"
    worst = fmt(max(ratios)) if ratios else "-"
    g = fmt(statistics.median(glob)) if glob else "-"
    return f"| {family} | {len(ratios)}/{len(rows)} | {med} | {worst} | {g} | {text} | {verdict} |"


def render(results: list[tuple[dict, dict]], globals_: dict, header: list[str]) -> list[str]:
    lines = header + ["", "## Local brackets per region", "",
                      "| family | network | region | lower | upper | ratio | global ratio | seconds | budget "
                      "| sampled max | check |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for spec, r in results:
        region = " u ".join(spec["props"]) if len(spec["props"]) < 2 else f"union of {len(spec['props'])} props"
        g = globals_.get(spec["net"], {}).get("ratio")
        sampled = None if "crash" in r else max(r["sampled_jac"], r["sampled_pair"])
        lines.append(f"| {spec['family']} | {spec['net']} | {region} | {fmt(r.get('lower'))} | {fmt(r.get('upper'))} "
                     f"| {fmt(r.get('ratio'))} | {fmt(g)} | {fmt(r.get('seconds'), '.1f')} | {spec['budget']:g} "
                     f"| {fmt(sampled)} | {row_status(r, spec['budget'])} |")
    lines += ["", "## Per family against the issue's targets", "",
              "| family | rows measured | median ratio | worst ratio | global ratio | target | result |",
              "|---|---:|---:|---:|---:|---|---|"]
    for family in dict.fromkeys(s["family"] for s, _ in results):
        lines.append(family_summary(family, [(s, r) for s, r in results if s["family"] == family], globals_))
    return lines + [""] + global_lines(globals_)


def global_lines(globals_: dict) -> list[str]:
    lines = ["Global brackets (`methods=['best', 'lower']`, no domain; cached in "
             "`benchmarks/results/local_global.json`):", ""]
    return lines + [f"- {net}: lower {fmt(g.get('lower'))}, upper {fmt(g.get('upper'))}, ratio {fmt(g.get('ratio'))}"
              + (f" ({g['seconds']:.1f} s)" if "seconds" in g else f" (CRASH: {g.get('crash')})")
              for net, g in sorted(globals_.items())]


def globals_for(nets: list[str], budget: float) -> dict:
    """Global brackets of ``nets``, from the cache or computed (and cached)."""
    cache = json.loads(GLOBAL_CACHE.read_text()) if GLOBAL_CACHE.exists() else {}
    for net in nets:
        if net not in cache or "crash" in cache[net] or cache[net].get("budget", 0) < budget:
            cache[net] = in_child({"global": net, "budget": budget}, timeout=2 * budget + 120)
            print("global", net, cache[net], flush=True)
            GLOBAL_CACHE.parent.mkdir(parents=True, exist_ok=True)
            GLOBAL_CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return {net: cache[net] for net in nets}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one region per family, budgets of at most 20 s")
    ap.add_argument("--only", help="one family: " + ", ".join(TARGETS))
    ap.add_argument("--methods", default=None,
                    help="methods of every local row (names lipbound does not know are dropped); default: "
                         "per family, FAMILY_METHODS, else " + ",".join(DEFAULT_METHODS))
    ap.add_argument("--samples", type=int, default=None, help="points per region for the soundness check")
    ap.add_argument("--rows", type=int, default=None, help="at most this many rows per family (the first ones)")
    ap.add_argument("--skip", default="", help="families to leave out, comma-separated")
    ap.add_argument("--global-budget", type=float, default=None, help="seconds of each network's global bracket")
    ap.add_argument("--no-peer", action="store_true", help="leave out the peer comparison and the certify row")
    ap.add_argument("--propagation", default="auto", choices=["auto", "crown", "alpha-crown", "split-crown"],
                    help="pre-activation bounds of each local row (auto: the API's own choice)")
    ap.add_argument("--propagation-budget", type=float, default=None,
                    help="seconds the API's localization of a row may take (default: no cap)")
    ap.add_argument("--out", default=str(HERE / "results" / "local.md"))
    ap.add_argument("--task", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.task:
        print(json.dumps(run_task(json.loads(args.task))))
        return 0
    if not REALNETS.is_dir():
        print(f"local.py: {REALNETS} is absent: nothing to measure", file=sys.stderr)
        return 2
    if args.only and args.only not in TARGETS:
        ap.error(f"--only must be one of {', '.join(TARGETS)}")
    import local_peer

    peer_lines = [] if args.no_peer else local_peer.section(quick=args.quick)
    header = ["# Local Lipschitz bounds on input regions (issue 10)", "",
              f"Code: {git_rev()}; machine: {os.cpu_count()} CPU cores, shared, one BLAS thread per row; "
              f"methods per row: {args.methods or per_family_text()}; pre bounds: {args.propagation}; {'--quick' if args.quick else 'full run'}."]
    why = missing_api()
    if why:
        cached = json.loads(GLOBAL_CACHE.read_text()) if GLOBAL_CACHE.exists() else {}
        text = header + ["", f"Local rows not run: {why}.", ""] + global_lines(cached) + [""] + peer_lines
        Path(args.out).write_text("\n".join(text) + "\n")
        print(f"local.py: {why}", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    specs = [s for s in row_specs(args.quick) if args.only in (None, s["family"]) and s["family"] not in skip]
    if args.rows is not None:
        specs = [s for s in specs if [t["family"] for t in specs].index(s["family"]) + args.rows > specs.index(s)]
    globals_ = globals_for(list(dict.fromkeys(s["net"] for s in specs)),
                           args.global_budget or (20.0 if args.quick else 120.0))
    samples = args.samples or (16 if args.quick else 64)
    results = []
    for spec in specs:
        methods = args.methods.split(",") if args.methods else list(FAMILY_METHODS.get(spec["family"], DEFAULT_METHODS))
        task = {"row": spec, "methods": methods, "samples": samples, "propagation": args.propagation,
                "propagation_budget": args.propagation_budget}
        results.append((spec, in_child(task, timeout=1.5 * spec["budget"] + 300)))
        print(spec["family"], spec["net"], spec["props"], results[-1][1], flush=True)
    text = "\n".join(render(results, globals_, header) + [""] + peer_lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


def per_family_text() -> str:
    """The default method lists, in words, for the results file's header."""
    listed = "; ".join(f"{family}: {','.join(m)}" for family, m in FAMILY_METHODS.items())
    return f"{listed}; other families: the API's default set (methods=None)"


def git_rev() -> str:
    proc = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
