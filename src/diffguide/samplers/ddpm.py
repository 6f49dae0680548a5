"""Ancestral DDPM sampling over a log-SNR grid: the CFG paper's Algorithm 2 (Ho & Salimans 2022)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, ModelFn, Noise, Step, solve

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

    def update(s: Step) -> Tensor:
        one_minus_r = -math.expm1(s.lam - s.lam_next)
        mu = (1.0 - one_minus_r) * (s.alpha_n / s.alpha) * s.z + one_minus_r * s.alpha_n * s.x0
        var = one_minus_r * s.sigma_n ** (2 * (1 - v)) * s.sigma ** (2 * v)
        if s.pred.mean_grad is not None:
            mu = mu + var * s.pred.mean_grad
        return mu + math.sqrt(var) * s.noise()

    return solve(model, z, lams, "ddpm", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback)
