"""EDM's deterministic samplers (Karras et al. 2022, Algorithm 1) on a VP eps-model: Heun and Euler.

EDM writes the probability-flow ODE for ``x = z / alpha`` in ``s = sigma / alpha = exp(-lam / 2)``
(its sigma): ``dx/ds = (x - D(x; s)) / s``, and for an eps-model ``(x - D) / s`` is just ``eps``. So a
VP model is sampled through ``x = z / alpha``, ``s = exp(-lam / 2)`` and ``dx/ds = eps``, and mapped back
with ``z = alpha x`` at every grid point. Euler in these variables is DDIM (eta = 0) exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, ModelFn, Noise, Step, solve

TAKES = frozenset({"hold"})
# Heun integrates linearly in s = exp(-lam/2): from s = 22026 (lam = -20, the CFG schedule's noisy end) its
# trapezoidal step multiplies the change of eps across the step by s/2 (FID 672 on the shipped model,
# benchmarks/results/solvers/pilot.md). EDM starts at s = 80; grids starting above S_START_MAX are refused.
S_START_MAX = 1000.0


@torch.no_grad()
def heun(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, noise: Noise | None = None,
         clip_x0: float | None = None, callback: Callback | None = None) -> Tensor:
    """Sample with EDM's Heun method (Algorithm 1, no churn): two evaluations per step, one on the last,
    ``2 N - 1`` for a grid of ``N`` steps. Each step ``s -> s'`` (``x = z / alpha``)::

        d   = eps(x, s)                  Euler:  x_e = x + (s' - s) d
        d'  = eps(x_e, s')               Heun:   x'  = x + (s' - s) (d + d') / 2

    and the step to ``s' = 0`` (``lam = +inf``) is Euler's, which returns ``x0``. ``noise`` is unused.
    """

    def check(grid: list[float]) -> None:
        if -grid[0] / 2 > math.log(S_START_MAX):
            raise ValueError(f"the heun sampler integrates linearly in EDM's sigma = exp(-lam/2); this grid starts "
                             f"at lam = {grid[0]:.4g} (sigma = {math.exp(min(-grid[0] / 2, 700)):.4g}), where a Heun "
                             f"step multiplies the network's error by ~sigma/2: start at sigma <= {S_START_MAX:g} "
                             f"(lam >= {-2 * math.log(S_START_MAX):.3g}), e.g. grid='karras' (EDM's sigma 0.002..80)")

    def update(s: Step) -> Tensor:
        x, ds = s.z / s.alpha, s.sigma_n / s.alpha_n - s.sigma / s.alpha
        _, eps2, _ = s.evaluate(s.alpha_n * (x + ds * s.eps))  # d' at the Euler point
        return s.alpha_n * (x + ds * 0.5 * (s.eps + eps2))

    return solve(model, z, lams, "heun", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback,
                 min_steps=2, check=check)


@torch.no_grad()
def euler(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, noise: Noise | None = None,
          clip_x0: float | None = None, callback: Callback | None = None) -> Tensor:
    """Sample with Euler's method in EDM's variables: ``x' = x + (s' - s) eps(x, s)``, one evaluation per
    step; the step to ``lam = +inf`` returns ``x0``. Equal to DDIM (eta = 0) up to rounding."""

    def update(s: Step) -> Tensor:
        return s.alpha_n * (s.z / s.alpha + (s.sigma_n / s.alpha_n - s.sigma / s.alpha) * s.eps)

    return solve(model, z, lams, "euler", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback)
