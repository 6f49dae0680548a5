"""Guidance distillation of the shipped MNIST model (issue #18): teacher with CFG against its students.

    python benchmarks/distillation.py --points teacher    # the teacher's points (any time)
    python benchmarks/distillation.py --points students   # the students' (once they are trained)
    python benchmarks/distillation.py --phase timing      # wall time and forwards per sample, alone
    python benchmarks/distillation.py --phase fit         # stage one's error against its target, by w and lam
    python benchmarks/distillation.py --report-only
    -> benchmarks/results/distillation/{results.md, results.json, fid.png}

The students (model cards beside each): stage one, `diffguide distill --config configs/mnist_distill.toml`
(the teacher's U-Net plus a w input, one forward per step); stage two, `diffguide distill --config
configs/mnist_progressive.toml` (16 -> 8 -> 4 deterministic DDIM steps, a v-parameterised student per
round). Every point: 500 samples at labels i mod 10, the same per-sample seeds, fp32, scored by the
shipped independent MNIST evaluator against the MNIST test split; the teacher's 256-step ancestral DDPM
is the stage-two reference. Samples are cached under `out/distillation/` (rerun after an interruption).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, ROOT, cpu_info  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.api import ASSETS  # noqa: E402
from diffguide.experiments.sweep import Setting, read_rows, run_sweep  # noqa: E402
from diffguide.sampling import SamplingConfig  # noqa: E402

N = 500
WS = (0.0, 0.5, 1.0, 2.0, 4.0)
MODELS = {"teacher": ASSETS / "mnist_cfg_small.safetensors",
          "stage one": ASSETS / "mnist_student.safetensors",
          "8-step student": ASSETS / "mnist_student_8.safetensors",
          "4-step student": ASSETS / "mnist_student_4.safetensors",
          # not shipped: stage one trained on to 6000 steps (a resume with --steps 6000, so the cosine schedule
          # restarts at half its peak), to see whether more training closes its gap at large w
          "stage one, 6000 steps": ROOT / "runs" / "mnist_student_6000.safetensors"}
# (model, sampler, steps): equal sampler and steps first, then the students' own step counts
POINTS = [("teacher", "ddim", 16), ("stage one", "ddim", 16),
          ("teacher", "ddim", 8), ("stage one", "ddim", 8), ("8-step student", "ddim", 8),
          ("teacher", "ddim", 4), ("stage one", "ddim", 4), ("4-step student", "ddim", 4),
          ("teacher", "ddpm", 256), ("stage one, 6000 steps", "ddim", 16)]
OUT = ROOT / "out" / "distillation"
DEST = RESULTS / "distillation"
CMD = "python benchmarks/distillation.py"


def key(model: str, sampler: str, steps: int) -> str:
    return f"{model.replace(', ', '-').replace(' ', '-')}_{sampler}{steps}"


def sampling(sampler: str, steps: int) -> SamplingConfig:
    return SamplingConfig(sampler=sampler, steps=steps, batch_size=250)


def rows(point: tuple[str, str, int]) -> dict[float, dict[str, Any]]:
    path = OUT / key(*point) / "results.jsonl"
    return {r["w"]: r for r in read_rows(path) if r.get("n") == N} if path.exists() else {}


def run_points(which: str) -> None:
    for point in POINTS:
        model, sampler, steps = point
        if (which == "teacher") != (model == "teacher") or not MODELS[model].exists():
            continue
        t0 = time.time()
        pipe = dg.load(MODELS[model])
        run_sweep(pipe, [Setting(w) for w in WS], n=N, out=OUT / key(*point), sampling=sampling(sampler, steps),
                  plot=False, progress=False)
        print(f"{key(*point)}: {time.time() - t0:.0f} s", flush=True)


def timing(repeats: int = 2) -> dict[str, Any]:
    """Seconds per sample and network rows per sample at w = 2 (CFG on), each point timed ``repeats``
    times in turn (best kept), 250 samples (DDPM-256: 25), 2 threads, nothing else running."""
    labels = torch.arange(250) % 10
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for point in POINTS:
            model, sampler, steps = point
            if not MODELS[model].exists():
                continue
            n = 25 if steps > 100 else 250
            pipe, counter = dg.load(MODELS[model]), {}
            t0 = time.perf_counter()
            pipe.sample(labels[:n], 2.0, sampling=sampling(sampler, steps), counter=counter)
            dt = (time.perf_counter() - t0) / n
            k = key(*point)
            best = min(dt, out.get(k, {}).get("seconds_per_sample", dt))
            out[k] = {"seconds_per_sample": best, "rows_per_sample": counter["evaluations"] / n,
                      "forward_calls": counter["forwards"], "n": n}
            print(k, f"{dt * 1000:.1f} ms/sample", counter, flush=True)
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "timing.json").write_text(json.dumps({"command": f"{CMD} --phase timing", "cpu": cpu_info()["model"],
                                                  "threads": torch.get_num_threads(), "w": 2.0, "points": out},
                                                 indent=1) + "\n")
    return out


def fit(n: int = 2000) -> dict[str, Any]:
    """How closely each stage-one student reproduces the teacher's guided eps, (1 + w) eps_c - w eps_u, on
    held-out draws (x from the MNIST test split, lam from the training schedule, eps). The error is
    ||student - target||^2 / ||max(w, 1) (eps_c - eps_u)||^2 (the share of a guidance-sized term it misses),
    by w and by noise quartile of lam. fp32, the same draws for every w and student."""
    from diffguide.data import load_data
    from diffguide.models import load_model
    from diffguide.training.losses import noise_quartile

    teacher = load_model(MODELS["teacher"])
    data, g = load_data("mnist:test"), torch.Generator().manual_seed(0)
    x, c = data.images[:n], data.labels[:n]
    sched = teacher.train_schedule
    lam = sched.sample_lam(n, generator=g)
    alpha, sigma = torch.sigmoid(lam).sqrt()[:, None, None, None], torch.sigmoid(-lam).sqrt()[:, None, None, None]
    z = alpha * x + sigma * torch.randn(x.shape, generator=g)
    q = noise_quartile(sched, lam)
    out: dict[str, Any] = {}
    with torch.no_grad():
        e_c = torch.cat([teacher(z[i:i + 250], lam[i:i + 250], c[i:i + 250]) for i in range(0, n, 250)])
        e_u = torch.cat([teacher(z[i:i + 250], lam[i:i + 250], torch.full_like(c[i:i + 250], 10))
                         for i in range(0, n, 250)])
        for name in ("stage one", "stage one, 6000 steps"):
            if not MODELS[name].exists():
                continue
            student, by_w = load_model(MODELS[name]), {}
            for w in WS:
                target = e_c + w * (e_c - e_u)
                got = torch.cat([student(z[i:i + 250], lam[i:i + 250], student.condition(c[i:i + 250], w))
                                 for i in range(0, n, 250)])
                err = (got - target).pow(2).flatten(1).sum(1)
                scale = (e_c - e_u).pow(2).flatten(1).sum(1) * max(w, 1.0) ** 2
                by_w[str(w)] = {"all": (err.sum() / scale.sum()).item(),
                                **{f"q{k}": (err[q == k].sum() / scale[q == k].sum()).item() for k in range(4)}}
                print(name, f"w={w:g}", {k: round(v, 4) for k, v in by_w[str(w)].items()}, flush=True)
            out[name] = by_w
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "fit.json").write_text(json.dumps({"command": f"{CMD} --phase fit", "n": n, "by_model": out},
                                              indent=1) + "\n")
    return out


def card(model: str) -> dict[str, Any]:
    path = MODELS[model].with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}


def report() -> None:
    timed = json.loads((DEST / "timing.json").read_text())["points"] if (DEST / "timing.json").exists() else {}
    got = {key(*p): rows(p) for p in POINTS}
    ref = got[key("teacher", "ddpm", 256)]
    md = ["# Guidance distillation: the teacher with CFG against its students", "",
          f"Commands: `{CMD} --points teacher`, `{CMD} --points students`, `{CMD} --phase timing`  ",
          f"CPU: {cpu_info()['model']}, torch CPU  ",
          f"{N} samples per point, labels i mod 10, the same per-sample seeds everywhere, fp32; FID, IS and class "
          "accuracy from the shipped independent MNIST evaluator against the MNIST test split. Wall time: seconds per "
          "sample at w = 2 (250 samples, DDPM-256: 25), best of 2 alternating runs with nothing else running "
          "(timing.json); network rows per sample counted.", "",
          "| model | sampler | rows/sample | ms/sample | " + " | ".join(f"FID w={w:g}" for w in WS) + " | "
          + " | ".join(f"acc w={w:g}" for w in WS) + " |",
          "|---|---|---|---|" + "---|" * (2 * len(WS))]
    for point in POINTS:
        r, t = got[key(*point)], timed.get(key(*point), {})
        ms = f"{1000 * t['seconds_per_sample']:.1f}" if t else "-"
        rps = f"{t['rows_per_sample']:g}" if t else "-"
        md.append(f"| {point[0]} | {point[1].upper()} {point[2]} | {rps} | {ms} | "
                  + " | ".join(f"{r[w]['fid']:.3f}" if w in r else "-" for w in WS) + " | "
                  + " | ".join(f"{r[w]['accuracy']:.3f}" if w in r else "-" for w in WS) + " |")
    md += ["", "IS (mean) by w:", "", "| model | sampler | " + " | ".join(f"w={w:g}" for w in WS) + " |",
           "|---|---|" + "---|" * len(WS)]
    for point in POINTS:
        r = got[key(*point)]
        md.append(f"| {point[0]} | {point[1].upper()} {point[2]} | "
                  + " | ".join(f"{r[w]['is_mean']:.2f}" if w in r else "-" for w in WS) + " |")
    goals = ["", "## Goals", ""]

    def ratios(num: dict[float, dict[str, Any]], den: dict[float, dict[str, Any]], limit: float) -> tuple[str, str]:
        pairs = [(w, num[w]["fid"] / den[w]["fid"]) for w in WS if w in num and w in den]
        text = ", ".join(f"w = {w:g}: {r:.2f}x" for w, r in pairs)
        missed = [f"{w:g}" for w, r in pairs if r > 1 + limit]
        verdict = "met at every w" if not missed else f"missed at w = {', '.join(missed)}"
        return text, verdict

    t16, s16 = got[key("teacher", "ddim", 16)], got[key("stage one", "ddim", 16)]
    if t16 and s16:
        text, verdict = ratios(s16, t16, 0.10)
        tt, st = timed.get(key("teacher", "ddim", 16)), timed.get(key("stage one", "ddim", 16))
        ratio = f"{st['seconds_per_sample'] / tt['seconds_per_sample']:.2f}x" if tt and st else "not timed"
        goals.append(f"- **Stage one** (DDIM 16, student FID / teacher FID): {text}. Goal, no more than 10 % above "
                     f"the teacher at every w: **{verdict}**. Sampling time at w = 2: {ratio} the teacher's (goal "
                     f"<= 0.55x).")
    s4 = got[key("4-step student", "ddim", 4)]
    if s4 and ref:
        text, verdict = ratios(s4, ref, 0.25)
        t4, tref = timed.get(key("4-step student", "ddim", 4)), timed.get(key("teacher", "ddpm", 256))
        saving = (f" It costs {t4['rows_per_sample']:g} network rows per sample instead of "
                  f"{tref['rows_per_sample']:g} ({tref['seconds_per_sample'] / t4['seconds_per_sample']:.0f}x less "
                  f"time)." if t4 and tref else "")
        goals.append(f"- **Stage two** (4-step student, DDIM 4, FID / the teacher's 256-step DDPM FID): {text}. Goal, "
                     f"no more than 25 % above it at every w: **{verdict}**.{saving}")
    if (DEST / "fit.json").exists():
        by_model = json.loads((DEST / "fit.json").read_text())["by_model"]
        goals += ["", f"## How closely stage one fits its target (`{CMD} --phase fit`)", "",
                  "Held-out MNIST test images, training-schedule lam: ||student - target||^2 over ||max(w, 1) "
                  "(eps_c - eps_u)||^2, the share of a guidance-sized term the student misses (2000 draws), "
                  "overall and by noise quartile (q0 least noisy):", "",
                  "| student | w | all | q0 | q1 | q2 | q3 |", "|---|---|---|---|---|---|---|"]
        goals += [f"| {name} | {float(w):g} | " + " | ".join(f"{r[k]:.3f}" for k in ("all", "q0", "q1", "q2", "q3"))
                  + " |" for name, by_w in by_model.items() for w, r in by_w.items()]
    cost = ["", "## Training cost", "", "| model | command | steps | wall s | machine |", "|---|---|---|---|---|"]
    for model in MODELS:
        c = card(model)
        if c:
            cost.append(f"| {model} | `{c.get('command', '-')}` | {c.get('steps', '-')} | "
                        f"{c.get('wall_time_s', '-')} | {c.get('cpu', '-')}, {c.get('threads', '-')} thread(s) |")
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "results.md").write_text("\n".join(md + goals + cost) + "\n")
    keep = ("fid", "accuracy", "precision", "recall", "is_mean", "nfe")
    (DEST / "results.json").write_text(json.dumps({
        "n": N, "cpu": cpu_info()["model"], "cpu_flags": cpu_info()["flags"],
        "points": {key(*p): {"model": p[0], "sampler": p[1], "steps": p[2], "timing": timed.get(key(*p)),
                             "w": {str(w): {k: r.get(k) for k in keep} for w, r in got[key(*p)].items()}}
                   for p in POINTS},
        "cards": {m: {k: card(m).get(k) for k in ("command", "steps", "wall_time_s", "cpu", "threads")}
                  for m in MODELS}}, indent=1) + "\n")
    plot(got, DEST / "fid.png")
    print("\n".join(md + goals + cost))


def plot(got: dict[str, dict[float, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for point in POINTS:
        r = got[key(*point)]
        if r:
            ws = sorted(r)
            style = "--" if point[0] == "teacher" else "-"
            ax.plot(ws, [r[w]["fid"] for w in ws], style, marker="o",
                    label=f"{point[0]}, {point[1].upper()} {point[2]}")
    ax.set(xlabel="w", ylabel="FID (MNIST evaluator)", yscale="log", title="Teacher (CFG, dashed) and students")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", choices=["teacher", "students"])
    ap.add_argument("--phase", choices=["timing", "fit"])
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    if a.points and not a.report_only:
        run_points(a.points)
    if a.phase == "timing" and not a.report_only:
        timing()
    if a.phase == "fit" and not a.report_only:
        fit()
    report()


if __name__ == "__main__":
    main()
