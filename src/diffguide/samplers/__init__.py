"""Samplers: ``sample(model, z, lams, *, noise=None, clip_x0=None, callback=None, **options) -> x``.

They know nothing of labels or guidance (see :mod:`diffguide.samplers.base`). A sampler is a value:
one of the registered functions, its name (``ddpm | ddim | dpmpp-2m | unipc | heun | euler``), a
``functools.partial`` of one with its options (``partial(ddim, eta=1.0)``), or any callable with the
same signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import Tensor

from . import ddim as _ddim_mod
from . import ddpm as _ddpm_mod
from . import dpm_solver as _dpm_mod
from . import edm as _edm_mod
from . import unipc as _unipc_mod
from .base import EpsFn, ModelFn, Noise
from .ddim import ddim
from .ddpm import ddpm
from .dpm_solver import dpmpp_2m
from .edm import euler, heun
from .unipc import unipc

__all__ = ["ddim", "ddpm", "dpmpp_2m", "unipc", "heun", "euler", "EpsFn", "ModelFn", "Noise", "Sampler",
           "SAMPLERS", "get_sampler", "resolve_sampler", "sampler_name", "sampler_options", "sampler_takes",
           "evaluations", "preferred_grid"]

Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {"ddpm": ddpm, "ddim": ddim, "dpmpp-2m": dpmpp_2m, "unipc": unipc, "heun": heun,
                                "euler": euler}
# The Prediction fields each registered sampler honours (besides eps).
_TAKES: dict[str, frozenset[str]] = {"ddpm": _ddpm_mod.TAKES, "ddim": _ddim_mod.TAKES, "dpmpp-2m": _dpm_mod.TAKES,
                                     "unipc": _unipc_mod.TAKES, "heun": _edm_mod.TAKES, "euler": _edm_mod.TAKES}
_NAMES = {fn: name for name, fn in SAMPLERS.items()}
# The grid each registered sampler measured best on (benchmarks/results/solvers/pilot.md); others: "schedule".
PREFERRED_GRID = {"heun": "karras"}


def _base(sampler: Sampler) -> tuple[Sampler, dict[str, Any]]:
    """The function under (nested) partials and their merged keyword options."""
    options: dict[str, Any] = {}
    while isinstance(sampler, functools.partial):
        if sampler.args:
            raise ValueError(f"a sampler partial may bind keyword options only, got positional {sampler.args!r}")
        options = {**sampler.keywords, **options}
        sampler = sampler.func
    return sampler, options


def resolve_sampler(sampler: str | Sampler) -> Sampler:
    """The callable for a sampler value: a registered name, or a callable (returned as it is)."""
    if isinstance(sampler, str):
        try:
            return SAMPLERS[sampler]
        except KeyError:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)} "
                             f"(or a sampler function)") from None
    if not callable(sampler):
        raise ValueError(f"sampler must be a name ({', '.join(SAMPLERS)}) or a callable, got {sampler!r}")
    _base(sampler)
    return sampler


get_sampler = resolve_sampler  # the first wave's name


def sampler_name(sampler: str | Sampler) -> str:
    """The registered name of a sampler value (``"ddim"`` for ``partial(ddim, eta=1)``); a user
    callable's ``module.qualname``."""
    fn, _ = _base(resolve_sampler(sampler))
    if fn in _NAMES:
        return _NAMES[fn]
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def sampler_options(sampler: str | Sampler) -> dict[str, Any]:
    """The keyword options a sampler value binds (``{"eta": 1.0}`` for ``partial(ddim, eta=1.0)``)."""
    return _base(resolve_sampler(sampler))[1]


def sampler_takes(sampler: str | Sampler) -> frozenset[str] | None:
    """The optional Prediction fields a registered sampler honours; ``None`` for a user callable
    (it is trusted to check for itself)."""
    return _TAKES.get(sampler_name(sampler))


def evaluations(sampler: str | Sampler, steps: int) -> int:
    """Model evaluations of one sampling run over a grid of ``steps`` steps (Heun: ``2 steps - 1``)."""
    return 2 * steps - 1 if sampler_name(sampler) == "heun" else steps


def preferred_grid(sampler: str | Sampler) -> str:
    """The grid ``grid="auto"`` picks for a sampler: ``karras`` for Heun, else ``schedule``."""
    return PREFERRED_GRID.get(sampler_name(sampler), "schedule")
