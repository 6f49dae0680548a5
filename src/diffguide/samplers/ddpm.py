"""Ancestral DDPM sampling over a log-SNR grid: the CFG paper's Algorithm 2 (Ho & Salimans 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, ModelFn, Noise, Run, predict, prepare, transitions

TAKES = frozenset({"mean_grad", "hold"})


@torch.no_grad()
def ddpm(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, v: float = 0.0,
         noise: Noise | None = None, clip_x0: float | None = None, callback: Callback | None = None) -> Tensor:
    """Ancestral sampling from ``z`` at ``lams[0]``; returns ``x`` shaped like ``z``.

    Each step ``lam -> lam'`` (CFG paper, Algorithm 2), with ``r = exp(lam - lam')``:
    ``mu = r (alpha'/alpha) z + (1 - r) alpha' x0`` and variance
    ``Sigma = (sigma~^2)^(1-v) (sigma^2_{lam|lam'})^v``, ``sigma~^2 = (1 - r) sigma'^2``,
    ``sigma^2_{lam|lam'} = (1 - r) sigma^2``; ``v = 0`` is the posterior variance. The step to
    ``lam' = +inf`` returns ``x0``.

    A prediction's ``mean_grad`` (``s * grad_z log p(c|z)``) shifts the mean to ``mu + Sigma mean_grad``
    (classifier guidance, Dhariwal & Nichol 2021, Algorithm 1).
    """
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"v (variance interpolation) must be in [0, 1], got {v!r}")
    grid, noise = prepare(z, lams, noise)
    run = Run(model, "ddpm", TAKES)
    for i, lam, lam_next, (alpha, sigma), (alpha_n, sigma_n) in transitions(grid):
        x0, _, pred = predict(run, z, i, lam, alpha, sigma, clip_x0, callback, lam_next == math.inf)
        if pred.hold:
            continue
        if lam_next == math.inf:
            return x0
        one_minus_r = -math.expm1(lam - lam_next)
        mu = (1.0 - one_minus_r) * (alpha_n / alpha) * z + one_minus_r * alpha_n * x0
        var = one_minus_r * sigma_n ** (2 * (1 - v)) * sigma ** (2 * v)
        if pred.mean_grad is not None:
            mu = mu + var * pred.mean_grad
        z = mu + math.sqrt(var) * noise()
    return z
