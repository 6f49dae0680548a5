"""Guidance rescale (Lin et al. 2023, "Common diffusion noise schedules are flawed", §3.4, Alg. 2).

Acts on the denoised prediction ``x0``, as the paper does (diffusers rescales the raw eps/v output
instead): ``x_r = x_cfg * std(x_c) / std(x_cfg)`` per sample over ``C, H, W``, then
``x = phi x_r + (1 - phi) x_cfg``. ``phi = 0`` is the guided prediction unchanged; the paper
recommends ``phi = 0.7``.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..prediction import bcast, eps_from_x0, x0_from_eps

__all__ = ["rescale", "rescale_x0", "check_phi"]


def check_phi(phi: float) -> float:
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not math.isfinite(phi) or not 0 <= phi <= 1:
        raise ValueError(f"rescale phi = {phi!r} is invalid: expected a number in [0, 1]")
    return float(phi)


def rescale_x0(x_cfg: Tensor, x_c: Tensor, phi: float) -> Tensor:
    """The paper's rescale on denoised predictions ``(B, ...)``."""
    std_c = x_c.flatten(1).std(1)
    std_cfg = x_cfg.flatten(1).std(1)
    x_r = x_cfg * bcast(std_c / std_cfg, x_cfg)
    return phi * x_r + (1 - phi) * x_cfg


def rescale(eps: Tensor, eps_c: Tensor, z: Tensor, lam: Tensor, phi: float) -> Tensor:
    """The guided ``eps`` whose ``x0`` is rescaled to the conditional ``x0``'s std (see module)."""
    if phi == 0:
        return eps
    x0 = rescale_x0(x0_from_eps(z, eps, lam), x0_from_eps(z, eps_c, lam), phi)
    return eps_from_x0(z, x0, lam)
