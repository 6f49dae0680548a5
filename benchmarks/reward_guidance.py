"""Reward guidance and the seeds' question on the shipped MNIST model (issue #17).

    python benchmarks/reward_guidance.py --phase classifiers   # the clean guide and an independent judge
    python benchmarks/reward_guidance.py --phase sample        # every guided point (resumable)
    python benchmarks/reward_guidance.py --phase cost          # wall time and peak memory per sample
    python benchmarks/reward_guidance.py --report-only
    -> benchmarks/results/reward_guidance/{results.md, results.json, accuracy_vs_scale.png}
       benchmarks/results/adversarial/{results.md, results.json, gap.png}

Classifiers (none of them the diffusion model):
- **noise-aware guide**: the shipped classifier (`mnist_classifier_small`), guiding on z (classifier guidance);
- **clean guide**: the same U-Net-encoder architecture trained on clean images only (`p_clean = 1`,
  400 steps), guiding through the network's x0 prediction (DPS / universal guidance's forward step);
- **judges** that play no part in sampling: the shipped evaluator (a BatchNorm CNN, seed 0, which also
  gives FID) and an MLP (784-512-256-10, seed 2, trained here): another architecture and seed.

Every point: 500 samples, labels i mod 10, per-sample seeds, UniPC 10 steps, fp32. Samples are cached
under `out/reward/` (rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, ROOT, cpu_info  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.guidance import REWARDS, classifier_reward, ink  # noqa: E402
from diffguide.sampling import SamplingConfig  # noqa: E402

N = 500
SAMPLING = SamplingConfig(sampler="unipc", steps=10)
RUNS = ROOT / "runs" / "reward"
OUT = ROOT / "out" / "reward"
CG_SCALES = (1.0, 3.0, 10.0, 30.0)
X0_SCALES = (1.0, 3.0, 10.0, 30.0)
CFG_WS = (0.0, 0.5, 1.0, 2.0, 4.0)
INK_SCALES = (0.03, 0.1, 0.3)
LAM_CLEAN = 20.0  # the continuous schedule's lam_max: where the classifiers were shown clean images


class MLPClassifier(nn.Module):
    """An independent judge: no convolutions, no normalisation, another seed."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 256),
                                 nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 10))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def train_classifiers() -> None:
    from safetensors.torch import save_file

    from diffguide.checkpoint import latest_checkpoint
    from diffguide.metrics.evaluator import train_evaluator
    from diffguide.models import export_model
    from diffguide.training.config import load_config
    from diffguide.training.trainer import train

    RUNS.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = json.loads((RUNS / "classifiers.json").read_text()) if (RUNS / "classifiers.json").exists() \
        else {}
    if not (RUNS / "clean.safetensors").exists():
        run = RUNS / "clean_run"
        cfg = dataclasses.replace(load_config(ROOT / "configs" / "mnist_classifier_small.toml", out=str(run),
                                              p_clean=1.0, steps=400, seed=3, ckpt_every=100),
                                  time_budget=None)  # a step budget (load_config drops None overrides)
        t0 = time.time()
        train(cfg, resume=latest_checkpoint(run) is not None, progress=False)
        export_model(run, RUNS / "clean.safetensors")
        info["clean"] = {"steps": 400, "p_clean": 1.0, "seed": 3, "seconds": round(time.time() - t0, 1)}
    if not (RUNS / "mlp.safetensors").exists():
        torch.manual_seed(2)
        t0 = time.time()
        model, acc = train_evaluator(epochs=3, seed=2, max_shift=2, model=MLPClassifier())
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(RUNS / "mlp.safetensors"))
        info["mlp"] = {"epochs": 3, "seed": 2, "test_accuracy": acc, "seconds": round(time.time() - t0, 1)}
    clean, mlp, ev = judges()["clean"], judges()["mlp"], judges()["evaluator"]
    from diffguide.data.mnist import load_mnist

    x, y = load_mnist("test")
    xf = x.float() / 127.5 - 1
    for name, fn in (("clean", clean), ("mlp", mlp), ("evaluator", ev)):
        info.setdefault(name, {})["test_accuracy"] = float((logits(fn, xf).argmax(1) == y).float().mean())
    (RUNS / "classifiers.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))


def judges() -> dict[str, Callable[[Tensor], Tensor]]:
    """Clean-image logit functions ``x (B, 1, 28, 28) in [-1, 1] -> (B, 10)``."""
    from safetensors.torch import load_file

    from diffguide.metrics.evaluator import load_evaluator
    from diffguide.models import load_model

    out: dict[str, Callable[[Tensor], Tensor]] = {}
    ev = load_evaluator()
    out["evaluator"] = ev
    if (RUNS / "mlp.safetensors").exists():
        mlp = MLPClassifier()
        mlp.load_state_dict(load_file(str(RUNS / "mlp.safetensors")))
        out["mlp"] = mlp.eval()
    if (RUNS / "clean.safetensors").exists():
        clean = load_model(RUNS / "clean.safetensors")
        out["clean"] = lambda x, m=clean: m(x, torch.full((x.shape[0],), LAM_CLEAN))
    noisy = dg.load("mnist").classifier
    assert noisy is not None
    out["noise-aware"] = lambda x, m=noisy: m(x, torch.full((x.shape[0],), LAM_CLEAN))
    return out


@torch.no_grad()
def logits(fn: Callable[[Tensor], Tensor], x: Tensor, batch: int = 500) -> Tensor:
    return torch.cat([fn(x[i:i + batch]).float() for i in range(0, len(x), batch)])


def ink_of(x: Tensor) -> Tensor:
    """Ink per image, in pixels: the sum of ``(x + 1) / 2`` over the 784 pixels (the library's ``ink`` reward)."""
    return ink(x, torch.zeros(len(x)), torch.zeros(len(x)))


def points() -> dict[str, dict[str, Any]]:
    """tag -> how to sample it (method, strength, keyword arguments of Pipeline.sample)."""
    from diffguide.models import load_model

    pts: dict[str, dict[str, Any]] = {"uncond": {"method": "unconditional", "s": 0.0, "kw": {"unconditional": True}}}
    for w in CFG_WS:
        pts[f"cfg-{w:g}"] = {"method": "CFG", "s": w, "kw": {"w": w}}
    for s in CG_SCALES:
        pts[f"cg-{s:g}"] = {"method": "CG (noise-aware, z)", "s": s, "kw": {"unconditional": True, "cg_scale": s}}
    if (RUNS / "clean.safetensors").exists():
        clean = load_model(RUNS / "clean.safetensors")
        clf = lambda x, lam, m=clean: m(x.clamp(-1, 1), torch.full_like(lam, LAM_CLEAN))  # noqa: E731
        for s in X0_SCALES:
            pts[f"x0-{s:g}"] = {"method": "x0 (clean, DPS)", "s": s, "kw": {"unconditional": True, "reward": (
                dg.RewardGuidance(classifier_reward(clf), scale=s, on="x0"))}}
    for spec, name in (("ink", "more"), ("-ink", "less")):
        for s in INK_SCALES:
            pts[f"ink-{name}-{s:g}"] = {"method": f"ink {name} (x0) + CFG w=1", "s": s, "kw": {"w": 1.0, "reward": (
                dg.RewardGuidance(REWARDS[spec], scale=s, on="x0"))}}
    return pts


def sample_all(only: str | None = None) -> None:
    from safetensors.torch import save_file

    pipe = dg.load("mnist")
    labels = torch.arange(N) % 10
    OUT.mkdir(parents=True, exist_ok=True)
    for tag, p in points().items():
        if (only and not tag.startswith(only)) or (OUT / f"{tag}.safetensors").exists():
            continue
        t0 = time.time()
        kw = dict(p["kw"])
        w = kw.pop("w", 0.0)
        x = pipe.sample(labels, w, sampling=SAMPLING, **kw)
        save_file({"x": x.contiguous()}, str(OUT / f"{tag}.safetensors"),
                  metadata={"seconds": f"{time.time() - t0:.3f}"})
        print(f"{tag}: {time.time() - t0:.0f} s", flush=True)


def load_samples(tag: str) -> dict[str, Any] | None:
    from safetensors import safe_open

    path = OUT / f"{tag}.safetensors"
    if not path.exists():
        return None
    with safe_open(str(path), "pt") as f:
        return {"x": f.get_tensor("x"), "seconds": float(f.metadata()["seconds"])}


def score() -> dict[str, dict[str, Any]]:
    from diffguide.metrics import sample_metrics
    from diffguide.metrics.evaluator import load_evaluator
    from diffguide.metrics.reference_stats import mnist_reference_stats

    ev, ref = load_evaluator(), mnist_reference_stats("test")
    js = judges()
    labels = torch.arange(N) % 10
    rows = {}
    for tag, p in points().items():
        got = load_samples(tag)
        if got is None:
            continue
        x = got["x"]
        m = sample_metrics(ev, x, ref, labels)
        row: dict[str, Any] = {"method": p["method"], "s": p["s"], "fid": m["fid"], "seconds": got["seconds"],
                               "ink": ink_of(x).mean().item()}
        for name, fn in js.items():
            prob = logits(fn, x).softmax(1)
            row[f"acc_{name}"] = (prob.argmax(1) == labels).float().mean().item()
            row[f"conf_{name}"] = prob.gather(1, labels[:, None]).mean().item()
        rows[tag] = row
    return rows


def cost_one(tag: str, max_batch: int | None) -> None:
    """One point, in a process of its own: seconds and peak RSS growth per sample for 100 samples."""
    import resource

    pipe = dg.load("mnist")
    p = points()[tag]
    kw = dict(p["kw"])
    w = kw.pop("w", 0.0)
    labels = torch.arange(100) % 10
    cfg = SamplingConfig(sampler="unipc", steps=10, max_batch=max_batch, batch_size=100)
    pipe.sample(labels[:16], w, sampling=cfg.make(cfg, steps=3), **kw)  # warm-up
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pipe.sample(labels, w, sampling=cfg, **kw)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"tag": tag, "max_batch": max_batch, "seconds_per_sample": dt / 100,
                      "peak_rss_growth_mb": (peak - base) / 1024, "peak_rss_mb": peak / 1024}))


def cost() -> None:
    runs = []
    for _ in range(2):  # alternate, so each sees the same load
        for tag, mb in (("cfg-1", None), ("ink-more-0.1", None), ("ink-more-0.1", 50), ("x0-3", None),
                        ("cg-3", None)):
            out = subprocess.run([sys.executable, __file__, "--phase", "cost-one", "--tag", tag, "--max-batch",
                                  str(mb or 0)], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    DEST_R.mkdir(parents=True, exist_ok=True)
    (DEST_R / "cost.json").write_text(json.dumps({"cpu": cpu_info(), "runs": runs}, indent=1) + "\n")


DEST_R = RESULTS / "reward_guidance"
DEST_A = RESULTS / "adversarial"


CMD = "python benchmarks/reward_guidance.py"


def head(title: str) -> list[str]:
    info = json.loads((RUNS / "classifiers.json").read_text()) if (RUNS / "classifiers.json").exists() else {}
    accs = ", ".join(f"{k} {v['test_accuracy']:.4f}" for k, v in info.items() if "test_accuracy" in v)
    return [f"# {title}", "", f"Command: `{CMD}` (phases: classifiers, sample, cost; `--report-only` rewrites this)  ",
            f"CPU: {cpu_info()['model']}, torch CPU  ",
            f"{N} samples per point (labels i mod 10), {SAMPLING.describe()}. Clean MNIST test accuracy of the "
            f"classifiers: {accs}. The noise-aware classifier is read at lam = {LAM_CLEAN:g} (clean).", ""]


def interp(rows: list[dict[str, Any]], key: str, at: float, want: str) -> float | None:
    """``want`` linearly interpolated at ``rows[key] == at`` along the strength order (first crossing)."""
    for a, b in zip(rows, rows[1:], strict=False):
        lo, hi = a[key], b[key]
        if min(lo, hi) <= at <= max(lo, hi) and lo != hi:
            t = (at - lo) / (hi - lo)
            return a[want] + t * (b[want] - a[want])
    return None


def report(rows: dict[str, dict[str, Any]]) -> None:
    by: dict[str, list[dict[str, Any]]] = {}
    for tag, r in rows.items():
        by.setdefault(r["method"], []).append({**r, "tag": tag})
    u = rows.get("uncond")
    guide_of = {"CG (noise-aware, z)": "noise-aware", "x0 (clean, DPS)": "clean"}
    # ---- reward guidance
    md = head("Reward guidance on the shipped MNIST model")
    md += ["## Class guidance through x0 by a clean classifier (unconditional model)", "",
           "Accuracy as read by the independent judges (evaluator, MLP) and by the guiding classifier.", "",
           "| method | s | acc evaluator | acc MLP | acc guide | FID | s per 500 |", "|---|---|---|---|---|---|---|"]
    for method in ("x0 (clean, DPS)", "CG (noise-aware, z)"):
        for r in ([{**u, "s": 0.0}] if u else []) + by.get(method, []):
            g = guide_of[method]
            md.append(f"| {method} | {r['s']:g} | {r['acc_evaluator']:.3f} | {r['acc_mlp']:.3f} | "
                      f"{r.get('acc_' + g, float('nan')):.3f} | {r['fid']:.2f} | {r['seconds']:.0f} |")
    base = rows.get("cfg-1")
    md += ["", "## A non-class reward: ink (sum of (x + 1) / 2 over the pixels), through x0, on top of CFG w = 1", "",
           "| reward | s | mean ink (px) | acc evaluator | acc MLP | FID |", "|---|---|---|---|---|---|"]
    if base:
        md.append(f"| none (CFG w = 1) | 0 | {base['ink']:.1f} | {base['acc_evaluator']:.3f} | {base['acc_mlp']:.3f} | "
                  f"{base['fid']:.2f} |")
    for name in ("more", "less"):
        for r in by.get(f"ink {name} (x0) + CFG w=1", []):
            md.append(f"| {name} ink | {r['s']:g} | {r['ink']:.1f} | {r['acc_evaluator']:.3f} | {r['acc_mlp']:.3f} | "
                      f"{r['fid']:.2f} |")
    cost_file = DEST_R / "cost.json"
    if cost_file.exists():
        runs = json.loads(cost_file.read_text())["runs"]
        md += ["", "## Cost per sample (100 samples, one process each, two alternating repeats; the slower one)", "",
               "| point | max_batch | s per sample | x CFG | peak RSS growth (MB) |", "|---|---|---|---|---|"]
        groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for r in runs:
            groups.setdefault((r["tag"], r["max_batch"]), []).append(r)
        med = {k: sorted(v, key=lambda r: r["seconds_per_sample"])[len(v) // 2] for k, v in groups.items()}
        ref = med.get(("cfg-1", None))
        for (tag, mb), r in med.items():
            ratio = f"{r['seconds_per_sample'] / ref['seconds_per_sample']:.2f}" if ref else "-"
            md.append(f"| {tag} | {mb or 'all'} | {r['seconds_per_sample']:.4f} | {ratio} | "
                      f"{r['peak_rss_growth_mb']:.0f} |")
    DEST_R.mkdir(parents=True, exist_ok=True)
    (DEST_R / "results.md").write_text("\n".join(md) + "\n")
    (DEST_R / "results.json").write_text(json.dumps({"command": CMD, "cpu": cpu_info(), "n": N, "rows": rows},
                                                    indent=1) + "\n")
    # ---- adversarial
    md = head("Is classifier guidance an adversarial attack on the classifier?")
    md += ["Gap = the guiding classifier's accuracy on the samples minus the mean accuracy of the two independent "
           "judges; conf = the guide's mean probability of the asked class. For CFG there is no guiding classifier: "
           "the noise-aware and clean classifiers' readings are shown as controls.", "",
           "| method | strength | guide acc | guide conf | acc evaluator | acc MLP | gap | FID |",
           "|---|---|---|---|---|---|---|---|"]
    curves: dict[str, list[dict[str, Any]]] = {}
    for method in ("CG (noise-aware, z)", "x0 (clean, DPS)", "CFG"):
        g = guide_of.get(method)
        pts = ([{**u, "s": 0.0}] if u and g else []) + by.get(method, [])
        for r in pts:
            indep = (r["acc_evaluator"] + r["acc_mlp"]) / 2
            if g:
                r = {**r, "guide_acc": r[f"acc_{g}"], "guide_conf": r[f"conf_{g}"], "gap": r[f"acc_{g}"] - indep,
                     "indep": indep}
                md.append(f"| {method} | {r['s']:g} | {r['guide_acc']:.3f} | {r['guide_conf']:.3f} | "
                          f"{r['acc_evaluator']:.3f} | {r['acc_mlp']:.3f} | {r['gap']:+.3f} | {r['fid']:.2f} |")
            else:
                r = {**r, "indep": indep, "gap": max(r["acc_noise-aware"], r["acc_clean"]) - indep}
                md.append(f"| CFG | w = {r['s']:g} | noise-aware {r['acc_noise-aware']:.3f} / clean "
                          f"{r['acc_clean']:.3f} | - | {r['acc_evaluator']:.3f} | {r['acc_mlp']:.3f} | "
                          f"{r['gap']:+.3f} | {r['fid']:.2f} |")
            curves.setdefault(method, []).append(r)
    md += ["", "## At equal independent accuracy (mean of the two judges; linear interpolation along the strength)",
           "", "| independent acc | method | strength | FID | guide conf |", "|---|---|---|---|---|"]
    for at in (0.80, 0.90, 0.95):
        for method, rs in curves.items():
            s_, fid = interp(rs, "indep", at, "s"), interp(rs, "indep", at, "fid")
            conf = interp(rs, "indep", at, "guide_conf") if "guide_conf" in rs[0] else None
            if s_ is not None and fid is not None:
                md.append(f"| {at:.2f} | {method} | {s_:.2f} | {fid:.2f} | "
                          + (f"{conf:.3f}" if conf is not None else "-") + " |")
    DEST_A.mkdir(parents=True, exist_ok=True)
    (DEST_A / "results.md").write_text("\n".join(md) + "\n")
    (DEST_A / "results.json").write_text(json.dumps({"command": CMD, "cpu": cpu_info(), "n": N, "curves": curves},
                                                    indent=1) + "\n")
    plot(curves, DEST_A / "gap.png", DEST_R / "accuracy_vs_scale.png")
    print((DEST_A / "results.md").read_text())


def plot(curves: dict[str, list[dict[str, Any]]], gap_png: Path, acc_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, rs in curves.items():
        axes[0].plot([r["indep"] for r in rs], [r["gap"] for r in rs], "o-", label=method)
        axes[1].plot([r["indep"] for r in rs], [r["fid"] for r in rs], "o-", label=method)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set(xlabel="independent accuracy (mean of evaluator and MLP)",
                ylabel="guide accuracy - independent accuracy", title="What the guide believes, beyond the judges")
    axes[1].set(xlabel="independent accuracy", ylabel="FID (evaluator)", yscale="log", title="FID at equal accuracy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(gap_png, dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in ("x0 (clean, DPS)", "CG (noise-aware, z)"):
        rs = curves.get(method, [])
        for judge, style in (("acc_evaluator", "o-"), ("acc_mlp", "s--")):
            ax.plot([max(r["s"], 0.3) for r in rs], [r[judge] for r in rs], style,
                    label=f"{method}, {judge[4:]}")
    ax.set(xscale="log", xlabel="scale s (0 drawn at 0.3)", ylabel="class accuracy (independent)",
           title="Unconditional model guided to the asked digit")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(acc_png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["classifiers", "sample", "cost", "cost-one"], default="sample")
    ap.add_argument("--only", help="sample: only tags starting with this")
    ap.add_argument("--tag")
    ap.add_argument("--max-batch", type=int, default=0)
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    if a.phase == "classifiers":
        train_classifiers()
    elif a.phase == "cost-one":
        cost_one(a.tag, a.max_batch or None)
    elif a.phase == "cost":
        cost()
    else:
        if not all((RUNS / f).exists() for f in ("mlp.safetensors", "clean.safetensors")):
            raise SystemExit("the clean guide and the MLP judge are not trained yet: run --phase classifiers first")
        if not a.report_only:
            sample_all(a.only)
        report(score())


if __name__ == "__main__":
    main()
