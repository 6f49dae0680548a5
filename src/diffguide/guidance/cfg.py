"""Classifier-free guidance (Ho & Salimans 2022) as pure functions of predictions, and its rule.

``w`` is the CFG paper's weight: ``eps~ = (1 + w) eps(z, c) - w eps(z)``; ``w = 0`` is the plain
conditional model, ``w = -1`` the unconditional one. The diffusers/Imagen scale is ``s = 1 + w``:
the API takes ``scale=`` wherever it takes ``w`` and converts once, with :func:`resolve_w`.
Plain CFG is affine in the prediction, so it is the same in eps, x0, v or score space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..prediction import Prediction
from .rule import Rule, Weight, wb

__all__ = ["cfg", "composed", "check_weight", "w_from_scale", "resolve_w", "CFG", "Weight"]


def check_weight(w: Weight, name: str = "w", *, minimum: float = -1.0, maximum: float = math.inf,
                 batch: int | None = None) -> Weight:
    """Validate a guidance weight (a number, or a per-sample tensor of shape ``(batch,)``): finite
    and in ``[minimum, maximum]``. Returns a float, or the tensor in its own floating dtype (integer
    tensors become float32), so a float64 run keeps float64 weights."""
    rng = f">= {minimum}" if maximum == math.inf else f"in [{minimum}, {maximum}]"
    if isinstance(w, Tensor):
        if w.ndim == 0:
            return check_weight(float(w), name, minimum=minimum, maximum=maximum, batch=batch)
        if w.ndim != 1 or (batch is not None and w.shape[0] != batch):
            want = f"({batch},)" if batch is not None else "(B,)"
            raise ValueError(f"per-sample {name} must have shape {want}, got {tuple(w.shape)}")
        w = w.detach() if w.is_floating_point() else w.float()
        bad = ~torch.isfinite(w) | (w < minimum) | (w > maximum)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"{name}[{i}] = {w[i].item()} is invalid: expected a finite number {rng}")
        return w
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ValueError(f"{name} must be a number or a per-sample tensor, got {type(w).__name__}")
    if not math.isfinite(w) or not minimum <= w <= maximum:
        raise ValueError(f"{name} = {w} is invalid: expected a finite number {rng}")
    return float(w)


def w_from_scale(scale: Weight) -> Weight:
    """The CFG paper's ``w`` from a diffusers/Imagen guidance scale ``s = 1 + w``."""
    return check_weight(scale, "scale", minimum=0.0) - 1


def resolve_w(w: Weight | None, scale: Weight | None, default: float = 0.0) -> Weight:
    """``w`` from exactly one of ``w`` (the CFG paper's) and ``scale`` (``s = 1 + w``); ``default``
    when neither is given. Both at once is an error: they are two names for one number."""
    if w is not None and scale is not None:
        raise ValueError(f"give w or scale, not both (w = {w}, scale = {scale}; scale = 1 + w)")
    if scale is not None:
        return w_from_scale(scale)
    return default if w is None else w


def cfg(eps_c: Tensor, eps_u: Tensor, w: Weight) -> Tensor:
    """``(1 + w) eps_c - w eps_u`` (CFG paper, Algorithm 2); ``w`` a float or shape ``(B,)``."""
    return eps_c + wb(w, eps_c) * (eps_c - eps_u)


def composed(eps_cs: Sequence[Tensor], eps_u: Tensor, ws: Sequence[Weight]) -> Tensor:
    """Composed conditions (Liu et al. 2022, eq. 11 in the CFG paper's ``w``):
    ``eps_u + sum_i (1 + w_i) (eps_i - eps_u)``; one condition is plain CFG."""
    out = eps_u.clone()
    for e, w in zip(eps_cs, ws, strict=True):
        out = out + (1 + wb(w, e)) * (e - eps_u)
    return out


@dataclass(frozen=True)
class CFG(Rule):
    """Plain classifier-free guidance (eps space; affine, so any space gives the same result)."""

    name = "cfg"

    def pair(self, eps_c: Tensor, eps_u: Tensor, z: Tensor, lam: Tensor, w: Weight, state: object) -> Prediction:
        if isinstance(w, float):  # eps_u + (1 + w)(eps_c - eps_u), exact at w = 0 and w = -1
            return Prediction(torch.lerp(eps_u, eps_c, 1.0 + w))
        return Prediction(cfg(eps_c, eps_u, w))
