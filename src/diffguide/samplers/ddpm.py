"""Ancestral DDPM sampling over a log-SNR grid: the CFG paper's Algorithm 2 (Ho & Salimans 2022)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .base import Callback, EpsFn, Noise, predict, prepare, transitions

MeanGrad = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def ddpm(eps_fn: EpsFn, z: Tensor, lams: Tensor | list[float], *, v: float = 0.0,
         noise: Noise | None = None, mean_grad: MeanGrad | None = None, clip_x0: float | None = None,
         callback: Callback | None = None) -> Tensor:
    """Ancestral sampling from ``z`` at ``lams[0]``; returns ``x`` shaped like ``z``.

    Each step ``lam -> lam'`` (CFG paper, Algorithm 2), with ``r = exp(lam - lam')``:
    ``mu = r (alpha'/alpha) z + (1 - r) alpha' x0`` and variance
    ``(sigma~^2)^(1-v) (sigma^2_{lam|lam'})^v``, ``sigma~^2 = (1 - r) sigma'^2``,
    ``sigma^2_{lam|lam'} = (1 - r) sigma^2``; ``v = 0`` is the posterior variance. The step to
    ``lam' = +inf`` returns ``x0``.

    ``mean_grad(z, lam)``, if given, returns ``s * grad_z log p(c|z)`` and shifts the mean by
    ``Sigma * mean_grad`` (classifier guidance, Dhariwal & Nichol 2021, Algorithm 1).
    """
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"v (variance interpolation) must be in [0, 1], got {v!r}")
    grid, noise = prepare(z, lams, noise)
    for i, lam, lam_next, (alpha, sigma), (alpha_n, sigma_n) in transitions(grid):
        x0, _ = predict(eps_fn, z, i, lam, alpha, sigma, clip_x0, callback)
        if lam_next == math.inf:
            return x0
        one_minus_r = -math.expm1(lam - lam_next)
        mu = (1.0 - one_minus_r) * (alpha_n / alpha) * z + one_minus_r * alpha_n * x0
        var = one_minus_r * sigma_n ** (2 * (1 - v)) * sigma ** (2 * v)
        if mean_grad is not None:
            mu = mu + var * mean_grad(z, torch.full((z.shape[0],), lam, dtype=z.dtype, device=z.device))
        z = mu + math.sqrt(var) * noise()
    return z
