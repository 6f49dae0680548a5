"""Samplers: ``sample(eps_fn, z, lams, *, noise=None, ...) -> x``. They know nothing of labels or guidance."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .base import EpsFn, ModelFn, Noise
from .ddim import ddim
from .ddpm import ddpm

__all__ = ["ddim", "ddpm", "EpsFn", "ModelFn", "Noise", "SAMPLERS", "get_sampler"]

SAMPLERS: dict[str, Callable[..., Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """A sampler by name (``"ddpm"`` or ``"ddim"``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}") from None
