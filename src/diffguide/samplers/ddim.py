"""DDIM (Song et al. 2021, eq. 12) over a log-SNR grid; ``eta = 0`` is the deterministic ODE sampler."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, ModelFn, Noise, Step, solve

TAKES = frozenset({"eps_renoise", "hold"})


@torch.no_grad()
def ddim(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, eta: float = 0.0,
         noise: Noise | None = None, clip_x0: float | None = None, callback: Callback | None = None) -> Tensor:
    """Sample with DDIM from ``z`` at ``lams[0]`` to the clean end; returns ``x`` shaped like ``z``.

    Each step ``lam -> lam'``: ``x0 = (z - sigma eps)/alpha``,
    ``z' = alpha' x0 + sqrt(sigma'^2 - s^2) eps_r + s xi`` with
    ``s^2 = eta^2 (1 - exp(lam - lam')) sigma'^2`` (``eta = 1``: the DDPM posterior variance) and
    ``eps_r = eps``, or the prediction's ``eps_renoise`` (CFG++). A step to ``lam' = +inf`` returns
    ``x0``. ``noise()`` supplies ``xi`` (per-sample streams: :class:`diffguide.noise.PerSampleNoise`).
    """
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")

    def update(s: Step) -> Tensor:
        eps_r = s.eps if s.pred.eps_renoise is None else s.pred.eps_renoise
        s2 = eta**2 * -math.expm1(s.lam - s.lam_next) * s.sigma_n**2
        z = s.alpha_n * s.x0 + math.sqrt(max(s.sigma_n**2 - s2, 0.0)) * eps_r
        return z + math.sqrt(s2) * s.noise() if s2 > 0 else z

    return solve(model, z, lams, "ddim", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback)
