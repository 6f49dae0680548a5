"""Fast solvers on the shipped MNIST model (issue #16): quality per network evaluation.

    python benchmarks/solvers.py --phase pilot       # which grid each solver samples best on (n = 500, 10 NFE)
    python benchmarks/solvers.py                     # the benchmark (n = 2000, w = 0.5 and 2, NFE 5 ... 50)
    python benchmarks/solvers.py --phase precision   # bf16 against fp32 sampling, side by side
    python benchmarks/solvers.py --report-only       # tabulate what is finished
    -> benchmarks/results/solvers/{results.md, results.json, quality_per_nfe.png, pilot.md, precision.md}

Every point is a resumable sweep folder under `out/solvers/` (rerun the same command after an
interruption; finished points are skipped), with the same labels and per-sample seeds everywhere,
fp32 unless the precision phase says otherwise, scored by the shipped independent MNIST evaluator
against the MNIST test split. NFE counts model evaluations (CFG's two predictions are one batched
forward and count once, as in the DPM-Solver++ and UniPC papers); Heun's grids have `(NFE + 1) / 2`
steps, so its NFE is the odd number at or below the target. The reference is DDPM (ancestral) with
256 steps, the CFG paper's sampler.
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
from diffguide.cli import DEMO_SWEEP  # noqa: E402
from diffguide.experiments.sweep import Setting, read_rows, run_sweep  # noqa: E402
from diffguide.sampling import SamplingConfig  # noqa: E402

WS = (0.5, 2.0)
NFES = (5, 8, 10, 15, 20, 50)
ORDER = (10, 5, 8, 15, 20, 50)  # the goals' points first, so an interrupted run has them
# The grid each solver is measured on: the pilot's best at 10 NFE (results/solvers/pilot.md).
GRID = {"ddim": "schedule", "dpmpp-2m": "schedule", "unipc": "schedule", "heun": "karras"}
REFERENCE = SamplingConfig(sampler="ddpm", steps=256)
OUT = ROOT / "out" / "solvers"
DEST = RESULTS / "solvers"


def cpu_line() -> str:
    info = cpu_info()
    return f"{info['model']} ({', '.join(info['flags'])}), torch CPU"


def steps_for(solver: str, nfe: int) -> int:
    return (nfe + 1) // 2 if solver == "heun" else nfe


def point(pipe: Any, cfg: SamplingConfig, n: int, ws: tuple[float, ...] = WS) -> list[dict[str, Any]]:
    out = OUT / f"{cfg.name}-{cfg.grid}-{cfg.steps}-{cfg.precision}"
    return run_sweep(pipe, [Setting(w) for w in ws], n=n, out=out, sampling=cfg, plot=False, progress=False)


def rows_of(cfg: SamplingConfig, n: int) -> list[dict[str, Any]]:
    """This point's finished rows: its sweep folder's, else those recorded in the committed results.json."""
    out = OUT / f"{cfg.name}-{cfg.grid}-{cfg.steps}-{cfg.precision}"
    rows = {r["w"]: r for r in read_rows(out / "results.jsonl") if r.get("n") == n}
    for w, r in recorded(cfg, n).items():
        rows.setdefault(w, r)
    return list(rows.values())


def recorded(cfg: SamplingConfig, n: int) -> dict[float, dict[str, Any]]:
    """Rows of this point kept in the committed results.json (run outputs under out/ do not outlive a
    session; the same fp32 config, labels and seeds give the same samples, so a kept row is not re-run)."""
    path = DEST / "results.json"
    if not path.exists():
        return {}
    d = json.loads(path.read_text())
    if d.get("n") != n:
        return {}
    if cfg == REFERENCE:
        by_w = d["reference"]["rows"]
    else:
        solver = cfg.name
        if solver not in GRID or cfg.grid != GRID[solver] or cfg.precision != "fp32":
            return {}
        nfe = next((x for x in NFES if steps_for(solver, x) == cfg.steps), None)
        by_w = {w: by[solver][str(nfe)] for w, by in d["solvers"].items() if str(nfe) in by.get(solver, {})}
    return {float(w): {**r, "w": float(w), "n": n} for w, r in by_w.items()}


def pilot(pipe: Any, n: int) -> None:
    lines = ["# Pilot: which grid each solver samples best on (10 NFE)", "",
             "Command: `python benchmarks/solvers.py --phase pilot`  ", f"CPU: {cpu_line()}  ",
             f"{n} samples per point (FID at n = {n} is biased upward against the n = 2000 benchmark; "
             "compare within this table only), fp32, w = 0.5 and 2.", "",
             "| solver | grid | NFE | FID w=0.5 | acc w=0.5 | FID w=2 | acc w=2 |", "|---|---|---|---|---|---|---|"]
    for solver in ("ddim", "dpmpp-2m", "unipc", "heun"):
        for grid in ("schedule", "lam", "karras"):
            cfg = SamplingConfig(sampler=solver, steps=steps_for(solver, 10), grid=grid)
            if solver == "heun" and grid != "karras":  # see the note below the table
                lines.append(f"| heun | {grid} | {cfg.evaluations} | refused | | | |")
                continue
            rows = {r["w"]: r for r in point(pipe, cfg, n)}
            cells = [f"{rows[w]['fid']:.3f} | {rows[w]['accuracy']:.3f}" for w in WS]
            lines.append(f"| {solver} | {grid} | {cfg.evaluations} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    lines += ["", "Heun on the schedule and lam grids, which start at the CFG schedule's lam = -20 "
              "(EDM sigma = 22026), is refused (`samplers/edm.py`: Heun integrates linearly in sigma, so a "
              "step from there multiplies the change of eps across it by ~sigma/2). Before the refusal existed, "
              "the first pilot run measured FID 672 / 693 (schedule) and 327 / 297 (lam) at w = 0.5 / 2, class "
              "accuracy 0.10. The karras grid is EDM's sigma range 80 ... 0.002 (lam -8.76 ... 12.43)."]
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "pilot.md").write_text("\n".join(lines) + "\n")


def configs() -> list[tuple[str, int, SamplingConfig]]:
    return [(s, nfe, SamplingConfig(sampler=s, steps=steps_for(s, nfe), grid=GRID[s])) for nfe in ORDER for s in GRID]


def report(n: int) -> None:
    ref = {r["w"]: r for r in rows_of(REFERENCE, n)}
    table: dict[float, dict[str, dict[int, dict[str, Any]]]] = {w: {} for w in WS}
    for solver, nfe, cfg in configs():
        for r in rows_of(cfg, n):
            if r["w"] in table:
                table[r["w"]].setdefault(solver, {})[nfe] = {**r, "evaluations": cfg.evaluations}
    cmd = "python benchmarks/solvers.py"
    md = ["# Solvers: quality per network evaluation (shipped MNIST model)", "",
          f"Command: `{cmd}` (resumable; `--report-only` rewrites this file)  ", f"CPU: {cpu_line()}  ",
          f"{n} samples per point, plain CFG, fp32, same labels and per-sample seeds everywhere; independent MNIST "
          "evaluator against the MNIST test split. NFE = model evaluations per sample (CFG's pair = one batched "
          "forward; network forwards per sample are twice this). Heun's NFE is the odd number at or below the "
          f"column's. Grids: {', '.join(f'{s} {g}' for s, g in GRID.items())} (pilot.md). Euler is DDIM exactly "
          "(tests/test_solvers.py), so it has no row of its own.", ""]
    goals = ["## Goals", ""]
    for w in WS:
        r0 = ref.get(w)
        md += [f"## w = {w:g}", "", "FID (class accuracy) by NFE; reference DDPM 256 steps: "
               + (f"**{r0['fid']:.3f}** ({r0['accuracy']:.4f})" if r0 else "not yet measured"), "",
               "| solver | " + " | ".join(str(x) for x in NFES) + " |", "|---|" + "---|" * len(NFES)]
        for solver, by in table[w].items():
            cells = [f"{by[x]['fid']:.3f} ({by[x]['accuracy']:.3f})" if x in by else "-" for x in NFES]
            md.append(f"| {solver} | " + " | ".join(cells) + " |")
        md.append("")
        at10 = [(s, by[10]) for s, by in table[w].items() if 10 in by]
        if r0 and at10:
            s, b = min(at10, key=lambda p: p[1]["fid"])
            ok = b["fid"] <= 1.1 * r0["fid"]
            goals.append(f"- w = {w:g}, 10 NFE within 10 % of DDPM-256 ({r0['fid']:.3f}, limit "
                         f"{1.1 * r0['fid']:.3f}): **{'met' if ok else 'missed'}**, best {s} {b['fid']:.3f} "
                         f"({b['fid'] / r0['fid']:.2f}x).")
        ddim10 = table[w].get("ddim", {}).get(10)
        at5 = [(s, by[5]) for s, by in table[w].items() if 5 in by and s != "ddim"]
        if ddim10 and at5:
            s, b = min(at5, key=lambda p: p[1]["fid"])
            goals.append(f"- w = {w:g}, 5 NFE better than DDIM at 10 ({ddim10['fid']:.3f}): "
                         f"**{'met' if b['fid'] < ddim10['fid'] else 'missed'}**, best {s} at {b['evaluations']} "
                         f"NFE: {b['fid']:.3f}.")
    md[len(md):] = goals + [""]
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "results.md").write_text("\n".join(md))
    keep = ("fid", "is_mean", "is_std", "precision", "recall", "accuracy", "nfe", "sample_seconds", "steps")
    (DEST / "results.json").write_text(json.dumps({
        "command": cmd, "cpu": cpu_info(), "date": time.strftime("%Y-%m-%d %H:%M"), "n": n, "grids": GRID,
        "reference": {"sampler": "ddpm", "steps": 256, "rows": {str(w): {k: r.get(k) for k in keep}
                                                                for w, r in ref.items()}},
        "solvers": {str(w): {s: {str(x): {k: r.get(k) for k in keep} | {"evaluations": r["evaluations"]}
                                 for x, r in by.items()} for s, by in table[w].items()} for w in WS}},
        indent=1) + "\n")
    plot(table, ref, DEST / "quality_per_nfe.png")
    print(DEST / "results.md")


def plot(table: dict[float, dict[str, dict[int, dict[str, Any]]]], ref: dict[float, dict[str, Any]],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(WS), figsize=(5.2 * len(WS), 7), sharex=True)
    for j, w in enumerate(WS):
        for solver, by in table[w].items():
            xs = sorted(by)
            nfe = [by[x]["evaluations"] for x in xs]
            axes[0, j].plot(nfe, [by[x]["fid"] for x in xs], "o-", label=solver)
            axes[1, j].plot(nfe, [1 - by[x]["accuracy"] for x in xs], "o-", label=solver)
        if w in ref:
            axes[0, j].axhline(ref[w]["fid"], color="k", ls="--", lw=1, label="DDPM 256")
            axes[1, j].axhline(1 - ref[w]["accuracy"], color="k", ls="--", lw=1, label="DDPM 256")
        axes[0, j].set(xscale="log", yscale="log", title=f"w = {w:g}", ylabel="FID (domain)")
        axes[1, j].set(xscale="log", xlabel="model evaluations per sample (NFE)", ylabel="class error")
        axes[1, j].set_yscale("symlog", linthresh=1e-3)
        axes[1, j].set_ylim(bottom=0)
        axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def precision(pipe: Any, n: int, solver: str, steps: int) -> None:
    """bf16 autocast against fp32 for one solver: how far samples move, FID/accuracy, and speed."""
    import statistics

    import torch

    from diffguide.precision import cpu_has_native_bf16

    cfgs = {p: SamplingConfig(sampler=solver, steps=steps, grid=GRID.get(solver, "schedule"), precision=p)
            for p in ("fp32", "bf16")}
    rows = {p: {r["w"]: r for r in point(pipe, cfg, n)} for p, cfg in cfgs.items()}
    labels = torch.arange(200) % 10
    moved, times = {}, {"fp32": [], "bf16": []}
    for w in WS:
        x = {p: pipe.sample(labels, w, sampling=cfg) for p, cfg in cfgs.items()}
        d = (x["bf16"] - x["fp32"]).abs()
        moved[w] = (d.mean().item(), d.amax(dim=(1, 2, 3)).median().item(), d.max().item())
    for _ in range(3):  # alternate, so both see the same machine load
        for p, cfg in cfgs.items():
            t0 = time.perf_counter()
            pipe.sample(labels, 1.0, sampling=cfg)
            times[p].append(time.perf_counter() - t0)
    speed = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    cmd = f"python benchmarks/solvers.py --phase precision --solver {solver} --steps {steps}"
    lines = [f"# bf16 autocast against fp32 sampling ({cfgs['fp32'].describe().rsplit(',', 1)[0]})", "",
             f"Command: `{cmd}`  ", f"CPU: {cpu_line()} (native bf16: {cpu_has_native_bf16()})  ",
             f"FID and accuracy from {n} samples per point; sample differences from 200 samples in [-1, 1] "
             "(same seeds); speed: median of 3 alternating runs of 200 samples at w = 1, CFG.", "",
             "| w | FID fp32 | FID bf16 | acc fp32 | acc bf16 | mean abs diff | median per-sample max | max |",
             "|---|---|---|---|---|---|---|---|"]
    for w in WS:
        a, b = rows["fp32"][w], rows["bf16"][w]
        lines.append(f"| {w:g} | {a['fid']:.3f} | {b['fid']:.3f} | {a['accuracy']:.4f} | {b['accuracy']:.4f} | "
                     f"{moved[w][0]:.2e} | {moved[w][1]:.2e} | {moved[w][2]:.2e} |")
    t32, t16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    lines += ["", f"Speed: fp32 {t32:.2f} s, bf16 {t16:.2f} s per 200 samples: bf16 is **{speed:.2f}x** "
              "fp32's speed on this machine."]
    DEST.mkdir(parents=True, exist_ok=True)
    (DEST / "precision.md").write_text("\n".join(lines) + "\n")
    (DEST / "precision.json").write_text(json.dumps({
        "command": cmd, "cpu": cpu_info(), "native_bf16": cpu_has_native_bf16(), "n": n,
        "rows": {p: {str(w): {k: r[k] for k in ("fid", "accuracy", "precision", "recall")} for w, r in rs.items()}
                 for p, rs in rows.items()},
        "moved": {str(w): dict(zip(("mean", "median_sample_max", "max"), m, strict=True)) for w, m in moved.items()},
        "seconds_per_200": times, "bf16_speedup": speed}, indent=1) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["pilot", "main", "precision"], default="main")
    ap.add_argument("--n", type=int, default=None, help="samples per point (pilot 500, else 2000)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--nfe", default=",".join(map(str, ORDER)),
                    help="main phase: these NFE points only (the report shows every finished point)")
    ap.add_argument("--no-reference", action="store_true", help="main phase: skip the DDPM-256 reference")
    ap.add_argument("--solver", default=DEMO_SWEEP[0], help="precision phase: the solver (default: the demo's)")
    ap.add_argument("--steps", type=int, default=DEMO_SWEEP[1], help="precision phase: its steps")
    a = ap.parse_args()
    pipe = dg.load("mnist")
    if a.phase == "pilot":
        pilot(pipe, a.n or 500)
        return
    n = a.n or 2000
    if a.phase == "precision":
        precision(pipe, n, a.solver, a.steps)
        return
    if a.phase == "main" and not a.report_only:
        wanted = {int(x) for x in a.nfe.split(",") if x}
        todo = [t for t in configs() if t[1] in wanted]
        if not a.no_reference:  # after the 10- and 5-NFE points
            todo.insert(sum(1 for t in todo if t[1] in (10, 5)), ("ddpm", 256, REFERENCE))
        for solver, nfe, cfg in todo:
            ws = tuple(w for w in WS if w not in recorded(cfg, n))
            if not ws:
                continue
            t0 = time.time()
            point(pipe, cfg, n, ws)
            print(f"{solver} NFE {nfe} ({cfg.describe()}): {time.time() - t0:.0f} s", flush=True)
    report(n)


if __name__ == "__main__":
    main()
