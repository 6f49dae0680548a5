"""Autoguidance of the shipped MNIST model (issue #17): which guide, and against CFG's frontier.

    python benchmarks/autoguidance.py --phase train      # train the guide candidates (resumable)
    python benchmarks/autoguidance.py --phase search     # each guide at w = 0.5, 1, 2, 3 (n = 500)
    python benchmarks/autoguidance.py --phase frontier   # the best guide and CFG over w (n = 2000)
    python benchmarks/autoguidance.py --report-only      # tabulate what is finished
    -> benchmarks/results/autoguidance/{search.md, frontier.md, frontier.json, frontier.png}

Karras et al. 2024 guide a model by a worse version of itself: smaller and trained for less (their
ImageNet-512 guides are one size down at 1/16 of the training, and reducing training mattered more
than reducing capacity). The candidates here are the shipped model's recipe (`configs/mnist_small.toml`:
5000 steps at batch 128) at 1/16 and 1/4 of its steps, at its own size, half its width and the `tiny`
preset. Every guide trains with the same seed, data and schedule as the main model. Sampling: UniPC
with 10 steps (the demo's sampler), fp32, the same labels and per-sample seeds everywhere; scores:
the shipped independent MNIST evaluator against the MNIST test split. Each point is a resumable sweep
folder under `out/autoguidance/`; each guide a resumable run under `runs/guides/`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import RESULTS, ROOT, cpu_info  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.experiments.sweep import Setting, read_rows, run_sweep  # noqa: E402
from diffguide.sampling import SamplingConfig  # noqa: E402

MAIN_STEPS = 5000
HALF = {"channels": [16, 32, 64], "emb_dim": 64}
# name: (preset, preset overrides, training steps)
GUIDES: dict[str, tuple[str, dict[str, Any], int]] = {
    "small-1/16": ("small", {}, MAIN_STEPS // 16),
    "half-1/16": ("small", HALF, MAIN_STEPS // 16),
    "half-1/4": ("small", HALF, MAIN_STEPS // 4),
    "tiny-1/16": ("tiny", {}, MAIN_STEPS // 16),
    "tiny-1/4": ("tiny", {}, MAIN_STEPS // 4),
}
SEARCH_WS = (0.5, 1.0, 2.0, 3.0)
GUIDE_WS = (0.2, 0.5, 1.0, 2.0, 3.0)
CFG_WS = (0.0, 0.2, 0.5, 1.0, 2.0, 3.0)
SAMPLING = SamplingConfig(sampler="unipc", steps=10)
RUNS = ROOT / "runs" / "guides"
OUT = ROOT / "out" / "autoguidance"
DEST = RESULTS / "autoguidance"


def slug(name: str) -> str:
    return name.replace("/", "_")


def guide_file(name: str) -> Path:
    return RUNS / slug(name) / "guide.safetensors"


def train_guides() -> None:
    from diffguide.checkpoint import latest_checkpoint
    from diffguide.models import export_model, write_model_card
    from diffguide.training.config import load_config
    from diffguide.training.trainer import train

    for name, (preset, net, steps) in GUIDES.items():
        if guide_file(name).exists():
            continue
        run = RUNS / slug(name)
        cfg = load_config(ROOT / "configs" / "mnist_small.toml", out=str(run), preset=preset, net={"dropout": 0.0,
                          **net}, steps=steps, ckpt_every=100, log_every=25)
        t0 = time.time()
        train(cfg, resume=latest_checkpoint(run) is not None, progress=False)
        wall = time.time() - t0
        command = f"python benchmarks/autoguidance.py --phase train  # guide {name}"
        out = export_model(run, guide_file(name), card={"command": command, "wall_time_s": round(wall, 1)})
        write_model_card(run, out, command=command, wall_time_s=wall)
        print(f"trained {name}: {wall:.0f} s", flush=True)


def card(name: str) -> dict[str, Any]:
    path = guide_file(name).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}


def params(name: str) -> int:
    from diffguide.models import load_model

    return sum(p.numel() for p in load_model(guide_file(name)).parameters())


def folder(name: str | None, n: int) -> Path:
    return OUT / (f"cfg-{n}" if name is None else f"{slug(name)}-{n}")


def pipeline(name: str | None) -> dg.Pipeline:
    return dg.load("mnist", guide=guide_file(name) if name else None)


def points(name: str | None, ws: tuple[float, ...], n: int) -> list[dict[str, Any]]:
    return run_sweep(pipeline(name), [Setting(w) for w in ws], n=n, out=folder(name, n), sampling=SAMPLING,
                     plot=False, progress=False)


def rows(name: str | None, n: int) -> dict[float, dict[str, Any]]:
    return {r["w"]: r for r in read_rows(folder(name, n) / "results.jsonl") if r.get("n") == n}


def header(n: int, cmd: str) -> list[str]:
    return [f"Command: `{cmd}`  ", f"CPU: {cpu_info()['model']}, torch CPU  ",
            f"{n} samples per point, {SAMPLING.describe()}, same labels and per-sample seeds everywhere; the "
            "independent MNIST evaluator against the MNIST test split. The main model is the shipped one.", ""]


def search_report(n: int) -> str | None:
    md = ["# Autoguidance: which guide (search)", "", *header(n, "python benchmarks/autoguidance.py --phase search"),
          "| guide | preset | parameters | steps (of 5000) | train s | " +
          " | ".join(f"FID w={w:g} (acc)" for w in SEARCH_WS) + " |", "|---|---|---|---|---|" + "---|" * len(SEARCH_WS)]
    best: tuple[float, str] | None = None
    for name, (preset, net, steps) in GUIDES.items():
        if not guide_file(name).exists():
            continue
        got = rows(name, n)
        cells = [f"{got[w]['fid']:.3f} ({got[w]['accuracy']:.3f})" if w in got else "-" for w in SEARCH_WS]
        size = "half width" if net else preset
        md.append(f"| {name} | {size} | {params(name)} | {steps} | {card(name).get('wall_time_s', '-')} | "
                  + " | ".join(cells) + " |")
        if got:
            fid = min(r["fid"] for r in got.values())
            best = min(best or (fid, name), (fid, name))
    cfg = rows(None, n)
    md.append("| CFG (null label) | - | - | - | - | " + " | ".join(
        f"{cfg[w]['fid']:.3f} ({cfg[w]['accuracy']:.3f})" if w in cfg else "-" for w in SEARCH_WS) + " |")
    if best:
        md += ["", f"Lowest FID of any guide at any searched w: **{best[1]}** ({best[0]:.3f})."]
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "search.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return best[1] if best else None


def frontier_report(name: str, n: int) -> None:
    auto, cfg = rows(name, n), rows(None, n)
    md = ["# Autoguidance against CFG: FID against class accuracy", "",
          *header(n, "python benchmarks/autoguidance.py --phase frontier"),
          f"Guide: **{name}** ({params(name)} parameters, {GUIDES[name][2]} training steps, "
          f"{card(name).get('wall_time_s', '-')} s; the search's choice, search.md). Cost per sampling step: "
          "CFG runs the main model on 2B rows, autoguidance the main model on B rows and the guide on B.", "",
          "| method | w | FID | class accuracy | precision | recall | sample s |", "|---|---|---|---|---|---|---|"]
    for label, got in (("CFG", cfg), ("autoguidance", auto)):
        for w, r in sorted(got.items()):
            md.append(f"| {label} | {w:g} | {r['fid']:.3f} | {r['accuracy']:.4f} | {r['precision']:.3f} | "
                      f"{r['recall']:.3f} | {r.get('sample_seconds', 0):.0f} |")
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "frontier.md").write_text("\n".join(md) + "\n")
    keep = ("fid", "accuracy", "precision", "recall", "is_mean", "sample_seconds", "nfe")
    (DEST / "frontier.json").write_text(json.dumps({
        "command": "python benchmarks/autoguidance.py --phase frontier", "cpu": cpu_info(), "n": n,
        "sampling": SAMPLING.describe(), "guide": {"name": name, "params": params(name), **card(name)},
        "cfg": {str(w): {k: r.get(k) for k in keep} for w, r in cfg.items()},
        "autoguidance": {str(w): {k: r.get(k) for k in keep} for w, r in auto.items()}}, indent=1) + "\n")
    plot(cfg, auto, name, DEST / "frontier.png")
    print("\n".join(md))


def plot(cfg: dict[float, dict[str, Any]], auto: dict[float, dict[str, Any]], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, got, style in (("CFG", cfg, "o-"), (f"autoguidance ({name})", auto, "s-")):
        ws = sorted(got)
        ax.plot([got[w]["accuracy"] for w in ws], [got[w]["fid"] for w in ws], style, label=label)
        for w in ws:
            ax.annotate(f"{w:g}", (got[w]["accuracy"], got[w]["fid"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel="class accuracy (independent evaluator)", ylabel="FID (domain evaluator)", yscale="log",
           title="MNIST: FID against class accuracy, labels = w")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["train", "search", "frontier"], default="search")
    ap.add_argument("--guide", help="frontier: this guide (default: the search's best)")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    if a.phase == "train":
        train_guides()
        return
    if a.phase == "search" and not a.report_only:
        for name in GUIDES:
            if guide_file(name).exists():
                t0 = time.time()
                points(name, SEARCH_WS, 500)
                print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        points(None, SEARCH_WS, 500)
    best = search_report(500)
    if a.phase == "frontier":
        name = a.guide or best
        if name is None:
            raise SystemExit("no guide searched yet: run --phase train, then --phase search")
        if not a.report_only:
            points(name, GUIDE_WS, 2000)
            points(None, CFG_WS, 2000)
        frontier_report(name, 2000)


if __name__ == "__main__":
    main()
