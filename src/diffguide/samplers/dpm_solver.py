"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, second order, in data prediction.

The solver works in the half log-SNR ``lambda_DPM = log(alpha / sigma) = lam / 2``, so a step
``lam -> lam'`` has ``h = (lam' - lam) / 2``. It integrates the probability-flow ODE with the data
prediction ``x0`` rather than ``eps``: under strong guidance ``x0`` stays bounded while the guided
``eps`` grows with ``w``, which is why the authors recommend this form for guided sampling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Callback, ModelFn, Noise, Step, solve

TAKES = frozenset({"eps_renoise", "hold"})


@torch.no_grad()
def dpmpp_2m(model: ModelFn, z: Tensor, lams: Tensor | list[float], *, lower_order_final: bool = False,
             noise: Noise | None = None, clip_x0: float | None = None, callback: Callback | None = None) -> Tensor:
    """Sample with DPM-Solver++(2M) from ``z`` at ``lams[0]`` to the clean end; one evaluation per step.

    With ``x0_i`` the data prediction at ``lam_i``, ``h_i = (lam_{i+1} - lam_i)/2`` and
    ``r_i = h_{i-1}/h_i``, each step is (Lu et al. 2022, Algorithm 2)::

        D_i     = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}      (D_0 = x0_0: the first step is DDIM)
        z_{i+1} = (sigma_{i+1}/sigma_i) z_i - alpha_{i+1} (exp(-h_i) - 1) D_i

    The step to ``lam = +inf`` returns ``x0``: the first-order step's limit (a second-order one diverges
    as ``h -> inf``), which is what the authors' ``lower_order_final`` (advised below ~15 steps) does on
    their last step. ``lower_order_final=True`` here also makes the last step between finite ``lam``
    first order (on a grid ending at a finite ``lam``, its last step: the authors' case). A
    prediction's ``eps_renoise`` (CFG++) adds ``sigma_{i+1} (eps_renoise - eps)`` to the update: CFG++'s
    change of the DDIM step (``z' = alpha' x0 + sigma' eps_u``) carried over to the multistep update,
    exact at first order.
    ``noise`` is accepted for a uniform signature and unused (the solver is deterministic).
    """
    prev: list[tuple[float, Tensor]] = []  # (lam, x0) of the previous evaluation

    def update(s: Step) -> Tensor:
        h = (s.lam_next - s.lam) / 2
        D = s.x0
        if prev and not (lower_order_final and s.last_finite):
            half_inv_r = (s.lam_next - s.lam) / (2 * (s.lam - prev[0][0]))  # 1 / (2 r_i)
            D = (1 + half_inv_r) * s.x0 - half_inv_r * prev[0][1]
        prev[:] = [(s.lam, s.x0)]
        z = (s.sigma_n / s.sigma) * s.z - (s.alpha_n * math.expm1(-h)) * D
        return z if s.pred.eps_renoise is None else z + s.sigma_n * (s.pred.eps_renoise - s.eps)

    return solve(model, z, lams, "dpmpp-2m", TAKES, update, noise=noise, clip_x0=clip_x0, callback=callback,
                 min_steps=3)
