"""Training throughput of U-Net configs on MNIST-sized inputs, against the reference MNIST CFG script
timed in the same run (speed figures are only meaningful as ratios: machines differ and are shared).

One training step as the trainer runs it: ``lam ~`` the CFG paper's schedule, ``z = alpha x + sigma
eps``, 10 % null labels, eps-MSE, backward, ``AdamW(foreach=True)`` step; fp32, 2 threads. Each
(config, batch size, memory format) is timed once per round, round-robin, and the median over rounds
is reported, so that load from other processes hits every candidate alike; the baseline runs before
and after the rounds and its two figures are averaged.

    python benchmarks/bench_nets.py                 # ~4 minutes on a 2-core CPU
    python benchmarks/bench_nets.py --rounds 2 --baseline-seconds 10 --only small   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffguide.nets import UNet, unet_config
from diffguide.schedule import ContinuousSchedule, alpha_sigma

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT.parent / "shared" / "baselines" / "mnist_cfg_baseline.py"
RESULTS = ROOT / "benchmarks" / "results" / "nets_throughput.json"
K = 10

# Overrides of the `small` preset (the preset itself is timed as "small").
CANDIDATES: dict[str, dict[str, Any]] = {
    "small": {},
    "c24-48-96": dict(channels=(24, 48, 96), attn_levels=(2,)),
    "c16-32-64-128": dict(channels=(16, 32, 64, 128), attn_levels=(2, 3)),
    "c16-32-64-128-b2": dict(channels=(16, 32, 64, 128), attn_levels=(2, 3), blocks_per_level=2),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def run_baseline(seconds: float, threads: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(BASELINE), "--seconds", str(seconds), "--sample-steps", "2",
                          "--threads", str(threads)], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fwd_gflops(net: UNet) -> float:
    S, C = net.config.image_size, net.config.in_channels
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(torch.zeros(1, C, S, S), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    return fc.get_total_flops() / 1e9


def make_step(net: UNet, B: int, channels_last: bool, seed: int = 0) -> Callable[[], None]:
    """One trainer-like step on fixed random MNIST-shaped data in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 28, 28, generator=g) * 2 - 1
    c = torch.randint(0, K, (B,), generator=g)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=True)
    sched = ContinuousSchedule()

    def step() -> None:
        lam = sched.sample_lam(B, generator=g)
        alpha, sigma = alpha_sigma(lam)
        eps = torch.randn(x.shape, generator=g)
        z = alpha[:, None, None, None] * x + sigma[:, None, None, None] * eps  # CFG paper Alg. 1
        if channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        c_in = torch.where(torch.rand(B, generator=g) < 0.1, K, c)  # label dropout, p_uncond = 0.1
        loss = (net(z, lam, c_in) - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def sample_forward_s(net: UNet, B: int = 200, reps: int = 3) -> float:
    """Seconds of one no-grad forward at batch 200 (a CFG step for 100 images), median."""
    z, lam = torch.randn(B, 1, 28, 28), torch.zeros(B)
    c = torch.arange(B) % (K + 1)
    net.eval()
    ts = []
    with torch.no_grad():
        net(z, lam, c)
        for _ in range(reps):
            t0 = time.perf_counter()
            net(z, lam, c)
            ts.append(time.perf_counter() - t0)
    net.train()
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="timed steps per (config, batch, format); median")
    ap.add_argument("--batches", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--baseline-seconds", type=float, default=20, help="per baseline run (two runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="+", default=None, help="candidate names to time")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cands = {k: v for k, v in CANDIDATES.items() if a.only is None or k in a.only}
    t_start = time.perf_counter()

    base = [run_baseline(a.baseline_seconds, a.threads)]
    print("baseline", base[0], flush=True)

    combos: dict[tuple[str, int, bool], Callable[[], None]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name, ov in cands.items():
        for B in a.batches:
            for cl in (False, True):
                torch.manual_seed(0)
                net = UNet(unet_config("small", in_channels=1, image_size=28, num_classes=K, **ov))
                if name not in info:
                    info[name] = dict(config=dataclasses.asdict(net.config),
                                      params=sum(p.numel() for p in net.parameters()),
                                      fwd_gflops_per_image=round(fwd_gflops(net), 4),
                                      sample_forward_s_b200=round(sample_forward_s(net), 4))
                combos[name, B, cl] = make_step(net, B, cl)
    for step in combos.values():  # warm-up, not timed
        step()
    times: dict[tuple[str, int, bool], list[float]] = {k: [] for k in combos}
    for r in range(a.rounds):
        for key, step in combos.items():
            t0 = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - t0)
        print(f"round {r + 1}/{a.rounds} done", flush=True)

    base.append(run_baseline(a.baseline_seconds, a.threads))
    print("baseline", base[1], flush=True)
    base_ips = statistics.mean(b["train_images_per_s"] for b in base)
    base_sample_step = statistics.mean(b["sample_seconds_per_100"] for b in base) / 400  # s per CFG forward

    for (name, B, cl), ts in times.items():
        ips = B / statistics.median(ts)
        info[name].setdefault("train", {})[f"b{B}_{'channels_last' if cl else 'contiguous'}"] = dict(
            images_per_s=round(ips, 1), ratio_vs_baseline=round(ips / base_ips, 2))
    for v in info.values():
        v["sample_forward_ratio_vs_baseline"] = round(base_sample_step / v["sample_forward_s_b200"], 2)

    result = dict(cpu=cpu_model(), threads=a.threads, torch=torch.__version__, rounds=a.rounds,
                  baseline=dict(runs=base, train_images_per_s=round(base_ips, 2),
                                sample_forward_s_b200=round(base_sample_step, 4)),
                  candidates=info, wall_s=round(time.perf_counter() - t_start, 1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{result['cpu']}, {a.threads} threads; baseline {base_ips:.1f} img/s "
          f"(runs: {[b['train_images_per_s'] for b in base]})")
    for name, v in info.items():
        rows = ", ".join(f"{k} {t['images_per_s']} ({t['ratio_vs_baseline']}x)" for k, t in v["train"].items())
        print(f"{name:18s} {v['params'] / 1e6:.2f}M {v['fwd_gflops_per_image']:.3f} GF | {rows} | "
              f"sample fwd {v['sample_forward_ratio_vs_baseline']}x")
    print(f"wrote {a.out} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
