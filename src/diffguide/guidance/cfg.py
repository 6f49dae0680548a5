"""Classifier-free guidance as pure functions of predictions (Ho & Salimans 2022).

``w`` is the CFG paper's weight: ``eps~ = (1 + w) eps(z, c) - w eps(z)``; ``w = 0`` is the plain
conditional model, ``w = -1`` the unconditional one. The diffusers/Imagen scale is ``s = 1 + w``:
convert once, at the edge, with :func:`w_from_scale`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cfg", "check_weight", "w_from_scale"]

Weight = float | Tensor


def check_weight(w: Weight, name: str = "w", *, minimum: float = -1.0, batch: int | None = None) -> Weight:
    """Validate a guidance weight (a number, or a per-sample tensor of shape ``(batch,)``):
    finite and ``>= minimum``. Returns a float or a float32 tensor."""
    if isinstance(w, Tensor):
        if w.ndim == 0:
            return check_weight(float(w), name, minimum=minimum, batch=batch)
        if w.ndim != 1 or (batch is not None and w.shape[0] != batch):
            want = f"({batch},)" if batch is not None else "(B,)"
            raise ValueError(f"per-sample {name} must have shape {want}, got {tuple(w.shape)}")
        bad = ~torch.isfinite(w) | (w < minimum)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"{name}[{i}] = {w[i].item()} is invalid: expected a finite number >= {minimum}")
        return w.float()
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ValueError(f"{name} must be a number or a per-sample tensor, got {type(w).__name__}")
    if not math.isfinite(w) or w < minimum:
        raise ValueError(f"{name} = {w} is invalid: expected a finite number >= {minimum}")
    return float(w)


def w_from_scale(scale: Weight) -> Weight:
    """The CFG paper's ``w`` from a diffusers/Imagen guidance scale ``s = 1 + w``."""
    return check_weight(scale, "scale", minimum=0.0) - 1


def cfg(eps_c: Tensor, eps_u: Tensor, w: Weight) -> Tensor:
    """``(1 + w) eps_c - w eps_u`` (CFG paper, Algorithm 2); ``w`` a float or shape ``(B,)``."""
    if isinstance(w, Tensor):
        w = w.reshape(w.shape + (1,) * (eps_c.ndim - 1)).to(eps_c)
    return eps_c + w * (eps_c - eps_u)
