"""Local bounds on L2 balls around the 10 MNIST centres: lipbound against ECLipsE-Gen-Local.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/local_peer.py [--peer-only] [--nets 256x2,256x6]

The peer is ``eclipse_nn.local_lipschitz.get_lip_estimates(weights, center, epsilon, actv='relu',
biases=..., algo='Acc')`` from the PyPI package ``eclipse-nn`` (ECLipsE-Gen-Local), installed by
``benchmarks/peers.py``'s installer into ``benchmarks/.peers`` with ``--no-deps``. It takes the
weight matrices and biases of a ReLU MLP, a centre and an L2 radius ``epsilon``, and returns a bound
of the Lipschitz constant (L2 -> L2) on that ball; each ``Acc`` layer solves an SDP with SCS, so
its numbers are cached in ``benchmarks/results/local_peer.json`` (a rerun computes only the balls
that are missing).

Centres: the MNIST test images of ``mnistfc_prop_{i}_0.03.vnnlib``, recovered from the box
``[max(0, x - eps), min(1, x + eps)]`` by this file's own reader (independent of lipbound's), and
checked against the 0.05 file. Radii: ``eps * sqrt(784)`` for eps in {0.03, 0.05} (the L2 ball
holding the L-infinity box) and 0.1, 0.5, 1.0.

Soundness of both sides is checked the same way (:func:`local.jacobian_norms`): dense float64
Jacobians at points sampled in the ball; a sampled norm above a claimed bound is a violation.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REALNETS = HERE.parent.parent / "shared" / "realnets"
VNNLIB = REALNETS / "vnnlib"
CACHE = HERE / "results" / "local_peer.json"
NETS = ("256x2", "256x6")
RADII = (0.1, 0.5, 1.0, 0.03 * 28.0, 0.05 * 28.0)
_BOUND = re.compile(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)")


def read_box(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(low, high)`` (float64, flat) of a VNN-LIB file made only of ``(assert (<= X_i v))`` and
    ``(assert (>= X_i v))`` input bounds (a reader of its own, so that it checks lipbound's)."""
    low, high = {}, {}
    for op, i, v in _BOUND.findall(path.read_text()):
        (high if op == "<=" else low)[int(i)] = float(v)
    n = max(low) + 1
    if sorted(low) != list(range(n)) or sorted(high) != list(range(n)):
        raise ValueError(f"{path.name}: not a plain input box")
    return (torch.tensor([low[i] for i in range(n)], dtype=torch.float64),
            torch.tensor([high[i] for i in range(n)], dtype=torch.float64))


def mnist_centre(i: int) -> torch.Tensor:
    """The MNIST test image of property ``i`` (784 pixels in [0, 1]), from its 0.03 box and checked
    against its 0.05 box."""
    images = []
    for eps in (0.03, 0.05):
        low, high = read_box(VNNLIB / f"mnistfc_prop_{i}_{eps}.vnnlib")
        images.append(torch.where(low <= 0, high - eps, torch.where(high >= 1, low + eps, (low + high) / 2)))
    if not torch.allclose(images[0], images[1], atol=1e-6):
        raise ValueError(f"mnistfc_prop_{i}: the 0.03 and 0.05 boxes disagree on the image")
    return images[0].clamp(0, 1)


def mlp_layers(graph) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Weights and biases (float64) of a graph that is affine, ReLU, affine, ..., affine."""
    fused = graph.fused()
    nodes = [n for n in fused if n.kind != "input"]
    kinds = [n.kind for n in nodes]
    if kinds != ["affine", "activation"] * (len(nodes) // 2) + ["affine"]:
        raise ValueError(f"{graph.name} is not a plain MLP: {kinds}")
    affine = [n for n in nodes if n.kind == "affine"]
    return [n.op.to_dense().double().reshape(n.shape[0], -1) for n in affine], [n.bias.double() for n in affine]


def peer_bound(graph, centre: torch.Tensor, radius: float) -> dict:
    """ECLipsE-Gen-Local ('Acc') on the L2 ball; its progress prints are swallowed."""
    sys.path.insert(0, str(HERE / ".peers"))
    from eclipse_nn.local_lipschitz import get_lip_estimates

    weights, biases = mlp_layers(graph)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        value, _, ext = get_lip_estimates(weights, centre.reshape(-1), radius, actv="relu", biases=biases, algo="Acc")
    return {"value": None if ext != 0 or not math.isfinite(value) else float(value), "exit": int(ext),
            "seconds": time.perf_counter() - t0}


def balls(nets=NETS) -> list[tuple[str, int, float]]:
    """Every (net, centre index, radius), small radii first (the peer is fastest there)."""
    return [(net, i, r) for r in RADII for net in nets for i in range(10)]


def key(net: str, i: int, r: float) -> str:
    return f"mnistfc_{net}|{i}|{r:.6g}"


def load_cache() -> dict:
    return json.loads(CACHE.read_text()) if CACHE.exists() else {}


def fill_peer_cache(nets=NETS, samples: int = 32, deadline: float = math.inf) -> dict:
    """Compute the peer on every ball missing from the cache (saved after each ball), with the
    largest sampled Jacobian norm in the ball as its soundness check."""
    import lipbound
    from local import jacobian_norms, sample_ball

    cache = load_cache()
    graphs = {}
    for net, i, r in balls(nets):
        if key(net, i, r) in cache or time.perf_counter() > deadline:
            continue
        graph = graphs.setdefault(net, lipbound.load(REALNETS / f"mnistfc_{net}.onnx"))
        centre = mnist_centre(i).reshape(graph.input_shape)
        out = peer_bound(graph, centre, r)
        gen = torch.Generator().manual_seed(i)
        out["sampled"] = float(jacobian_norms(graph, sample_ball(centre, r, samples, gen)).max())
        out["where"] = "here"
        cache = load_cache()  # another run may have added balls meanwhile
        cache[key(net, i, r)] = out
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache, indent=1, sort_keys=True))
        print(key(net, i, r), out, flush=True)
    return cache



def our_balls(net: str, items: list, budget: float, samples: int) -> dict:
    """Our certified bound (``best``, ``domain=lipbound.Ball(c, r, 2)``) on each ball, with the
    same independent soundness check as every row of ``local.py``; in one process per network."""
    import lipbound
    from local import estimate_bracket, soundness

    graph = lipbound.load(REALNETS / f"mnistfc_{net}.onnx")
    out = {}
    for i, r in items:
        centre = mnist_centre(i).reshape(graph.input_shape)
        try:
            report, seconds = estimate_bracket(lipbound, graph, ["best"], budget, lipbound.Ball(centre, r, norm=2))
            check = soundness(graph, lipbound.Ball(centre, r, norm=2), report.upper, [], samples, seed=i)
            out[key(net, i, r)] = {"upper": report.upper, "seconds": seconds, "flags": check["flags"]}
        except Exception as exc:  # one ball's failure is reported in its row
            out[key(net, i, r)] = {"crash": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
    return out


CERTIFY_BUDGET = 15.0  # seconds of the local radius search per centre


def certify_radii(net: str, upper: float) -> dict:
    """At the 10 centres: the certified L2 radius from the global bound ``upper`` and the local one
    (``lipbound.certify(..., local=True)``, SKIP while that signature does not exist)."""
    import lipbound

    graph = lipbound.load(REALNETS / f"mnistfc_{net}.onnx")
    x = torch.stack([mnist_centre(i).reshape(graph.input_shape) for i in range(10)])
    glob = lipbound.certify(graph, x, upper=upper, pair_constants=False).radius.tolist()  # margin / (sqrt(2) U)
    try:
        local = lipbound.certify(graph, x, input_shape=graph.input_shape, local=True,
                                 time_budget=CERTIFY_BUDGET).radius.tolist()
    except TypeError as exc:
        return {"global": glob, "skip": f"certify(..., local=True) is not available: {exc}"[:160]}
    return {"global": glob, "local": local}


def peer_verdict(ratios: list[float], n_done: int, why: str | None) -> str:
    """The summary line: ours <= peer on >= 95% of the balls and peer/ours >= 2 in the median, over
    all the balls (a ball without both numbers fails it)."""
    head = f"Balls with the peer's number: {n_done} of {len(balls())}. "
    if not ratios:
        return head + f"Ours: not measured ({why or 'no ball ran'}): FAIL."
    below = sum(x <= 1 for x in ratios)
    gain = statistics.median(1 / x for x in ratios)
    ok = below >= 0.95 * len(balls()) and gain >= 2
    return head + (f"Ours <= peer on {below}/{len(ratios)} measured balls (target >= 95% of all {len(balls())}); "
                   f"median peer/ours {gain:.3g} (target >= 2): {'PASS' if ok else 'FAIL'}.")


def section(quick: bool) -> list[str]:
    """The markdown of the peer comparison and the local-certify row (from the peer cache; ours is
    computed here, one subprocess per network)."""
    from local import fmt, in_child, missing_api

    cache = load_cache()
    lines = ["## Against ECLipsE-Gen-Local on L2 balls around the 10 MNIST centres", "",
             "Peer: `eclipse_nn.local_lipschitz.get_lip_estimates(..., algo='Acc')` (eclipse-nn, SCS), cached in "
             "`benchmarks/results/local_peer.json`; `sampled` = largest float64 Jacobian norm at 32 points of the "
             "ball (a lower bound of the local constant: a peer value below it is unsound). Target: ours <= peer "
             "on >= 95% of the balls and peer/ours >= 2 in the median. `where`: `here` = one process on this machine "
             "(2 cores shared with other jobs); `device` = 16 processes sharing one core of the device machine "
             "(their seconds are inflated accordingly).", ""]
    why = missing_api()
    ours: dict = {}
    done = [(n, i, r) for n, i, r in balls() if key(n, i, r) in cache]
    if quick:
        done = done[:2]
    if why is None:
        for net in NETS:
            items = [[i, r] for n, i, r in done if n == net]
            if items:
                ours.update(in_child({"balls": net, "items": items, "budget": 10.0 if quick else 30.0,
                                      "samples": 16}, timeout=60 * len(items) + 300))
    lines += ["| network | centre | radius | peer | peer s | where | sampled | ours | ours/peer | check |",
              "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    ratios = []
    for net, i, r in done:
        p, o = cache[key(net, i, r)], ours.get(key(net, i, r), {})
        notes = ([o["crash"]] if "crash" in o else o.get("flags", [])) + (
            ["peer below sampled: unsound"] if p["value"] is not None and p["sampled"] > p["value"] * (1 + 1e-9) else [])
        ratio = o["upper"] / p["value"] if "upper" in o and p["value"] else None
        if ratio is not None:
            ratios.append(ratio)
        check = "; ".join(notes) or ("ok" if o else "ours not run")
        lines.append(f"| {net} | {i} | {r:.4g} | {fmt(p['value'])} | {p['seconds']:.0f} | {p.get('where', '-')} "
                     f"| {fmt(p['sampled'])} | {fmt(o.get('upper'))} | {fmt(ratio, '.3g')} | {check} |")
    lines += ["", peer_verdict(ratios, len(done), why)]
    return lines + [""] + certify_section(quick)


def certify_section(quick: bool) -> list[str]:
    """The local-certify row: median certified radii at the 10 centres, global against local."""
    from local import fmt, globals_for, in_child

    lines = ["## Local certify (mnistfc, 10 centres)", "",
             "Certified L2 radius at each centre: from the global bound (`certify(graph, x, upper=global best)`) and "
             "from `certify(graph, x, input_shape, local=True)`. Target: local/global >= 5 in the median.", "",
             "| network | median global radius | median local radius | median local/global | result |",
             "|---|---:|---:|---:|---|"]
    for net, g in globals_for([f"mnistfc_{n}" for n in NETS], 20.0 if quick else 120.0).items():
        c = in_child({"certify": net.split("_")[1], "upper": g.get("upper")}, timeout=900) if "upper" in g else g
        if "crash" in c or "skip" in c:
            lines.append(f"| {net} | {fmt(statistics.median(c['global'])) if 'global' in c else '-'} | - | - "
                         f"| {'SKIP' if 'skip' in c else 'CRASH'}: {c.get('skip') or c.get('crash')} |")
            continue
        rel = statistics.median(lo / gl for lo, gl in zip(c["local"], c["global"]) if gl > 0)
        lines.append(f"| {net} | {fmt(statistics.median(c['global']))} | {fmt(statistics.median(c['local']))} "
                     f"| {rel:.3g} | {'PASS' if rel >= 5 else 'FAIL'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of 256x2,256x6")
    ap.add_argument("--peer-minutes", type=float, default=math.inf, help="stop starting peer balls after this")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from peers import install_peer

    print(install_peer(), flush=True)
    fill_peer_cache(args.nets.split(","), deadline=time.perf_counter() + 60 * args.peer_minutes)


if __name__ == "__main__":
    main()
