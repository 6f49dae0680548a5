"""The small search that chose the parameters of benchmarks/guidance_methods.py (interval bounds, APG's r).

    python benchmarks/guidance_pilot.py [--n 500]
    -> benchmarks/results/guidance_methods/pilot.md

Each candidate at one strong weight (w = 3, where plain CFG is at class accuracy ~1 and its FID has
risen well past its minimum) and one moderate weight, n samples each, DDIM 25, the same seeds; the
chosen ones are those with the lowest FID at accuracy >= plain CFG's at the same w. A pilot of
n = 500 separates large effects only (FID's sampling noise at n = 500 is a few tenths).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, ROOT, cpu_info  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.experiments.sweep import Setting, markdown_table, run_sweep  # noqa: E402
from diffguide.guidance import GuidanceSpec  # noqa: E402

CANDIDATES = [
    GuidanceSpec(),
    GuidanceSpec.method("interval"),                     # the paper's sigma 0.28 ... 1.61
    GuidanceSpec(interval=(-math.inf, -1.0)),            # the noisy end only
    GuidanceSpec(interval=(-6.0, 0.0)),
    GuidanceSpec(interval=(-3.5, 1.0)),
    GuidanceSpec(rule="apg", r=1.0),
    GuidanceSpec(rule="apg", r=2.0),
    GuidanceSpec(rule="apg", r=5.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--w", default="1,3")
    a = ap.parse_args()
    ws = [float(w) for w in a.w.split(",")]
    pipe = dg.load("mnist")
    t0 = time.time()
    settings = [Setting(w, guidance=spec) for spec in CANDIDATES for w in ws]
    rows = run_sweep(pipe, settings, n=a.n, sampler="ddim", steps=25, seed=0, out=ROOT / "out" / "guidance_pilot",
                     plot=False)
    cmd = "python " + " ".join(["benchmarks/guidance_pilot.py", *sys.argv[1:]])
    dest = RESULTS / "guidance_methods"
    dest.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    md = ["# Pilot: choosing the interval and APG's r", "", f"Command: `{cmd}` ({time.strftime('%Y-%m-%d')}, "
          f"{cpu.get('model', '')}, {time.time() - t0:.0f} s)  ",
          f"{a.n} samples per setting, DDIM 25, fp32, same seeds; independent MNIST evaluator.", "",
          markdown_table(rows)]
    (dest / "pilot.md").write_text("\n".join(md))
    print(dest / "pilot.md")


if __name__ == "__main__":
    main()
