"""The shipped noise-aware MNIST classifier: test accuracy by noise quartile, and the cost of a
classifier-guided step relative to an unguided one.

    python benchmarks/bench_classifier.py
    -> benchmarks/results/classifier.{json,md}

Quartiles split the training lam distribution (CFG schedule) by u: q0 is the least noisy quarter
(u < 1/4, lam > lam(1/4)), q3 the noisiest. Each test image is noised once per quartile at a lam drawn
uniformly in u within it (fixed seed). Step cost: one eps_fn call at batch 500, median of repeats,
for the conditional model unguided, with CFG (w = 1), with CG (s = 1) and with both.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

import diffguide as dg
from diffguide.data import load_data
from diffguide.prediction import bcast
from diffguide.schedule import ContinuousSchedule, alpha_sigma

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, cpu_info  # noqa: E402


@torch.no_grad()
def quartile_accuracy(clf: torch.nn.Module, n: int = 10_000) -> list[float]:
    data = load_data("mnist:test")
    x, c = data.images[:n], data.labels[:n]
    sched, g = ContinuousSchedule(), torch.Generator().manual_seed(0)
    acc = []
    for q in range(4):
        u = (q + torch.rand(len(x), generator=g, dtype=torch.float64)) / 4
        lam = sched.lam(u).float()
        a, s = alpha_sigma(lam)
        z = bcast(a, x) * x + bcast(s, x) * torch.randn(x.shape, generator=g)
        pred = torch.cat([clf(z[i:i + 1000], lam[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
        acc.append(round((pred == c).float().mean().item(), 4))
    return acc


def step_costs(model: dg.Pipeline, batch: int = 500, repeats: int = 5) -> dict[str, float]:
    z = torch.randn(batch, 1, 28, 28)
    lam = torch.zeros(batch)
    c = torch.arange(batch) % 10
    fns = {"unguided": dg.guided(model.net, c, 0.0), "cfg_w1": dg.guided(model.net, c, 1.0),
           "cg_s1": dg.guided(model.net, c, 0.0, classifier=model.classifier, cg_scale=1.0),
           "cfg_w1_cg_s1": dg.guided(model.net, c, 1.0, classifier=model.classifier, cg_scale=1.0)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn(z, lam)  # warm-up
        for _ in range(repeats):  # interleaved, so load changes hit every variant alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(z, lam)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k}_s": round(v, 3) for k, v in med.items()},
            **{f"{k}_over_unguided": round(v / med["unguided"], 2) for k, v in med.items()}}


def main() -> None:
    model = dg.load("mnist")
    assert model.classifier is not None, "the shipped classifier is missing"
    acc = quartile_accuracy(model.classifier)
    costs = step_costs(model)
    result = {"command": "python benchmarks/bench_classifier.py", "date": time.strftime("%Y-%m-%d %H:%M"),
              "cpu": cpu_info(), "threads": torch.get_num_threads(),
              "test_accuracy_by_noise_quartile": dict(zip(["q0_least_noisy", "q1", "q2", "q3_noisiest"], acc,
                                                          strict=True)),
              "step_cost_batch_500": costs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "classifier.json").write_text(json.dumps(result, indent=2))
    md = ["# Shipped noise-aware MNIST classifier", "", f"Command: `{result['command']}`  ",
          f"CPU: {result['cpu']['model']}, {result['threads']} threads, {result['date']}", "",
          "Test accuracy (10k MNIST test images) by noise quartile of the training lam distribution:", "",
          "| q0 (least noisy) | q1 | q2 | q3 (noisiest) |", "|---|---|---|---|",
          "| " + " | ".join(f"{a:.4f}" for a in acc) + " |", "",
          "Cost of one eps_fn call at batch 500 (median of 5, interleaved):", "",
          "| variant | seconds | × unguided |", "|---|---|---|"]
    md += [f"| {k} | {costs[k + '_s']} | {costs[k + '_over_unguided']} |"
           for k in ("unguided", "cfg_w1", "cg_s1", "cfg_w1_cg_s1")]
    (RESULTS / "classifier.md").write_text("\n".join(md) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
