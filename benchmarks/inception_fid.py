"""Inception FID beside the domain FID, on the same samples of the shipped MNIST model (issue #20).

    python benchmarks/inception_fid.py [--n 2000]     # resumable: samples are cached under out/inception/
    python benchmarks/inception_fid.py --from-reward  # score the CFG samples of benchmarks/reward_guidance.py
    -> benchmarks/results/inception_fid/{results.md, results.json}

Papers report FID on Inception-v3 pool3 features (the TF 2015 graph, 299 x 299 inputs); diffguide's MNIST
default is the shipped domain evaluator's penultimate features, which know digits. This measures both on
the very same samples (CFG over w, DDIM 25 steps, fp32, labels i mod 10, per-sample seeds), each against
the MNIST test split (10k images) under its own features, so a user can compare with either convention.
It also times the one-off cost of reference statistics for the 10k test images under each feature network
(`diffguide reference-stats mnist:test --features inception --out stats.npz` does the same), in a fresh
cache, alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, ROOT, cpu_info  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.sampling import SamplingConfig  # noqa: E402

WS = (0.0, 0.3, 1.0, 3.0)
SAMPLING = SamplingConfig(sampler="ddim", steps=25)
OUT = ROOT / "out" / "inception"
CACHE = OUT / "cache"
DEST = RESULTS / "inception_fid"
CMD = "python benchmarks/inception_fid.py"


def samples(n: int) -> dict[float, torch.Tensor]:
    from safetensors.torch import load_file, save_file

    pipe = dg.load("mnist")
    labels = torch.arange(n) % 10
    OUT.mkdir(parents=True, exist_ok=True)
    got = {}
    for w in WS:
        path = OUT / f"w{w:g}-n{n}.safetensors"
        if not path.exists():
            t0 = time.time()
            x = pipe.sample(labels, w, sampling=SAMPLING)
            save_file({"x": x.contiguous()}, str(path))
            print(f"sampled w = {w:g}: {time.time() - t0:.0f} s", flush=True)
        got[w] = load_file(str(path))["x"]
    return got


def reference_timing() -> dict[str, dict[str, float]]:
    """Seconds for the 10k-image test split's statistics under each feature network, from an empty cache
    (``out/inception/cache``, which the scoring then reads; the figures are kept in ``timing.json``)."""
    import shutil

    from diffguide.experiments.sweep import feature_net
    from diffguide.metrics.reference_stats import load_reference

    done = OUT / "timing.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(CACHE, ignore_errors=True)
    out = {}
    for kind in ("mnist", "inception"):
        net = feature_net(kind, (1, 28, 28))
        t0 = time.perf_counter()
        stats = load_reference("mnist:test", net, cache_dir=CACHE)
        dt = time.perf_counter() - t0
        out[kind] = {"seconds": round(dt, 1), "images": stats.n, "images_per_s": round(stats.n / dt, 1),
                     "feature_dim": int(len(stats.mu))}
        print(f"reference statistics, {kind}: {dt:.1f} s for {stats.n} images", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out, indent=1) + "\n")
    return out


def reward_samples() -> dict[float, torch.Tensor]:
    """The CFG points of ``benchmarks/reward_guidance.py`` (500 samples each, UniPC 10 steps, fp32)."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parent))
    import reward_guidance as rg

    got = {}
    for w in rg.CFG_WS:
        path = rg.OUT / f"cfg-{w:g}.safetensors"
        if path.exists():
            got[w] = load_file(str(path))["x"]
    if not got:
        raise SystemExit(f"no CFG samples in {rg.OUT}: run python benchmarks/reward_guidance.py --phase sample")
    return got


def main() -> None:
    global SAMPLING
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--from-reward", action="store_true", help="score the reward benchmark's CFG samples")
    a = ap.parse_args()

    from diffguide.experiments.sweep import feature_net
    from diffguide.metrics import sample_metrics
    from diffguide.metrics.reference_stats import load_reference

    timing = reference_timing()
    if a.from_reward:
        import reward_guidance as rg

        xs, SAMPLING = reward_samples(), rg.SAMPLING
        a.n = len(next(iter(xs.values())))
    else:
        xs = samples(a.n)
    labels = torch.arange(a.n) % 10
    nets = {kind: feature_net(kind, (1, 28, 28)) for kind in ("mnist", "inception")}
    refs = {kind: load_reference("mnist:test", net, cache_dir=CACHE) for kind, net in nets.items()}
    rows = []
    for w, x in xs.items():
        row: dict[str, float] = {"w": w}
        for kind, net in nets.items():
            t0 = time.perf_counter()
            m = sample_metrics(net, x, refs[kind], labels if kind == "mnist" else None)
            row |= {f"{kind}_{k}": v for k, v in m.items()} | {f"{kind}_seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)

    DEST.mkdir(parents=True, exist_ok=True)
    command = f"{CMD} --from-reward" if a.from_reward else f"{CMD} --n {a.n}"
    source = "; the CFG points of benchmarks/reward_guidance.py" if a.from_reward else ""
    (DEST / "results.json").write_text(json.dumps({"command": command, "cpu": cpu_info(),
                                                   "sampling": SAMPLING.describe(), "n": a.n,
                                                   "reference_timing": timing, "rows": rows}, indent=1) + "\n")
    cpu = cpu_info()
    lines = ["# Inception FID beside the domain FID (the same samples)", "",
             f"Command: `{command}`  ",
             f"CPU: {cpu['model']}, {torch.get_num_threads()} threads, torch {torch.__version__}  ",
             f"Samples: the shipped MNIST model, CFG, {SAMPLING.describe()}, {a.n} per weight (labels i mod "
             f"10, per-sample seeds{source}). Both FIDs against the MNIST test split (10k images), each under its own "
             f"features: the shipped domain evaluator (penultimate layer) and Inception-v3 pool3 (TF 2015 graph, "
             f"uint8-quantised, resized to 299 as the TF FID does).", "",
             "| w | class accuracy | FID (domain) | KID (domain) | FID (Inception) | KID (Inception) | "
             "precision / recall (Inception) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['w']:g} | {r['mnist_accuracy']:.4f} | {r['mnist_fid']:.3f} | "
                     f"{r['mnist_kid']:.5f} ± {r['mnist_kid_std']:.5f} | {r['inception_fid']:.2f} | "
                     f"{r['inception_kid']:.5f} ± {r['inception_kid_std']:.5f} | "
                     f"{r['inception_precision']:.3f} / {r['inception_recall']:.3f} |")
    best = {k: min(rows, key=lambda r, k=k: r[f"{k}_fid"])["w"] for k in nets}
    lines += ["", f"Best w by domain FID: {best['mnist']:g}; by Inception FID: {best['inception']:g}.", "",
              "Reference statistics for the 10k MNIST test images, from an empty cache (computed once, then "
              "cached by content):", "", "| features | seconds | images/s | dimension |", "|---|---|---|---|"]
    for kind, t in timing.items():
        lines.append(f"| {kind} | {t['seconds']:.1f} | {t['images_per_s']:.1f} | {t['feature_dim']} |")
    (DEST / "results.md").write_text("\n".join(lines) + "\n")
    print((DEST / "results.md").read_text())


if __name__ == "__main__":
    main()
