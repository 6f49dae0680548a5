"""One frozen sampling configuration, shared by the API, the CLI and sweeps.

    cfg = SamplingConfig(sampler="unipc", steps=10)                  # defaults live here, once
    cfg = SamplingConfig.make(cfg, sampler="ddim", eta=1.0)          # options bind into the sampler value
    x = dg.load("mnist").sample(range(10), w=1.0, sampling=cfg)
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import Tensor

from .precision import PRECISIONS, resolve_precision
from .samplers import (
    SAMPLERS,
    Sampler,
    evaluations,
    preferred_grid,
    resolve_sampler,
    sampler_name,
    sampler_options,
    sampler_takes,
)
from .schedule import GRIDS, Schedule, sampling_grid
from .validate import optional_positive_int, positive_int

__all__ = ["SamplingConfig", "takers", "option_owners"]

CG_FORMS = ("auto", "score", "mean")
# A sampler's call arguments, which the pipeline supplies: never sampler options.
RESERVED = ("model", "z", "lams", "noise", "callback")


def takers(field: str) -> list[str]:
    """The registered samplers that honour a Prediction field (``"eps_renoise"``, ``"mean_grad"``)."""
    return [name for name in SAMPLERS if field in (sampler_takes(name) or ())]


def _accepts(fn: Sampler, option: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True  # cannot tell: let the call decide
    return option in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _non_default(fn: Sampler, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` less those equal to the sampler's own defaults (``order=2`` for UniPC): they do not
    change the samples, so they do not change a sweep's key."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return dict(options)
    return {k: v for k, v in options.items() if k not in params or params[k].default != v}


def option_owners(option: str) -> list[str]:
    """The registered samplers that take a keyword option (``"eta"`` -> ``["ddim"]``)."""
    return [name for name, fn in SAMPLERS.items() if _accepts(fn, option)]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample, independent of the model and the guidance.

    - ``sampler``: a name (``ddpm | ddim | dpmpp-2m | unipc | heun | euler``), a sampler function, or a
      ``functools.partial`` binding its options (:mod:`diffguide.samplers`);
    - ``steps``: grid steps (model evaluations: ``steps``, Heun ``2 steps - 1``);
    - ``grid``: ``schedule`` (the training schedule's spacing), ``lam`` (uniform in log-SNR),
      ``karras`` (EDM, ``rho``; see :func:`diffguide.schedule.sampling_grid`), or ``auto``: the one the
      sampler measured best on (``karras`` for Heun, ``schedule`` for the others);
    - ``clip_x0``: clamp the predicted clean image to ``[-clip_x0, clip_x0]`` (``None``: off);
    - ``precision``: network forwards in ``fp32``, ``bf16`` autocast, or ``auto`` (bf16 where it is
      native: CUDA with bf16, CPUs with AMX/avx512_bf16). Only fp32 samples are bit-identical across
      machines and batch sizes, so fp32 is the default;
    - ``seed``: sample ``i`` uses the noise stream seeded by ``(seed, i)``;
    - ``batch_size``: samples per sampling run; ``max_batch``: rows per network forward
      (``"auto"``: 128 on CPU, all elsewhere); neither changes fp32 results;
    - ``cg_form``: classifier guidance as ``score`` (``eps - s sigma grad``, any sampler) or ``mean``
      (the DDPM mean shift); ``auto``: the mean shift where the sampler takes it (DDPM).
    """

    sampler: str | Sampler = "ddim"
    steps: int = 50
    grid: Literal["auto", "schedule", "lam", "karras"] = "auto"
    rho: float = 7.0
    clip_x0: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    seed: int = 0
    batch_size: int = 500
    max_batch: int | None | Literal["auto"] = "auto"
    cg_form: Literal["auto", "score", "mean"] = "auto"

    def __post_init__(self) -> None:
        resolve_sampler(self.sampler)
        positive_int(self.steps, "steps")
        if self.grid != "auto" and self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; expected auto or one of {', '.join(GRIDS)}")
        if isinstance(self.rho, bool) or not isinstance(self.rho, (int, float)) or not (math.isfinite(self.rho)
                                                                                         and self.rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {self.rho!r}")
        if self.clip_x0 is not None and not (isinstance(self.clip_x0, (int, float)) and self.clip_x0 > 0):
            raise ValueError(f"clip_x0 must be a number > 0 or None, got {self.clip_x0!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        positive_int(self.batch_size, "batch_size")
        if self.max_batch != "auto":
            optional_positive_int(self.max_batch, "max_batch")
        if self.cg_form not in CG_FORMS:
            raise ValueError(f"cg_form must be one of {', '.join(CG_FORMS)}, got {self.cg_form!r}")
        if self.cg_form == "mean" and "mean_grad" not in (self.takes or {"mean_grad"}):
            raise ValueError(f"the mean-shift form of classifier guidance needs a sampler that takes it "
                             f"({', '.join(takers('mean_grad'))}), got {self.name!r}")

    @classmethod
    def make(cls, base: SamplingConfig | None = None, **values: Any) -> SamplingConfig:
        """``base`` (default: the defaults) with ``values`` replaced: config fields by name, and any other
        keyword a sampler option bound into the sampler value (``eta=1.0`` -> ``partial(ddim, eta=1.0)``).
        ``None`` means "not given". An option the sampler does not take is refused, naming those that do."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in values.items() if v is not None or k in ("clip_x0", "max_batch")}
        cfg = replace(base or cls(), **{k: v for k, v in given.items() if k in names})
        options = {k: v for k, v in given.items() if k not in names}
        if not options:
            return cfg
        reserved = sorted(set(options) & set(RESERVED))
        if reserved:
            raise ValueError(f"{', '.join(reserved)}: supplied to the sampler at each call, not a sampler option")
        fn = resolve_sampler(cfg.sampler)
        for k, v in options.items():
            if not _accepts(fn, k):
                owners = option_owners(k)
                where = f"the {', '.join(owners)} sampler{'s' if len(owners) > 1 else ''}" if owners else "no sampler"
                raise ValueError(f"{k} = {v!r} applies to {where}, not to {cfg.name!r}")
        return replace(cfg, sampler=functools.partial(fn, **options))

    # ------------------------------------------------------------------ derived
    @property
    def fn(self) -> Sampler:
        """The sampler callable (with its bound options)."""
        return resolve_sampler(self.sampler)

    @property
    def name(self) -> str:
        return sampler_name(self.sampler)

    @property
    def options(self) -> dict[str, Any]:
        return sampler_options(self.sampler)

    @property
    def takes(self) -> frozenset[str] | None:
        return sampler_takes(self.sampler)

    @property
    def evaluations(self) -> int:
        """Model evaluations per sampling run (CFG's pair of predictions counts once)."""
        return evaluations(self.sampler, self.steps)

    @property
    def grid_kind(self) -> str:
        """The grid, with ``auto`` resolved for this sampler."""
        return preferred_grid(self.sampler) if self.grid == "auto" else self.grid

    def lams(self, schedule: Schedule) -> Tensor:
        """The sampling grid for a model trained on ``schedule``."""
        return sampling_grid(schedule, self.steps, self.grid_kind, rho=self.rho)

    def autocast(self, device: torch.device | str) -> torch.dtype | None:
        """The autocast dtype of network forwards on ``device`` (``None`` = fp32)."""
        return resolve_precision(self.precision, torch.device(device))

    def resolved_cg_form(self) -> Literal["score", "mean"]:
        if self.cg_form == "auto":
            return "mean" if "mean_grad" in (self.takes or ()) else "score"
        return self.cg_form

    def key(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """What samples depend on, as JSON (sweeps reuse saved samples only under an equal key). DDPM and
        DDIM at the defaults give the first wave's key, so older sweep folders stay valid."""
        options = _non_default(self.fn, self.options)
        clip = None if self.clip_x0 is None else float(self.clip_x0)
        key: dict[str, Any] = {"sampler": self.name, "steps": self.steps, "seed": self.seed,
                               "eta": float(options.pop("eta", 0.0)), "v": float(options.pop("v", 0.0)),
                               "cg_form": self.cg_form, "clip_x0": clip}
        if options:
            key["options"] = options
        if self.grid_kind != "schedule":
            key["grid"] = self.grid_kind
            if self.grid_kind == "karras":
                key["rho"] = float(self.rho)
        amp = self.autocast(device)
        if amp is not None:  # not "precision": sweep rows hold the precision/recall metric under that name
            key["autocast"] = str(amp).removeprefix("torch.")
        return key

    def describe(self) -> str:
        """``unipc, 10 steps (10 evaluations), schedule grid, fp32``."""
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return (f"{self.name}{opts}, {self.steps} steps ({self.evaluations} evaluations), {self.grid_kind} grid"
                + (f" rho={self.rho:g}" if self.grid_kind == "karras" else "") + f", {self.precision}")
