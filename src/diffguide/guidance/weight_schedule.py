"""Guidance-strength schedules: the strength at ``lam`` is ``g(lam) * w``.

Wang et al. 2024 ("Analysis of classifier-free guidance weight schedulers") schedule ``w`` over the
diffusion time ``t/T``; diffguide speaks ``lam``, and uses the noise fraction
``sigma^2 = sigmoid(-lam)`` in ``t/T``'s place (1 at pure noise, 0 at the clean end):

- ``constant``: ``g = 1`` (plain CFG);
- ``linear``:   ``g = 2 (1 - sigma^2) = 2 alpha^2``, rising from 0 to 2;
- ``cosine``:   ``g = 1 + cos(pi sigma^2)``, rising from 0 to 2.

Both non-constant shapes have mean 1 over a uniform ``sigma^2``. Any callable
``g(lam: (B,)) -> (B,) tensor or float`` works too; a NaN or infinite value is an error.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .rule import Weight

__all__ = ["WSchedule", "constant", "linear", "cosine", "SCHEDULES", "get_w_schedule", "evaluate_schedule"]

WSchedule = Callable[[Tensor], Weight]


def constant(lam: Tensor) -> Weight:
    return 1.0


def linear(lam: Tensor) -> Weight:
    return 2 * torch.sigmoid(lam)


def cosine(lam: Tensor) -> Weight:
    return 1 + torch.cos(math.pi * torch.sigmoid(-lam))


SCHEDULES: dict[str, WSchedule] = {"constant": constant, "linear": linear, "cosine": cosine}


def get_w_schedule(schedule: str | WSchedule | None) -> WSchedule | None:
    """A schedule by name (``constant | linear | cosine``), a callable, or ``None`` (constant)."""
    if schedule is None or callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}; expected one of {sorted(SCHEDULES)} or a callable")
    return SCHEDULES[schedule]


def evaluate_schedule(schedule: WSchedule, lam: Tensor) -> Weight:
    """``schedule(lam)`` checked: a finite float, or a finite ``(B,)`` tensor."""
    g = schedule(lam)
    if isinstance(g, Tensor):
        if g.ndim == 0:
            g = float(g)
        elif g.shape != lam.shape:
            raise ValueError(f"guidance schedule returned shape {tuple(g.shape)}, expected {tuple(lam.shape)} like lam")
        elif not torch.isfinite(g).all():
            i = int((~torch.isfinite(g)).nonzero()[0])
            raise ValueError(f"guidance schedule returned {g[i].item()} at lam = {lam[i].item():.6g}: expected a "
                             f"finite number")
    if isinstance(g, (int, float)) and not isinstance(g, bool):
        if not math.isfinite(g):
            raise ValueError(f"guidance schedule returned {g} at lam = {lam.flatten()[0].item():.6g}: expected a "
                             f"finite number")
        return float(g)
    if not isinstance(g, Tensor):
        raise ValueError(f"guidance schedule must return a number or a (B,) tensor, got {type(g).__name__}")
    return g
