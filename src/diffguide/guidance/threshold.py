"""Dynamic thresholding (Saharia et al. 2022, Imagen, §2.3), on the denoised prediction ``x0``.

Per sample, ``s`` is the ``p``-quantile of ``|x0|`` (``p = 0.995``), floored at 1; then
``x0 <- clip(x0, -s, s) / s``. Where no pixel leaves ``[-1, 1]``, ``s = 1`` and nothing changes.
Static clipping (``clip_x0`` of the samplers) is the other, older choice.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..prediction import bcast, eps_from_x0, x0_from_eps

__all__ = ["dynamic_threshold", "threshold_eps", "check_percentile"]


def check_percentile(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p < 1:
        raise ValueError(f"dynamic-threshold percentile p = {p!r} is invalid: expected a number in (0, 1)")
    return float(p)


def dynamic_threshold(x0: Tensor, p: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding of ``x0`` ``(B, ...)``; the output lies in ``[-1, 1]``."""
    dtype = torch.promote_types(x0.dtype, torch.float32)  # quantile needs float; float64 stays float64
    s = torch.quantile(x0.flatten(1).abs().to(dtype), p, dim=1).to(x0.dtype).clamp_min(1.0)
    s = bcast(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def threshold_eps(eps: Tensor, z: Tensor, lam: Tensor, p: float) -> Tensor:
    """The ``eps`` whose ``x0`` is dynamically thresholded."""
    return eps_from_x0(z, dynamic_threshold(x0_from_eps(z, eps, lam), p), lam)
