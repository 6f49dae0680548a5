"""Guided sampling speed of the shipped MNIST model, side by side with the reference script's sampler.

    python benchmarks/bench_sampling.py
    -> benchmarks/results/sampling_speed.{json,md}

Measures, in one run: DDIM 50-step CFG (w = 1) images/s at batch 100 and 500 (full runs, fp32), the
guided/unguided time ratio at equal steps, bf16 autocast per-step cost (a few steps, extrapolated:
bf16 is slow on CPUs without native bf16), the class accuracy of the 500 guided samples (shipped
evaluator), and the reference script's `sample_seconds_per_100` (its 400-step CFG DDPM sampler).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import diffguide as dg
from diffguide.metrics import class_accuracy, extract, load_evaluator

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import BASELINE, RESULTS, ROOT, cpu_info  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    torch.manual_seed(0)
    model = dg.load("mnist")
    rows = []

    def run(n: int, w: float, steps: int, autocast: torch.dtype | None = None) -> tuple[torch.Tensor, float]:
        labels = torch.arange(10).repeat_interleave(n // 10)
        return timed(lambda: model.sample(labels, w, sampler="ddim", steps=steps, seed=0, batch_size=n,
                                          autocast=autocast))

    run(10, 1.0, 2)  # warm-up
    for n in (100, 500):
        x_g, t_g = run(n, 1.0, 50)
        _, t_u = run(n, 0.0, 50)
        rows.append({"batch": n, "precision": "fp32", "steps": 50, "guided_s": round(t_g, 2),
                     "unguided_s": round(t_u, 2), "guided_images_per_s": round(n / t_g, 2),
                     "guided_over_unguided": round(t_g / t_u, 3)})
        print(json.dumps(rows[-1]), flush=True)
        if n == 500:
            samples_500, t_500 = x_g, t_g
    # bf16 autocast: time 3 steps per setting and extrapolate to 50 (stated in the table)
    for n in (100, 500):
        _, t3 = run(n, 1.0, 3, torch.bfloat16)
        rows.append({"batch": n, "precision": "bf16 (3 steps, x50/3)", "steps": 50,
                     "guided_s": round(t3 * 50 / 3, 2), "guided_images_per_s": round(n / (t3 * 50 / 3), 2)})
        print(json.dumps(rows[-1]), flush=True)
    ev = load_evaluator()
    probs = extract(ev, samples_500, output="probs")
    acc = class_accuracy(torch.from_numpy(probs), torch.arange(10).repeat_interleave(50))
    base = json.loads(subprocess.run([sys.executable, str(BASELINE), "--seconds", "5", "--sample-steps", "5"],
                                     capture_output=True, text=True, cwd=ROOT, check=True).stdout.splitlines()[-1])
    base_500 = base["sample_seconds_per_100"] * 5
    result = {"command": "python benchmarks/bench_sampling.py", "date": time.strftime("%Y-%m-%d %H:%M"),
              "cpu": cpu_info(), "threads": torch.get_num_threads(), "rows": rows,
              "cfg_500_w1_seconds": round(t_500, 1), "cfg_500_w1_class_accuracy": round(acc, 4),
              "baseline": base, "baseline_500_seconds": round(base_500, 1),
              "speedup_vs_baseline_500": round(base_500 / t_500, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sampling_speed.json").write_text(json.dumps(result, indent=2))
    md = ["# Guided sampling speed (shipped MNIST model, DDIM, CFG w = 1)", "",
          f"Command: `{result['command']}`  ", f"CPU: {result['cpu']['model']} (flags: "
          f"{', '.join(result['cpu']['flags']) or 'no avx512/bf16/amx'}), {result['threads']} threads, "
          f"{result['date']}", "",
          "| batch | precision | guided time (s, 50 steps) | images/s | guided / unguided |", "|---|---|---|---|---|"]
    md += [f"| {r['batch']} | {r['precision']} | {r['guided_s']} | {r['guided_images_per_s']} | "
           f"{r.get('guided_over_unguided', '')} |" for r in rows]
    md += ["", f"500 CFG samples at w = 1: **{result['cfg_500_w1_seconds']} s**, class accuracy "
               f"{acc:.3f} (shipped evaluator).  ",
           f"Reference script (400-step DDPM, CFG, its own figure extrapolated from 5 timed steps): "
           f"{base['sample_seconds_per_100']} s per 100 → {result['baseline_500_seconds']} s per 500.  ",
           f"Speed-up: **{result['speedup_vs_baseline_500']}×** (target ≥ 20×)."]
    (RESULTS / "sampling_speed.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
