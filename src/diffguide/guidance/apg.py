"""Adaptive projected guidance, APG (Sadat, Hilliges & Weber, ICLR 2025, Algorithm 1), in x0 space.

On denoised predictions ``D = x0``: ``delta = D_c - D_u``; reverse momentum
``avg <- delta + beta avg`` (the paper recommends ``beta < 0``); norm threshold
``delta <- avg min(1, r / ||avg||)`` per sample; projection onto ``D_c``:
``par = (<delta, D_c> / ||D_c||^2) D_c``, ``perp = delta - par``; then
``D = D_c + w (perp + eta par)`` (the paper's ``s - 1 = w``). ``eta = 1, r = inf, beta = 0`` is plain
CFG. The momentum average lives in a per-run state, advanced once per guided evaluation.

``clip``: the update ``delta`` and the projection are computed from ``D_c`` and ``D_u`` clamped to
``[-clip, clip]`` (the data range); the result is ``D_c + w (...)`` with the unclamped ``D_c``, so
``w = 0`` is still exactly the conditional model. The paper's denoiser (EDM) is bounded; an
eps-model's ``x0 = (z - sigma eps) / alpha`` is not as ``lam -> -inf``: on the shipped MNIST model
``||x0_c - x0_u||`` is ~2e4 at ``lam = -20`` and ~6 one step later, so unclamped, the first step would
dominate the momentum and the norm threshold. ``clip=inf`` turns the clamp off (with
``eta = 1, r = inf, beta = 0`` it is then exactly CFG).
(diffusers' default branch returns ``u + s delta'`` and ComfyUI allows only ``beta >= 0``: neither
is the paper's, neither is followed here.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..prediction import Prediction, bcast, eps_from_x0, x0_from_eps
from .rule import Rule, Weight, flat_dot, wb

__all__ = ["APG", "APGState", "apg_x0"]


@dataclass
class APGState:
    """The running momentum average of ``delta`` (``None`` before the first guided evaluation)."""

    avg: Tensor | None = None


def apg_x0(x_c: Tensor, x_u: Tensor, w: Weight, state: APGState, *, beta: float, r: float, eta: float,
           clip: float = math.inf) -> Tensor:
    """One APG combination of denoised predictions ``(B, ...)``; advances ``state``."""
    out_c = x_c
    if math.isfinite(clip):
        x_c, x_u = x_c.clamp(-clip, clip), x_u.clamp(-clip, clip)
    delta = x_c - x_u
    avg = delta if state.avg is None else delta + beta * state.avg  # reverse momentum (Alg. 1)
    state.avg = avg
    if math.isfinite(r):  # rescale: ||delta|| <= r per sample
        norm = avg.flatten(1).norm(dim=1)
        delta = avg * bcast(torch.clamp(r / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0), avg)
    else:
        delta = avg
    par = bcast(flat_dot(delta, x_c) / flat_dot(x_c, x_c).clamp_min(torch.finfo(x_c.dtype).tiny), x_c) * x_c
    return out_c + wb(w, x_c) * (delta - par + eta * par)


@dataclass(frozen=True)
class APG(Rule):
    """``beta``: momentum in (-1, 1) (paper: negative, e.g. -0.5); ``r``: norm threshold > 0 in x0
    units (``inf``: none); ``eta``: weight of the parallel component (0: dropped, the paper's default);
    ``clip``: the data range the denoised predictions are clamped to for ``delta`` (``inf``: not clamped)."""

    beta: float = -0.5
    r: float = 15.0
    eta: float = 0.0
    clip: float = 1.0
    name = "apg"
    space = "x0"

    def __post_init__(self) -> None:
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and abs(self.beta) < 1):
            raise ValueError(f"APG beta = {self.beta!r} is invalid: expected |beta| < 1 (the paper uses beta < 0)")
        if not (isinstance(self.r, (int, float)) and not math.isnan(self.r) and self.r > 0):
            raise ValueError(f"APG r = {self.r!r} is invalid: expected a norm threshold > 0 (or inf)")
        if not (isinstance(self.eta, (int, float)) and math.isfinite(self.eta)):
            raise ValueError(f"APG eta = {self.eta!r} is invalid: expected a finite number")
        if not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ValueError(f"APG clip = {self.clip!r} is invalid: expected a data range > 0 (inf: no clamp)")

    def start(self) -> APGState:
        return APGState()

    def pair(self, eps_c: Tensor, eps_u: Tensor, z: Tensor, lam: Tensor, w: Weight, state: object) -> Prediction:
        assert isinstance(state, APGState)
        x0 = apg_x0(x0_from_eps(z, eps_c, lam), x0_from_eps(z, eps_u, lam), w, state, beta=self.beta, r=self.r,
                    eta=self.eta, clip=self.clip)
        return Prediction(eps_from_x0(z, x0, lam))
