"""FC-R18: lipbound's lipsdp against GLipSDP's published 20.956, on the network as trained and on
the function GLipSDP's residual LMI describes, in one run.

    .venv/bin/python benchmarks/sdp_residual.py [--budget 120] [--lower-budget 240]
    # prints the table and writes benchmarks/results/sdp_residual.md

GLipSDP (Pauli et al. 2024; ``ppauli/GLipSDP``, ``Versatility/main_18ResNet_fc.m``) describes each
block as ``res_fc2``: ``y = x + W2 ReLU(W1 x + b1) + b2`` (its ``IBP_res_fc_identity.m`` says so in
words, its LMI has one multiplier vector per block, on the inner ReLU only). The trained model
(its ``model_definitions.py``, ``FCResidualBlock``; ``examples/realnets.py`` here) applies a ReLU
after the sum: ``y = ReLU(x + W2 ReLU(W1 x + b1) + b2)``. The two are different functions, so the
script bounds both: ``lipsdp`` on FC-R18 as trained, ``lipsdp`` on the same weights without the
outer ReLUs (GLipSDP's function), and a witnessed lower bound of the trained net (``lower``,
re-checked by :func:`lipbound.witness_value`). Needs ``../shared/realnets`` (exits when absent).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REALNETS = HERE.parent.parent / "shared" / "realnets"
PUBLISHED = 20.956  # GLipSDP over the whole network, MOSEK, 70.3 s (MANIFEST.md)


class WithoutOuterReLU(torch.nn.Module):
    """The trained FC-R18's weights in GLipSDP's ``res_fc2`` blocks: ``h -> h + fc2(ReLU(fc1(h)))``."""

    def __init__(self, trained: torch.nn.Module) -> None:
        super().__init__()
        self.trained = trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.trained
        h = torch.relu(m.input_layer(torch.flatten(x, 1)))
        for block in m.blocks:
            h = h + block.fc2(torch.relu(block.fc1(h)))
        return m.output_layer(h)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="lipsdp's time budget per network (s)")
    parser.add_argument("--lower-budget", type=float, default=240.0, help="the lower bound's time budget (s)")
    args = parser.parse_args()
    if not (REALNETS / "glipsdp_FC-R18.pt").is_file():
        sys.exit(f"{REALNETS}/glipsdp_FC-R18.pt is not present")
    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE.parent / "examples"))
    import lipbound
    from lipbound.methods.lipsdp import lipsdp
    from realnets import glipsdp_fc_r18

    trained, shape = glipsdp_fc_r18(REALNETS / "glipsdp_FC-R18.pt")
    rows = []
    for name, net in (("FC-R18 as trained (ReLU after each sum)", trained),
                      ("same weights, no ReLU after the sum (GLipSDP's res_fc2)", WithoutOuterReLU(trained).eval())):
        res = lipsdp(lipbound.as_graph(net, shape), time_budget=args.budget)
        d = res.details
        rows.append((name, "lipsdp", f"{res.value:.5f}", res.kind, f"{d['sdp_lower']:.5f}", f"{res.seconds:.1f}",
                     f"{d['solver']}, {d['stopped_by']}, order {d['lmi_order']}"))
        print(rows[-1], flush=True)
    start = time.perf_counter()
    low = lipbound.lower_bound(trained, shape, seed=1, starts=128, steps=600, rounds=3, walk_rounds=60, work=4e10,
                               time_budget=args.lower_budget)
    recheck = lipbound.witness_value(trained, low.witness, shape)
    rows.append(("FC-R18 as trained (ReLU after each sum)", "lower", f"{low.value:.5f}", low.kind, "-",
                 f"{time.perf_counter() - start:.1f}", f"re-checked {recheck:.5f}, {low.details.get('stopped_by')}"))
    print(rows[-1], flush=True)
    rows.append(("same weights, no ReLU after the sum (GLipSDP's res_fc2)", "GLipSDP (published, MOSEK)",
                 f"{PUBLISHED}", "published", "-", "70.3", "ppauli/GLipSDP Versatility/main_18ResNet_fc.m"))
    table = ["| network | method | value | kind | dual bound (SDP optimum >=) | seconds | note |",
             "|---|---|---:|---|---:|---:|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
    out = HERE / "results" / "sdp_residual.md"
    text = out.read_text() if out.exists() else ""
    marker = "<!-- table -->"
    head = text.split(marker)[0] if marker in text else "# FC-R18 and GLipSDP's residual LMI\n\n"
    tail = text.split(marker)[2] if text.count(marker) >= 2 else "\n"
    out.write_text(head + marker + "\n" + "\n".join(table) + "\n" + marker + tail)
    print("\n".join(table))


if __name__ == "__main__":
    main()
