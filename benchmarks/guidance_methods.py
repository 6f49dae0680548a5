"""Every guidance method against plain CFG on the shipped MNIST model (issue #15).

    python benchmarks/guidance_methods.py [--n 2000] [--steps 25] [--only cfg,interval,...]
    -> benchmarks/results/guidance_methods/{results.md, results.json, frontier.png}

One sweep folder (`out/guidance_methods/`, resumable: rerun the same command after an interruption)
holds every method's settings, all with the same labels and per-sample seeds, DDIM 25 steps, fp32,
scored by the shipped independent MNIST evaluator against the MNIST test split. Each row records
the network evaluations per sample (NFE: a CFG step costs 2, a step outside a guidance interval 1)
and the sampling seconds. The goals of the issue are checked from the rows and written into
results.md as measured, met or not.
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
from diffguide.experiments.sweep import Setting, markdown_table, read_rows, run_sweep  # noqa: E402
from diffguide.guidance import GuidanceSpec  # noqa: E402

# Which methods, at which strengths (w; CFG++'s lambda is 1 + w). Parameters are the papers'
# recommendations unless a comment says how they were chosen (the pilot: results/guidance_methods/pilot.md).
METHODS: dict[str, tuple[GuidanceSpec, list[float]]] = {
    "cfg": (GuidanceSpec(), [0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0]),
    # 10 of DDIM's 25 steps lie in lam [-1.6, 1] (sigma 0.61 ... 2.23): NFE 35 = 0.7x CFG's 50 (pilot.md)
    "interval": (GuidanceSpec(interval=(-1.6, 1.0)), [0.5, 1.0, 2.0, 3.0, 4.0]),
    "apg": (GuidanceSpec(rule="apg", beta=-0.5, r=1.0, eta=0.0), [0.5, 1.0, 2.0, 3.0, 4.0]),  # r = 1: pilot.md
    "rescale": (GuidanceSpec.method("rescale"), [0.3, 0.5, 1.0, 2.0, 3.0, 4.0]),  # phi = 0.7 (Lin et al.)
    "cfg-zero": (GuidanceSpec(rule="cfg-zero"), [0.2, 0.5, 1.0, 2.0, 3.0]),  # 1 of 25 steps held (~4 %)
    "cfgpp": (GuidanceSpec(rule="cfgpp"), [-0.8, -0.6, -0.4, -0.2, 0.0]),  # lambda = 0.2 ... 1.0
    "interval-paper": (GuidanceSpec.method("interval"), [0.5, 1.0, 2.0, 3.0, 4.0]),  # sigma 0.28 ... 1.61
    "threshold": (GuidanceSpec(threshold=0.995), [0.5, 1.0, 2.0, 3.0, 4.0]),  # Imagen's p
    "apg+interval": (GuidanceSpec(rule="apg", r=1.0, interval=(-1.6, 1.0)), [1.0, 2.0, 3.0, 4.0, 6.0]),
    "linear": (GuidanceSpec(w_schedule="linear"), [0.2, 0.5, 1.0, 2.0, 3.0]),
}


def settings(names: list[str]) -> list[Setting]:
    out = []
    for name in names:
        spec, ws = METHODS[name]
        out += [Setting(w, guidance=spec) for w in ws]
    return out


def best(rows: list[dict[str, Any]], min_acc: float) -> dict[str, Any] | None:
    ok = [r for r in rows if r["accuracy"] >= min_acc]
    return min(ok, key=lambda r: r["fid"]) if ok else None


def goals(by: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The issue's three goals, checked on the rows (each line says met or missed, with the figures)."""
    cfg = by.get("cfg", [])
    if not cfg:
        return ["(no plain CFG rows yet: no goal can be checked)"]
    top = min(cfg, key=lambda r: r["fid"])
    out = [f"- Plain CFG's best FID: **{top['fid']:.3f}** at w = {top['w']:g} (accuracy {top['accuracy']:.4f}, "
           f"NFE {top['nfe']:g})."]
    # 1. beats plain CFG's best FID at equal or higher class accuracy
    wins = [(m, r) for m, rs in by.items() if m != "cfg" for r in rs
            if r["fid"] < top["fid"] and r["accuracy"] >= top["accuracy"]]
    if wins:
        m, r = min(wins, key=lambda p: p[1]["fid"])
        out.append(f"- Goal 1 **met**: {m} at w = {r['w']:g}: FID {r['fid']:.3f} < {top['fid']:.3f} at accuracy "
                   f"{r['accuracy']:.4f} >= {top['accuracy']:.4f}.")
    else:
        out.append(f"- Goal 1 **missed**: no method beats FID {top['fid']:.3f} at accuracy >= {top['accuracy']:.4f}.")
    # 2. interval guidance matching plain CFG's best FID (within 5 %) at <= 0.7x its forwards
    cand = [(m, r) for m, rs in by.items() if "interval" in m for r in rs if r["fid"] <= 1.05 * top["fid"]]
    if cand:
        m, r = min(cand, key=lambda p: (p[1]["nfe"], p[1]["fid"]))
        ratio = r["nfe"] / top["nfe"]
        verdict = "met" if ratio <= 0.7 else "missed"
        out.append(f"- Goal 2 **{verdict}**: {m} at w = {r['w']:g}: FID {r['fid']:.3f} (CFG best {top['fid']:.3f}) "
                   f"at {r['nfe']:g} NFE = {ratio:.2f}x CFG's {top['nfe']:g}.")
    else:
        fids = [f"{r['fid']:.3f}" for m, rs in by.items() if "interval" in m for r in rs]
        out.append(f"- Goal 2 **missed**: no interval setting within 5 % of FID {top['fid']:.3f} "
                   f"(interval FIDs: {', '.join(fids) or 'none run'}).")
    # 3. at strong guidance (accuracy >= 0.999), a method with at most half plain CFG's FID
    strong = best(cfg, 0.999)
    if strong is None:
        out.append("- Goal 3: plain CFG never reaches accuracy 0.999 here: not checked.")
    else:
        alts = [(m, best(rs, 0.999)) for m, rs in by.items() if m != "cfg"]
        alts = [(m, r) for m, r in alts if r is not None]
        if alts:
            m, r = min(alts, key=lambda p: p[1]["fid"])
            verdict = "met" if r["fid"] <= 0.5 * strong["fid"] else "missed"
            out.append(f"- Goal 3 **{verdict}**: at accuracy >= 0.999 plain CFG's best FID is {strong['fid']:.3f} "
                       f"(w = {strong['w']:g}); the best other is {m} at w = {r['w']:g}: FID {r['fid']:.3f} "
                       f"= {r['fid'] / strong['fid']:.2f}x.")
        else:
            out.append("- Goal 3 **missed**: no other method reaches accuracy 0.999.")
    return out


def frontier(by: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    worst = max(1 - r["accuracy"] for rs in by.values() for r in rs)
    for m, rs in by.items():
        rs = sorted(rs, key=lambda r: r["w"])
        style = dict(lw=2.5, color="k", zorder=5) if m == "cfg" else dict(lw=1.2)
        acc = [1 - r["accuracy"] for r in rs]
        axes[0].plot(acc, [r["fid"] for r in rs], "o-", label=m, **style)
        axes[1].plot([r["nfe"] for r in rs], [r["fid"] for r in rs], "o", label=m, **style)
    axes[0].set(xscale="symlog", yscale="log", xlabel="class error = 1 - accuracy (symlog)", ylabel="FID (domain)",
                title="FID vs class accuracy, one point per strength")
    axes[0].set_xscale("symlog", linthresh=1e-3)
    axes[0].set_xlim(worst * 1.3, 0)  # more accurate to the right
    axes[1].set(yscale="log", xlabel="network evaluations per sample", ylabel="FID (domain)", title="cost")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated method names")
    ap.add_argument("--out", default=str(ROOT / "out" / "guidance_methods"))
    ap.add_argument("--report-only", action="store_true", help="tabulate the finished rows, sample nothing")
    a = ap.parse_args()
    names = [m for m in a.only.split(",") if m]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; expected some of {sorted(METHODS)}")
    pipe = dg.load("mnist")
    out = Path(a.out)
    t0 = time.time()
    if not a.report_only:
        for name in names:  # one method at a time, so an interruption leaves whole methods behind
            run_sweep(pipe, settings([name]), n=a.n, sampler="ddim", steps=a.steps, seed=0, out=out, plot=False)
    # every finished setting, also of a method cut short (results.json is written only after a whole method)
    rows = list({r["tag"]: r for r in read_rows(out / "results.jsonl")}.values())
    spec_of = {json.dumps(s.asdict(), sort_keys=True): m for m in METHODS for s in [METHODS[m][0]]}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("n") != a.n or r.get("steps") != a.steps:
            continue
        m = spec_of.get(json.dumps(r.get("guidance") or {}, sort_keys=True))
        if m is not None:
            by.setdefault(m, []).append(r)
    dest = RESULTS / "guidance_methods"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join(["benchmarks/guidance_methods.py", *sys.argv[1:]])
    keep = ("tag", "method", "w", "fid", "is_mean", "is_std", "precision", "recall", "accuracy", "nfe",
            "sample_seconds", "guidance")
    (dest / "results.json").write_text(json.dumps(
        {"command": cmd, "cpu": cpu_info(), "date": time.strftime("%Y-%m-%d %H:%M"), "n": a.n, "steps": a.steps,
         "sampler": "ddim", "precision": "fp32", "methods": {m: {"spec": METHODS[m][0].asdict(),
                                                                "rows": [{k: r.get(k) for k in keep} for r in rs]}
                                                            for m, rs in by.items()}}, indent=1) + "\n")
    md = ["# Guidance methods against plain CFG (shipped MNIST model)", "",
          f"Command: `{cmd}`  ", f"{a.n} samples per setting, DDIM {a.steps} steps, fp32, same labels and per-sample "
          "seeds in every setting; independent MNIST evaluator, reference = MNIST test split. NFE = network "
          "evaluations per sample. Sampling seconds were measured while the machine was shared and are not a "
          "speed result.", "", "## Goals", "", *goals(by), "", "## All settings", ""]
    for m, rs in by.items():
        md += [f"### {m}: `{json.dumps(METHODS[m][0].asdict())}`", "", markdown_table(sorted(rs, key=lambda r: r["w"])),
               ""]
    (dest / "results.md").write_text("\n".join(md))
    if by:
        frontier(by, dest / "frontier.png")
    print(dest / "results.md", f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
