"""Autoguidance against CFG on the exact 2-D mixture (Karras et al. 2024, Sec. 3's toy experiment, with
diffguide's own mixture, :meth:`GaussianMixture.example_2d`).

Two MLP eps-models learn the mixture from exact samples: the **main** model, and a **guide** that is
smaller *and* trained for a fraction of the steps (the paper's recipe: a worse version of the same model,
whose errors are of the same kind but larger). Both are class-conditional and trained with label dropout,
so the main model also gives plain CFG. Each method samples the same per-sample noise:

- ``conditional``: the main model at ``w = 0``;
- ``cfg``: ``(1 + w) eps(z, c) - w eps(z)`` with the main model's own unconditional prediction;
- ``autoguidance``: ``(1 + w) eps(z, c) - w eps_guide(z, c)``, the guide under the same condition;
- ``cfg (exact)``: CFG with the exact mixture as the network, the limit of a perfect model.

and is scored by the exact density, which is known here:

- ``log_lik``: the mean exact ``log p(x | c)`` of the samples (higher: closer to the class's bulk);
- ``off_data``: the share of samples below the 1st percentile of ``log p(x | c)`` over exact draws of
  ``p(x | c)`` (the paper's complaint about CFG: samples pushed off the data);
- ``mode_tv``: for classes of several components, the total-variation distance between the share of
  samples each component holds (by its exact responsibility) and its true weight, averaged over those
  classes (0: modes kept in proportion; dropping a mode makes it large).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..guidance import guided
from ..nets.blocks import LamEmbedding
from ..noise import PerSampleNoise, sample_seeds
from ..prediction import eps_from_v
from ..reference import GaussianMixture
from ..samplers import ddim
from ..schedule import ContinuousSchedule, Schedule
from ..training.losses import DiffusionLoss
from .gmm_demo import _COLORS, _hdr_levels, _intra_op_threads

__all__ = ["ToyMLP", "train_toy", "toy_metrics", "AutoguidanceToy", "autoguidance_toy"]


class ToyMLP(nn.Module):
    """A class-conditional eps-model for low-dimensional data (network protocol):
    ``h = W z + emb(lam) + emb(c)``, then ``depth`` residual SiLU layers of ``width``, then a linear head.
    Label ``num_classes`` is the null condition (a learned embedding, trained by label dropout)."""

    def __init__(self, dim: int = 2, num_classes: int = 3, width: int = 256, depth: int = 4,
                 schedule: Schedule | None = None) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("num_classes", num_classes), ("width", width), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.sample_shape = (dim,)
        self.num_classes = self.null_label = num_classes
        self.train_schedule = schedule or ContinuousSchedule()
        self.inp = nn.Linear(dim, width)
        self.lam_emb = LamEmbedding(width)
        self.c_emb = nn.Embedding(num_classes + 1, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def null_condition(self, c: Tensor) -> Tensor:
        return torch.full_like(c, self.null_label)

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        h = self.inp(z.float()) + self.lam_emb(lam) + self.c_emb(c)
        for layer in self.layers:
            h = h + layer(nn.functional.silu(h))
        # The head predicts v and returns eps = sigma z + alpha v (Salimans & Ho 2022): eps's error is then
        # alpha times v's, so the near-identity eps ~ z at high noise is exact by construction. A direct eps
        # head's small errors there (~0.02 at lam = -10) grow by alpha'/alpha (~500) over a sampler's first
        # step from lam = -20 and threw the samples off the plot.
        return eps_from_v(z, self.out(nn.functional.silu(h)).to(z.dtype), lam.to(z.dtype))


def train_toy(net: ToyMLP, gmm: GaussianMixture, *, steps: int, batch: int = 1024, lr: float = 2e-3,
              p_uncond: float = 0.1, seed: int = 0) -> list[float]:
    """Adam on the CFG paper's loss (label dropout ``p_uncond``) with fresh exact draws every step and the
    learning rate decayed linearly to 0; returns the loss of every step. Deterministic given ``seed``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    g = torch.Generator().manual_seed(seed)
    loss_fn = DiffusionLoss(net.train_schedule, p_uncond)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    net.train()
    losses = []
    for _ in range(steps):
        x, c = gmm.sample(batch, generator=g)
        loss, _ = loss_fn(net, x, c, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    net.eval()
    return losses


def toy_metrics(gmm: GaussianMixture, x: Tensor, c: Tensor, floor: Tensor) -> dict[str, Any]:
    """The module doc's scores of samples ``x`` at labels ``c``; ``floor[k]`` is class k's 1st percentile
    of ``log p(x | k)`` over exact draws."""
    logp = gmm.log_prob(x, c).double()
    resp = gmm.component_posterior(x, c).double()  # (n, M), zero outside each sample's class
    shares: dict[str, list[float]] = {}
    tv = []
    for k in range(gmm.num_classes):
        cols = (gmm.component_class == k).nonzero().flatten()
        true = gmm.component_weights(k).double().cpu()[cols.cpu()]
        got = resp[c == k][:, cols].mean(0).cpu()
        shares[str(k)] = [round(v, 4) for v in got.tolist()]
        if len(cols) > 1:
            tv.append(0.5 * (got - true).abs().sum().item())
    return {"log_lik": logp.mean().item(), "off_data": (logp < floor[c]).double().mean().item(),
            "mode_tv": float(np.mean(tv)) if tv else 0.0, "shares": shares}


@dataclass(frozen=True)
class AutoguidanceToy:
    """What :func:`autoguidance_toy` made: ``rows`` (one per method and ``w``), the PNG, table and JSON paths."""

    rows: list[dict[str, Any]]
    png: Path
    md: Path
    json: Path


def _sample(model: Any, n: int, dim: int, steps: int, seed: int) -> Tensor:
    noise = PerSampleNoise(sample_seeds(seed, n), (dim,), dtype=torch.float64)
    with torch.no_grad():
        return ddim(model, noise(), ContinuousSchedule().grid(steps).double())


def autoguidance_toy(out: str | Path, *, ws: Sequence[float] = (0.5, 1.0, 2.0, 4.0), n: int = 3000,
                     steps: int = 64, main: tuple[int, int, int] = (128, 3, 4000),
                     guide: tuple[int, int, int] = (32, 2, 250), seed: int = 0) -> AutoguidanceToy:
    """Train the main model and the guide (``(width, depth, training steps)`` each), sample every method
    at every ``w`` (``n`` samples, classes in turn, DDIM with ``steps`` steps, float64), score them and
    write ``autoguidance_gmm.{png,md,json}`` to the folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gmm = GaussianMixture.example_2d()
    K, dim = gmm.num_classes, gmm.dim
    c = torch.arange(n) % K
    with _intra_op_threads(1):
        nets, cost = {}, {}
        for name, (width, depth, train_steps) in (("main", main), ("guide", guide)):
            torch.manual_seed(seed)
            net = ToyMLP(dim, K, width, depth)
            t0 = time.perf_counter()
            losses = train_toy(net, gmm, steps=train_steps, seed=seed + (name == "guide"))
            cost[name] = {"width": width, "depth": depth, "steps": train_steps,
                          "params": sum(p.numel() for p in net.parameters()), "seconds": time.perf_counter() - t0,
                          "final_loss": float(np.mean(losses[-100:]))}
            nets[name] = net
        exact, ce = gmm.sample(20000, torch.arange(20000) % K, generator=seed + 7, dtype=torch.float64)
        lp = gmm.log_prob(exact, ce)
        floor = torch.stack([torch.quantile(lp[ce == k], 0.01) for k in range(K)])
        rows: list[dict[str, Any]] = [{"method": "exact samples", "w": None, **toy_metrics(gmm, exact[:n], ce[:n],
                                                                                          floor)}]
        samples: dict[tuple[str, float], Tensor] = {("exact samples", 0.0): exact[:n]}
        x = _sample(guided(nets["main"], c, 0.0), n, dim, steps, seed)
        samples[("conditional", 0.0)] = x
        rows.append({"method": "conditional", "w": 0.0, **toy_metrics(gmm, x, c, floor)})
        for w in ws:
            for method, model in (("cfg", guided(nets["main"], c, w)),
                                  ("autoguidance", guided(nets["main"], c, w, guide=nets["guide"])),
                                  ("cfg (exact)", guided(gmm, c, w))):
                x = _sample(model, n, dim, steps, seed)
                samples[(method, w)] = x
                rows.append({"method": method, "w": w, **toy_metrics(gmm, x, c, floor)})
    png = out / "autoguidance_gmm.png"
    _figure(gmm, samples, c, ws, png)
    md, js = out / "autoguidance_gmm.md", out / "autoguidance_gmm.json"
    md.write_text(_table(rows, cost, n, steps))
    js.write_text(json.dumps({"rows": rows, "training": cost, "n": n, "steps": steps, "seed": seed}, indent=1) + "\n")
    return AutoguidanceToy(rows, png, md, js)


def _table(rows: list[dict[str, Any]], cost: dict[str, dict[str, Any]], n: int, steps: int) -> str:
    gmm = GaussianMixture.example_2d()
    true = {str(k): [round(v, 2) for v in gmm.component_weights(k)[gmm.component_class == k].tolist()]
            for k in range(gmm.num_classes)}
    lines = ["| method | w | mean log p(x\\|c) | off data | mode TV | component shares (true: "
             + "; ".join(f"c{k} {v}" for k, v in true.items() if len(v) > 1) + ") |", "|---|---|---|---|---|---|"]
    for r in rows:
        sh = "; ".join(f"c{k} {v}" for k, v in r["shares"].items() if len(v) > 1)
        w = "" if r["w"] is None else f"{r['w']:g}"
        lines.append(f"| {r['method']} | {w} | {r['log_lik']:.3f} | {r['off_data']:.3f} | {r['mode_tv']:.3f} | {sh} |")
    m, g = cost["main"], cost["guide"]
    head = [f"{n} samples per row (classes in turn), DDIM {steps} steps, float64, the same noise in every row. "
            f"Main model: width {m['width']}, depth {m['depth']}, {m['params']} parameters, {m['steps']} steps "
            f"({m['seconds']:.0f} s, final loss {m['final_loss']:.4f}); guide: width {g['width']}, depth "
            f"{g['depth']}, {g['params']} parameters, {g['steps']} steps ({g['seconds']:.0f} s, final loss "
            f"{g['final_loss']:.4f}). Off data: share below the 1st percentile of log p(x|c) of exact draws "
            "(exact draws: 0.01 by construction). Mode TV: total variation between component shares and "
            "true weights, mean over the two-component classes.", ""]
    return "\n".join(head + lines) + "\n"


def _figure(gmm: GaussianMixture, samples: dict[tuple[str, float], Tensor], c: Tensor, ws: Sequence[float],
            path: Path) -> None:
    """One row per shown ``w``: exact draws, the conditional model, CFG, autoguidance and exact CFG, over
    the exact class densities' 50/90/99 % highest-density regions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [w for w in ws if w in (1.0, 4.0)] or list(ws)[-2:]
    fig, axes = plt.subplots(len(shown), 5, figsize=(17, 3.5 * len(shown)), squeeze=False)
    lo, hi = (-2.6, -2.2), (2.4, 2.4)
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 240), np.linspace(lo[1], hi[1], 240))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float64)
    dens = [gmm.log_prob(pts, k).exp().reshape(gx.shape).numpy() for k in range(gmm.num_classes)]
    for i, w in enumerate(shown):
        keys = [("exact samples", 0.0), ("conditional", 0.0), ("cfg", w), ("autoguidance", w), ("cfg (exact)", w)]
        for ax, key in zip(axes[i], keys, strict=True):
            for k, d in enumerate(dens):
                ax.contour(gx, gy, d, levels=_hdr_levels(d, (0.5, 0.9, 0.99)), colors=_COLORS[k], linewidths=0.6)
            x = samples[key].numpy()
            labels = c.numpy()[:len(x)]  # exact draws use the same labels in turn
            for k in range(gmm.num_classes):
                ax.scatter(*x[labels == k][:500].T, s=2, color=_COLORS[k], alpha=0.5)
            title = key[0] if key[0] in ("exact samples", "conditional") else f"{key[0]}, w = {w:g}"
            ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
