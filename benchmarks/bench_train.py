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
            "flags": sorted(f for f in fl if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})}


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
    ap.add_argument("--worker", nargs=4, metavar=("PRESET", "BATCH", "PRECISION", "SECONDS"))
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0], int(a.worker[1]), a.worker[2], float(a.worker[3]), a.net)
        return
    rows = []
    base = run([sys.executable, str(BASELINE), "--seconds", str(a.seconds), "--sample-steps", "5"])
    for b in (int(x) for x in a.batch_sizes.split(",")):
        for p in a.precisions.split(","):
            r = run([sys.executable, __file__, "--net", a.net, "--worker", a.preset, str(b), p, str(a.seconds)])
            r["ratio_vs_baseline"] = round(r["images_per_s"] / base["train_images_per_s"], 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    result = {"command": "python " + " ".join(["benchmarks/bench_train.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_info(), "baseline": base, "rows": rows}
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
    (RESULTS / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
