"""Training throughput of a preset, end to end (data, noise, forward, backward, AdamW, EMA, logging),
fp32 vs bf16 autocast, side by side with the reference MNIST CFG script in the same run.

    python benchmarks/bench_train.py --seconds 60 --batch-sizes 64,128
    -> benchmarks/results/train_throughput.{json,md}

Each measurement runs in its own process (clean peak memory, no cross-talk), one after another.
The first 5 steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BASELINE = ROOT.parent / "shared" / "baselines" / "mnist_cfg_baseline.py"


def cpu_info() -> dict[str, object]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = re.search(r"Model name:\s*(.+)", out)
    flags = re.search(r"Flags:\s*(.+)", out)
    fl = set(flags.group(1).split()) if flags else set()
    return {"model": model.group(1).strip() if model else platform.processor(),
            "flags": sorted(f for f in fl if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
            "lscpu_flags": " ".join(sorted(fl))}


def worker(preset: str, batch: int, precision: str, seconds: float, overrides: str) -> None:
    """Runs in a subprocess: time the real trainer's steps for `seconds`, print one JSON line."""
    import torch

    from diffguide.training.config import TrainConfig
    from diffguide.training.trainer import train

    times: list[float] = []

    def on_step(step: int, loss: float) -> None:
        times.append(time.perf_counter())
        if step > 5 and times[-1] - times[5] > seconds:
            raise StopIteration

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=tmp + "/run", preset=preset, batch_size=batch, steps=10**6, precision=precision,
                          device="cpu", log_every=50, ckpt_every=10**6, net=json.loads(overrides))
        try:
            train(cfg, progress=False, on_step=on_step)
        except StopIteration:
            pass
    n = len(times) - 6
    ips = n * batch / (times[-1] - times[5])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"preset": preset, "batch": batch, "precision": precision, "steps_timed": n,
                      "images_per_s": round(ips, 2), "peak_rss_mb": round(peak_mb),
                      "threads": torch.get_num_threads()}))


PHASES = ("data", "forward+loss", "backward", "clip+optimizer", "ema")


def profile_worker(preset: str, batch: int, precision: str, steps: int, overrides: str) -> None:
    """Runs in a subprocess: torch.profiler over `steps` training steps (after 5 of warm-up); prints
    the share of step time per phase (the trainer's record_function regions) and the top operators."""
    import tempfile

    import torch
    from torch.profiler import ProfilerActivity, profile

    from diffguide.training.config import TrainConfig
    from diffguide.training.trainer import train

    prof = profile(activities=[ProfilerActivity.CPU])
    times: list[float] = []

    def on_step(step: int, loss: float) -> None:
        times.append(time.perf_counter())
        if step == 5:
            prof.start()
        if step == 5 + steps:
            prof.stop()
            raise StopIteration

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=tmp + "/run", preset=preset, batch_size=batch, steps=10**6, precision=precision,
                          device="cpu", log_every=10**6, ckpt_every=10**6, net=json.loads(overrides))
        try:
            train(cfg, progress=False, on_step=on_step)
        except StopIteration:
            pass
    events = prof.key_averages()
    wall_ms = (times[-1] - times[4]) * 1000 / steps
    phase_ms = {e.key: e.cpu_time_total / 1000 / steps for e in events if e.key in PHASES}
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: e.self_cpu_time_total,
                 reverse=True)
    total_self = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::"))
    print(json.dumps({"preset": preset, "batch": batch, "precision": precision, "steps_profiled": steps,
                      "step_ms": round(wall_ms, 1),
                      "phases_ms": {k: round(phase_ms.get(k, 0.0), 1) for k in PHASES},
                      "top_ops": [{"op": e.key, "self_share": round(e.self_cpu_time_total / total_self, 3)}
                                  for e in ops[:8]], "threads": torch.get_num_threads()}))


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--net", default='{"dropout": 0.0}', help="JSON overrides of the preset (as the shipped model)")
    ap.add_argument("--batch-sizes", default="64,128")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--profile-steps", type=int, default=10, help="steps to profile at the largest batch, fp32")
    ap.add_argument("--worker", nargs=4, metavar=("PRESET", "BATCH", "PRECISION", "SECONDS"))
    ap.add_argument("--profile-worker", nargs=4, metavar=("PRESET", "BATCH", "PRECISION", "STEPS"))
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), a.worker[2], float(a.worker[3]), a.net)
        return
    if a.profile_worker:
        w = a.profile_worker
        profile_worker(w[0], int(w[1]), w[2], int(w[3]), a.net)
        return
    rows = []
    base = run([sys.executable, str(BASELINE), "--seconds", str(a.seconds), "--sample-steps", "5"])
    for b in (int(x) for x in a.batch_sizes.split(",")):
        for p in a.precisions.split(","):
            r = run([sys.executable, __file__, "--net", a.net, "--worker", a.preset, str(b), p, str(a.seconds)])
            r["ratio_vs_baseline"] = round(r["images_per_s"] / base["train_images_per_s"], 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    big = max(int(x) for x in a.batch_sizes.split(","))
    prof = run([sys.executable, __file__, "--net", a.net, "--profile-worker", a.preset, str(big), "fp32",
                str(a.profile_steps)])
    print(json.dumps(prof), flush=True)
    result = {"command": "python " + " ".join(["benchmarks/bench_train.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(), "baseline": base, "rows": rows,
              "profile": prof}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Training throughput, `{a.preset}` preset, end to end", "",
             f"Command: `{result['command']}`  ", f"CPU: {result['cpu']['model']} (flags: "
             f"{', '.join(result['cpu']['flags']) or 'none of avx512/bf16/amx'}), {base['threads']} threads, "
             f"{result['date']}", "",
             f"Baseline (mnist_cfg_script, {base['params'] / 1e6:.2f} M params, fp32, batch 256): "
             f"**{base['train_images_per_s']} images/s**", "",
             "| batch | precision | images/s | × baseline | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['precision']} | {r['images_per_s']} | {r['ratio_vs_baseline']} | "
              f"{r['peak_rss_mb']} |" for r in rows]
    lines += ["", f"Where a step's time goes (batch {big}, fp32, torch.profiler over {prof['steps_profiled']} "
              f"steps; {prof['step_ms']} ms per step under the profiler):", "",
              "| phase | " + " | ".join(PHASES) + " |", "|---" * (len(PHASES) + 1) + "|",
              "| ms / step | " + " | ".join(str(prof["phases_ms"][k]) for k in PHASES) + " |", "",
              "Top operators (share of operator self time): "
              + ", ".join(f"{o['op'].removeprefix('aten::')} {o['self_share']:.0%}" for o in prof["top_ops"]) + "."]
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
