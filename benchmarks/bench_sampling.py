"""Guided sampling speed of a diffusion model (default: the shipped MNIST one), side by side with the
reference script's sampler in the same run.

    python benchmarks/bench_sampling.py [--model PATH]
    -> benchmarks/results/sampling_speed.{json,md}

Measures, in one run, one thing after another on a quiet machine:
1. the network forward's cost per row against the number of rows per forward (why CPU forwards are
   chunked into ``CPU_MAX_BATCH`` rows);
2. DDIM 50-step CFG (w = 1) and unguided (w = 0) sampling at batch 20, 100 and 500 in fp32: images/s
   and the guided / unguided time ratio (batch 20 and 100: best of 3 alternating runs each);
3. the same at batch 100 and 500 in bf16 autocast, timed over a few steps and extrapolated to 50
   (bf16 is slow on CPUs without native bf16; stated in the table);
4. the time to 500 CFG samples at w = 1 (DDIM 50, and DDIM 25) and their class accuracy under the
   shipped independent evaluator;
5. how far bf16 samples move with the batching (fp32 ones are bit-identical, tests/test_api.py) and
   how far they are from fp32;
6. the reference script's ``sample_seconds_per_100`` (its 400-step CFG DDPM sampler) -> the speed-up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import diffguide as dg
from diffguide.api import CPU_MAX_BATCH
from diffguide.metrics import class_accuracy, extract, load_evaluator

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import BASELINE, RESULTS, ROOT, cpu_info  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def forward_ms_per_row(net: torch.nn.Module, rows: int, seconds: float = 3.0) -> float:
    z, lam = torch.randn(rows, 1, 28, 28), torch.zeros(rows)
    c = torch.arange(rows) % 10
    with torch.no_grad():
        net(z, lam, c)
        t0, n = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            net(z, lam, c)
            n += rows
    return (time.perf_counter() - t0) / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mnist",
                    help="'mnist' (shipped) or an exported .safetensors / run dir of a 1x28x28, 10-class model "
                    "(the accuracy is scored by the MNIST evaluator)")
    ap.add_argument("--out", default="sampling_speed", help="result file stem in benchmarks/results/")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = dg.load(a.model)

    def run(n: int, w: float, steps: int, precision: str = "fp32", **kw: object) -> tuple[torch.Tensor, float]:
        labels = torch.arange(10).repeat_interleave(max(1, n // 10))[:n]
        return timed(lambda: model.sample(labels, w, sampler="ddim", steps=steps, seed=0, batch_size=n,
                                          precision=precision, **kw))

    chunk = {r: round(forward_ms_per_row(model.net, r), 3) for r in (16, 32, 64, 128, 256, 512, 1000)}
    print("forward ms/row by rows per forward:", chunk, flush=True)
    run(10, 1.0, 2)  # warm-up
    rows = []
    for n in (20, 100, 500):
        # guided and unguided alternate; the best of `repeats` runs each (a shared machine only adds time)
        t_g = t_u = float("inf")
        for _ in range(3 if n < 500 else 1):
            x_g, t = run(n, 1.0, 50)
            t_g = min(t_g, t)
            t_u = min(t_u, run(n, 0.0, 50)[1])
        rows.append({"batch": n, "precision": "fp32", "steps": 50, "guided_s": round(t_g, 2),
                     "unguided_s": round(t_u, 2), "guided_images_per_s": round(n / t_g, 2),
                     "guided_over_unguided": round(t_g / t_u, 3), "repeats": 3 if n < 500 else 1})
        print(json.dumps(rows[-1]), flush=True)
        if n == 500:
            samples_500, t_500 = x_g, t_g
    bf16_steps = 2
    for n in (100, 500):
        _, tb = run(n, 1.0, bf16_steps, "bf16")
        t50 = tb * 50 / bf16_steps
        rows.append({"batch": n, "precision": f"bf16 ({bf16_steps} steps, x50/{bf16_steps})", "steps": 50,
                     "guided_s": round(t50, 2), "guided_images_per_s": round(n / t50, 2)})
        print(json.dumps(rows[-1]), flush=True)
    samples_25, t_25 = run(500, 1.0, 25)
    ev = load_evaluator()
    want = torch.arange(10).repeat_interleave(50)
    acc = class_accuracy(torch.from_numpy(extract(ev, samples_500, output="probs")), want)
    acc_25 = class_accuracy(torch.from_numpy(extract(ev, samples_25, output="probs")), want)
    # bf16: the same 16 samples (10 steps) at other batchings, and against fp32
    lab16 = torch.arange(16) % 10
    kw16 = dict(sampler="ddim", steps=10, seed=0)
    ref = model.sample(lab16, 1.0, batch_size=16, precision="bf16", **kw16)
    moved = max((model.sample(lab16, 1.0, batch_size=b, max_batch=m, precision="bf16", **kw16) - ref)
                .abs().max().item() for b, m in ((5, "auto"), (16, 8), (3, None)))
    vs_fp32 = (model.sample(lab16, 1.0, batch_size=16, **kw16) - ref).abs().max().item()
    base = json.loads(subprocess.run([sys.executable, str(BASELINE), "--seconds", "5", "--sample-steps", "5"],
                                     capture_output=True, text=True, cwd=ROOT, check=True).stdout.splitlines()[-1])
    base_500 = base["sample_seconds_per_100"] * 5
    cmd = "python " + " ".join(["benchmarks/bench_sampling.py", *sys.argv[1:]])
    result = {"command": cmd, "model": a.model, "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(),
              "threads": torch.get_num_threads(), "cpu_max_batch": CPU_MAX_BATCH,
              "forward_ms_per_row_by_rows": chunk, "rows": rows,
              "cfg_500_w1_seconds": round(t_500, 1), "cfg_500_w1_class_accuracy": round(acc, 4),
              "cfg_500_w1_ddim25_seconds": round(t_25, 1), "cfg_500_w1_ddim25_class_accuracy": round(acc_25, 4),
              "bf16_max_abs_change_with_batching": moved, "bf16_max_abs_diff_vs_fp32": vs_fp32,
              "baseline": base, "baseline_500_seconds": round(base_500, 1),
              "speedup_vs_baseline_500": round(base_500 / t_500, 1),
              "speedup_vs_baseline_500_ddim25": round(base_500 / t_25, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{a.out}.json").write_text(json.dumps(result, indent=2))
    md = [f"# Guided sampling speed ({a.model}, DDIM, CFG w = 1)", "",
          f"Command: `{cmd}`  ", f"CPU: {result['cpu']['model']} (flags: "
          f"{', '.join(result['cpu']['flags']) or 'no avx512/bf16/amx'}; all lscpu flags in the JSON), "
          f"{result['threads']} threads, torch {torch.__version__}, {result['date']}", "",
          "Network forward, ms per row, by rows per forward (CPU forwards are cut into chunks of "
          f"{CPU_MAX_BATCH} rows by default):", "",
          "| rows | " + " | ".join(str(r) for r in chunk) + " |", "|---" * (len(chunk) + 1) + "|",
          "| ms/row | " + " | ".join(str(v) for v in chunk.values()) + " |", "",
          "| batch | precision | guided time (s, 50 steps) | images/s | guided / unguided |", "|---|---|---|---|---|"]
    md_note = "Batch 20 and 100: best of 3 runs each (guided, unguided, guided, ...); batch 500: one run each."
    md += [f"| {r['batch']} | {r['precision']} | {r['guided_s']} | {r['guided_images_per_s']} | "
           f"{r.get('guided_over_unguided', '')} |" for r in rows]
    md += ["", md_note, "", f"500 CFG samples at w = 1, DDIM 50: **{result['cfg_500_w1_seconds']} s**, class accuracy "
               f"{acc:.3f}; DDIM 25: {result['cfg_500_w1_ddim25_seconds']} s, class accuracy {acc_25:.3f} "
               "(shipped independent evaluator; real MNIST test digits score 0.994).  ",
           f"Reference script (400-step DDPM, CFG; its own figure, extrapolated from 5 timed steps): "
           f"{base['sample_seconds_per_100']} s per 100 → {result['baseline_500_seconds']} s per 500.  ",
           f"Speed-up for 500 samples: **{result['speedup_vs_baseline_500']}×** at DDIM 50, "
           f"{result['speedup_vs_baseline_500_ddim25']}× at DDIM 25 (target ≥ 20×).", "",
           f"bf16 autocast: the same 16 samples (DDIM 10, w = 1) move by at most {moved:.2e} (pixels in "
           f"[-1, 1]) across batch sizes 16, 5, 3 and forward chunks of 8 rows, and differ from fp32 by up "
           f"to {vs_fp32:.2e}. fp32 samples are bit-identical across batchings (tests/test_api.py)."]
    (RESULTS / f"{a.out}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
