"""Plots of a guidance sweep: the quality/diversity trade-off as guidance grows.

One 2x2 figure: FID, IS (± std over splits) and precision & recall against guidance strength,
and the FID-vs-IS frontier (CFG paper, Fig. 2), one point per setting, annotated. CFG settings are
plotted against ``w``, classifier-guidance settings against their scale ``s`` (on the conditional
model the CFG weight ``w`` and the CG scale ``s`` are the same knob in theory, CFG being CG with
the implicit classifier; on the unconditional model ``s = w + 1`` aims at the same target).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_sweep", "sweep_series"]

Row = dict[str, Any]


def sweep_series(rows: Sequence[Row]) -> list[tuple[str, str, list[tuple[float, Row]]]]:
    """Rows grouped into ``(label, x-symbol, [(x, row), ...])`` series sorted by ``x``: CFG rows
    (``cg_scale == 0``) against ``w``; classifier-guided rows against ``s``, one series per
    (model, ``w``), starting at ``s = 0`` with the matching unguided row when there is one; rows of
    another guidance method (a ``guidance`` entry) one series per method, against ``w``."""
    plain = [r for r in rows if not r.get("guidance")]
    cond_plain = {r["w"]: r for r in plain if not r["unconditional"] and not r["cg_scale"]}
    out: list[tuple[str, str, list[tuple[float, Row]]]] = []
    if cond_plain:
        out.append(("CFG", "w", sorted(cond_plain.items(), key=lambda p: p[0])))
    methods: dict[str, list[tuple[float, Row]]] = {}
    for r in rows:
        if r.get("guidance"):
            methods.setdefault(r["method"], []).append((r["w"], r))
    out += [(m, "w", sorted(pts, key=lambda p: p[0])) for m, pts in methods.items()]
    groups: dict[tuple[bool, float], list[tuple[float, Row]]] = {}
    for r in plain:
        if r["cg_scale"] or r["unconditional"]:
            groups.setdefault((bool(r["unconditional"]), r["w"]), []).append((r["cg_scale"], r))
    for (unc, w), pts in sorted(groups.items()):
        if not unc and w in cond_plain:
            pts.append((0.0, cond_plain[w]))
        if unc:
            label = "CG, unconditional model"
        else:
            label = "CG, conditional model" if w == 0 else f"CG + CFG (w = {w:g})"
        out.append((label, "s", sorted(pts, key=lambda p: p[0])))
    return out


def _num(x: float) -> str:
    return f"{x:g}"


def plot_sweep(rows: Sequence[Row], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Write the 2x2 sweep figure of ``rows`` (as :func:`~diffguide.experiments.run_sweep` returns
    them) to ``path`` (PNG) and return the path. Metrics a row lacks are left out."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display; set here so importing diffguide changes nothing
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("no rows to plot")
    series = sweep_series(rows)
    xs = sorted({x for _, _, pts in series for x, _ in pts})
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (ax_fid, ax_is), (ax_pr, ax_front) = axes
    colors = [f"C{i}" for i in range(10)]
    annotated: set[int] = set()  # a row shared by two series (w = 0 = s) is labelled once

    def line(ax: Any, metric: str, color: str, label: str | None, pts: list[tuple[float, Row]], **kw: Any) -> None:
        got = [(x, r[metric]) for x, r in pts if r.get(metric) is not None]
        if got:
            ax.plot(*zip(*got, strict=True), color=color, label=label, **kw)

    for (label, sym, pts), color in zip(series, colors, strict=False):
        name = f"{label} (x = {sym})"
        line(ax_fid, "fid", color, name, pts, marker="o")
        got = [(x, r["is_mean"], r.get("is_std") or 0.0) for x, r in pts if r.get("is_mean") is not None]
        if got:
            x, m, sd = zip(*got, strict=True)
            ax_is.errorbar(x, m, yerr=sd, color=color, marker="o", capsize=3, label=name)
        line(ax_pr, "precision", color, f"precision, {label}", pts, marker="o")
        line(ax_pr, "recall", color, f"recall, {label}", pts, marker="s", linestyle="--", markerfacecolor="none")
        front = [(r["fid"], r["is_mean"], x, r) for x, r in pts if r.get("fid") is not None
                 and r.get("is_mean") is not None]
        if front:
            f, i, *_ = zip(*front, strict=True)
            ax_front.plot(f, i, color=color, marker="o", label=label)
            for fi, ii, xi, r in front:
                if id(r) not in annotated:
                    annotated.add(id(r))
                    ax_front.annotate(f"{sym}={_num(xi)}", (fi, ii), textcoords="offset points", xytext=(4, 4),
                                      fontsize=7, color=color)

    for ax, ylabel, t in ((ax_fid, "FID (lower is better)", "FID"), (ax_is, "IS (higher is better)", "Inception Score"),
                          (ax_pr, "precision, recall", "Precision (solid) and recall (dashed)")):
        # symlog: linear on [0, 1] where the small weights live, logarithmic beyond
        if xs and max(xs) > 2:
            ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
        ax.set_xticks(xs)
        ax.set_xticklabels([_num(x) for x in xs], fontsize=7, rotation=90 if len(xs) > 8 else 0)
        ax.set_xlabel("guidance strength (w for CFG, s for CG)")
        ax.set_ylabel(ylabel)
        ax.set_title(t)
        ax.grid(alpha=0.3)
    ax_pr.set_ylim(-0.02, 1.02)
    ax_front.set_xlabel("FID (lower is better)")
    ax_front.set_ylabel("IS (higher is better)")
    ax_front.set_title("FID vs IS frontier (one point per setting)")
    ax_front.grid(alpha=0.3)
    for ax in axes.flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
