"""Guided / unguided sampling time at equal steps, measured in interleaved pairs (shipped MNIST model).

    python benchmarks/bench_guidance_ratio.py
    -> benchmarks/results/guidance_ratio.{json,md}

CFG (w = 1) runs the conditional and the null-label pass as one batched forward of 2B rows; the
unguided sampler (w = 0) runs B rows. Each pair times both, DDIM 50 steps, same seeds, in
alternating order (guided first, then unguided first) so drift on a shared machine cancels; the
figure is the median of the pairs' ratios. Also times one guided eps call against two unguided
calls, interleaved 20 times (the forward alone, without the sampler around it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import diffguide as dg
from diffguide.api import default_max_batch
from diffguide.guidance import guided

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, cpu_info  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default="100:4,500:2", help="batch:pairs, comma-separated")
    a = ap.parse_args()
    model = dg.load("mnist")

    def run(n: int, w: float) -> float:
        labels = torch.arange(n) % 10
        t0 = time.perf_counter()
        model.sample(labels, w, sampler="ddim", steps=50, seed=0, batch_size=n)
        return time.perf_counter() - t0

    run(20, 1.0)  # warm-up
    rows = []
    for item in a.pairs.split(","):
        n, pairs = (int(x) for x in item.split(":"))
        ratios = []
        for k in range(pairs):
            if k % 2 == 0:
                tg = run(n, 1.0)
                tu = run(n, 0.0)
            else:
                tu = run(n, 0.0)
                tg = run(n, 1.0)
            ratios.append(tg / tu)
            print(json.dumps({"batch": n, "guided_s": round(tg, 2), "unguided_s": round(tu, 2),
                              "ratio": round(tg / tu, 3)}), flush=True)
        rows.append({"batch": n, "pairs": pairs, "ratios": [round(r, 3) for r in ratios],
                     "median_ratio": round(statistics.median(ratios), 3)})
    # the eps call alone: one guided call (2B rows) vs two unguided calls (B rows each), interleaved
    calls = {}
    for n in (100, 500):
        z, lam, c = torch.randn(n, 1, 28, 28), torch.zeros(n), torch.arange(n) % 10
        mb = default_max_batch(z.device)
        g, u = guided(model.net, c, 1.0, max_batch=mb), guided(model.net, c, 0.0, max_batch=mb)
        tg = tu = 0.0
        with torch.no_grad():
            g(z, lam), u(z, lam)
            for _ in range(20 if n == 100 else 6):
                t0 = time.perf_counter()
                g(z, lam)
                t1 = time.perf_counter()
                u(z, lam)
                u(z, lam)
                tg, tu = tg + t1 - t0, tu + time.perf_counter() - t1
        calls[n] = round(tg / tu, 3)
    cmd = "python " + " ".join(["benchmarks/bench_guidance_ratio.py", *sys.argv[1:]])
    result = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(),
              "threads": torch.get_num_threads(), "sampling": rows,
              "guided_call_over_two_unguided_calls": calls}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guidance_ratio.json").write_text(json.dumps(result, indent=2))
    md = ["# Guided / unguided sampling time (CFG w = 1 vs w = 0, DDIM 50, shipped MNIST model)", "",
          f"Command: `{cmd}`  ", f"CPU: {result['cpu']['model']} (flags: "
          f"{', '.join(result['cpu']['flags']) or 'no avx512/bf16/amx'}; all lscpu flags in the JSON), "
          f"{result['threads']} threads, torch {torch.__version__}, {result['date']}", "",
          "| batch | pairs (alternating order) | ratio per pair | median |", "|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['pairs']} | {', '.join(str(x) for x in r['ratios'])} | **{r['median_ratio']}** |"
           for r in rows]
    md += ["", "One guided eps call (one batched forward over 2B rows) against two unguided calls (B rows "
               "each), interleaved: " + ", ".join(f"batch {n}: {v}" for n, v in calls.items()) + "."]
    (RESULTS / "guidance_ratio.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
