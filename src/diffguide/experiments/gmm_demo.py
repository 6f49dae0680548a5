"""The README picture: classifier-free vs classifier guidance on the exact 2-D three-class mixture.

Row 1 is CFG with the exact mixture as the network, ``eps~ = (1 + w) eps*(z, c) - w eps*(z)``.
Row 2 is classifier guidance of the *unconditional* mixture with its exact noisy classifier at scale
``s = w + 1``, so that both rows aim at the same clean tilt
``p(x) p(c|x)^(w+1) ∝ p(x|c) p(c|x)^w`` (CFG paper, Sec. 3.2). With exact models and the score form
(DDIM) the two rows are the same sampler: ``eps*(z) - s sigma grad log p(c|z)`` *is*
``(1 + w) eps*(z, c) - w eps*(z)`` (see :mod:`diffguide.reference.gmm`), so row 2 reports its largest
distance to row 1 as a check. DDPM uses ADM's mean shift (Dhariwal & Nichol 2021, Algorithm 1) for
row 2, which only agrees with CFG as the steps shrink.

Every panel draws the same per-sample noise, so columns differ only by the guidance.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..guidance import guided
from ..noise import PerSampleNoise, sample_seeds
from ..reference import GaussianMixture
from ..samplers import ddim, ddpm
from ..schedule import ContinuousSchedule

__all__ = ["GmmDemo", "gmm_demo"]

_FIGSIZE = (12.0, 7.0)  # inches; at _DPI the PNG is 1800 x 1050 pixels
_DPI = 150
_COLORS = ("#1f77b4", "#d62728", "#2ca02c")  # one per class: blue, red, green
_HDR_MASSES = (0.5, 0.9, 0.99)  # highest-density regions drawn for each p(x|c)
_TILT_MASS = 0.9  # and for the clean-end tilt p(x|c) p(c|x)^w


@dataclass(frozen=True)
class GmmDemo:
    """What :func:`gmm_demo` made: the PNG's ``path`` (this object is also ``os.PathLike`` and prints as
    the path), the guidance weights ``ws`` (one column each), and per row (``"cfg"``, ``"cg"``) the mean
    exact ``p(c|x)`` of each column's samples at their own labels ``c``. ``max_abs_diff[j]`` is
    ``max |x_cg - x_cfg|`` over the samples of column ``j`` (same noise; ~0 for DDIM, see module doc)."""

    path: Path
    ws: tuple[float, ...]
    mean_posterior: dict[str, tuple[float, ...]]
    max_abs_diff: tuple[float, ...]

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count. The mixture's tensors are a few thousand numbers:
    extra threads cannot speed them up, and on a busy machine their spinning workers made this demo
    6-15x slower (measured on a shared 2-core box)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_args(n: int, steps: int, sampler: str, seed: int, ws: Sequence[float]) -> tuple[float, ...]:
    for name, v, lo in (("n", n, 1), ("steps", steps, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    ws = tuple(ws)
    if not 1 <= len(ws) <= 6:
        raise ValueError(f"ws must hold 1 to 6 guidance weights (one column each), got {len(ws)}")
    for w in ws:
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < -1:
            raise ValueError(f"each w must be a finite number >= -1 (CFG paper convention), got {w!r}")
    return tuple(float(w) for w in ws)


def _sample(gmm: GaussianMixture, c: Tensor, w: float, method: str, sampler: str, steps: int,
            seeds: list[int]) -> Tensor:
    """One panel's samples ``(n, 2)``: CFG at ``w`` or CG of the unconditional model at ``s = w + 1``."""
    if method == "cfg":
        eps_fn = guided(gmm, c, w)
    else:  # score form for DDIM (ADM Algorithm 2), DDPM's mean shift (ADM Algorithm 1)
        eps_fn = guided(gmm, c, 0.0, unconditional=True, classifier=gmm.as_classifier(), cg_scale=w + 1.0,
                        cg_form="mean" if sampler == "ddpm" else "score")
    noise = PerSampleNoise(seeds, (gmm.dim,))  # fresh per panel: the same z_T and step noise everywhere
    z = noise()
    sample = ddpm if sampler == "ddpm" else ddim
    return sample(eps_fn, z, ContinuousSchedule().grid(steps), noise=noise)


def _hdr_levels(density: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density thresholds whose super-level sets hold ``masses`` of a gridded density (cells equal),
    increasing as contour() wants them."""
    d = np.sort(density.ravel())[::-1]
    cum = np.cumsum(d) / d.sum()
    return sorted({float(d[min(int(np.searchsorted(cum, m)), d.size - 1)]) for m in masses})


def _limits(gmm: GaussianMixture, xs: list[Tensor]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared axis limits: every sample and each component's 3-sd box, plus margins."""
    sd = gmm.variances.sqrt()
    lo_t = torch.cat([(gmm.means - 3 * sd).float(), *xs]).amin(0)
    hi_t = torch.cat([(gmm.means + 3 * sd).float(), *xs]).amax(0)
    pad = 0.04 * (hi_t - lo_t)
    lo: list[float] = (lo_t - pad).tolist()
    hi: list[float] = (hi_t + pad).tolist()
    lo[1] -= 0.1 * (hi[1] - lo[1])  # a free strip at the bottom for the panels' notes
    return (lo[0], hi[0]), (lo[1], hi[1])


def gmm_demo(out: str | Path, *, n: int = 600, steps: int = 100, sampler: str = "ddim", seed: int = 0,
             ws: Sequence[float] = (0.0, 1.0, 3.0)) -> GmmDemo:
    """Draw CFG (row 1) and classifier guidance (row 2) on ``GaussianMixture.example_2d()`` to a PNG.

    ``n`` samples per panel, labels ``c = i mod K`` (equal numbers per class), drawn with ``sampler``
    (``"ddim"``, eta = 0, or ``"ddpm"``) over ``steps`` evaluations of the CFG paper's continuous grid,
    from per-sample noise streams of ``seed`` (the same in every panel). Column ``j`` uses CFG weight
    ``ws[j]`` (CFG paper convention, ``w = 0`` is the conditional model) and classifier scale
    ``s = ws[j] + 1``. Each panel shows the exact class densities ``p(x|c)`` (thin lines: 50/90/99%
    highest-density regions), the clean-end tilt ``p(x|c) p(c|x)^w`` (dashed: 90% region), the
    samples, and their mean exact ``p(c|x)``.

    Writes a 1800 x 1050 px PNG (12 x 7 in at 150 dpi; parent folders are created) and returns a
    :class:`GmmDemo`: the path (``os.PathLike``) and the per-panel mean ``p(c|x)`` values.
    """
    ws = _check_args(n, steps, sampler, seed, ws)
    out = Path(out)
    gmm = GaussianMixture.example_2d()
    K = gmm.num_classes
    c = torch.arange(n) % K
    seeds = sample_seeds(seed, n)

    with _intra_op_threads(1):
        xs = {m: [_sample(gmm, c, w, m, sampler, steps, seeds) for w in ws] for m in ("cfg", "cg")}
        mean_post = {m: tuple(gmm.posterior(x).gather(1, c[:, None]).mean().item() for x in xs[m]) for m in xs}
        diffs = tuple((a - b).abs().max().item() for a, b in zip(xs["cfg"], xs["cg"], strict=True))

        # Exact densities on a grid covering every sample: p(x|c) per class, and the tilt per (class, w).
        (x0, x1), (y0, y1) = _limits(gmm, xs["cfg"] + xs["cg"])
        gx, gy = np.linspace(x0, x1, 200), np.linspace(y0, y1, 200)
        GX, GY = np.meshgrid(gx, gy)
        pts = torch.from_numpy(np.stack([GX.ravel(), GY.ravel()], 1))
        dens = [gmm.log_prob(pts, k).exp().reshape(GX.shape).numpy() for k in range(K)]
        tilts = {(k, w): gmm.guided_log_density(pts, k, w).reshape(GX.shape).numpy() for k in range(K) for w in ws}

    import matplotlib

    matplotlib.use("Agg")  # files only, never a display; done here so importing diffguide changes nothing
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = {"cfg": "classifier-free guidance\n(exact mixture as the network)",
            "cg": "classifier guidance\n(unconditional + exact $p(c\\mid z)$)"}
    fig, axes = plt.subplots(2, len(ws), figsize=_FIGSIZE, dpi=_DPI, sharex=True, sharey=True, squeeze=False,
                             layout="constrained")
    for i, m in enumerate(("cfg", "cg")):
        for j, w in enumerate(ws):
            ax = axes[i, j]
            for k in range(K):
                ax.contour(GX, GY, dens[k], levels=_hdr_levels(dens[k], _HDR_MASSES), colors=_COLORS[k],
                           linewidths=0.6, alpha=0.35)
                t = tilts[(k, w)]
                tilt = np.exp(t - t.max())
                ax.contour(GX, GY, tilt, levels=_hdr_levels(tilt, [_TILT_MASS]), colors=_COLORS[k],
                           linewidths=1.1, linestyles="--", alpha=0.9)
                sel = (c == k).numpy()
                ax.scatter(*xs[m][j][sel].T.numpy(), s=3, color=_COLORS[k], alpha=0.55, linewidths=0,
                           rasterized=True)
            ax.set_title(f"CFG, w = {w:g}" if m == "cfg" else f"CG, w = {w:g} (scale s = w + 1 = {w + 1:g})",
                         fontsize=11)
            box = {"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.9}
            ax.text(0.02, 0.02, f"mean $p(c\\mid x)$\n= {mean_post[m][j]:.5f}", transform=ax.transAxes, fontsize=8.5,
                    va="bottom", ha="left", bbox=box)
            if m == "cg":
                ax.text(0.98, 0.02, f"max $|x - x_{{\\rm CFG}}|$\n= {diffs[j]:.1e}", transform=ax.transAxes, fontsize=8,
                        va="bottom", ha="right", color="0.3", bbox=box)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize=8)
        axes[i, 0].set_ylabel(rows[m], fontsize=10)

    handles = [Line2D([], [], color=_COLORS[k], marker="o", markersize=5, linestyle="", label=f"class {k}")
               for k in range(K)]
    handles += [Line2D([], [], color="0.4", linewidth=0.8, alpha=0.6, label=r"$p(x\mid c)$: 50/90/99% regions"),
                Line2D([], [], color="0.2", linewidth=1.1, linestyle="--",
                       label=r"clean tilt $p(x\mid c)\,p(c\mid x)^w$: 90% region")]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.suptitle(f"Guidance on the exact 2-D three-class mixture — {sampler.upper()}, {steps} steps, "
                 f"{n} samples per panel, the same noise in every panel", fontsize=12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=_DPI)
    plt.close(fig)
    return GmmDemo(out, ws, mean_post, diffs)
