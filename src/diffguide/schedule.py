"""Noise schedules, spoken in log-SNR ``lam`` (CFG paper notation).

``z = alpha * x + sigma * eps`` with ``lam = log(alpha**2 / sigma**2)``, so
``alpha**2 = sigmoid(lam)`` and ``sigma**2 = sigmoid(-lam)``. Everything downstream (losses,
samplers, guidance) takes per-sample ``lam`` tensors; a schedule only decides *which* ``lam``
values are used: for training (``sample_lam``) and for sampling (``grid``).

A sampling grid is increasing (noisy to clean) and ends in ``+inf`` — the clean limit where
``alpha = 1, sigma = 0`` — so a grid of ``steps`` network evaluations has ``steps + 1`` entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import Tensor

from .validate import positive_int

__all__ = [
    "alpha_sigma",
    "ContinuousSchedule",
    "DiscreteSchedule",
    "Schedule",
    "check_grid",
    "get_schedule",
    "diffusers_schedule",
    "GRIDS",
    "EDM_SIGMA",
    "lam_range",
    "sampling_grid",
]


def alpha_sigma(lam: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, sigma)`` at log-SNR ``lam``, stable for any ``lam`` (``+inf`` gives ``(1, 0)``).

    Uses ``logsigmoid`` so that neither is computed as ``sqrt(1 - x)`` of a rounded number.
    """
    return torch.exp(0.5 * torch.nn.functional.logsigmoid(lam)), torch.exp(
        0.5 * torch.nn.functional.logsigmoid(-lam)
    )


def check_grid(lams: Tensor) -> Tensor:
    """Validate a sampling grid: 1-D, at least 2 entries, strictly increasing, no NaN, finite but
    for a final ``+inf``. Returns it as float64 on CPU (sampler arithmetic is done in float64
    scalars and cast at the end)."""
    if not isinstance(lams, Tensor):
        lams = torch.as_tensor(lams)
    lams = lams.detach().to("cpu", torch.float64)
    if lams.ndim != 1 or lams.numel() < 2:
        raise ValueError(f"lam grid must be 1-D with at least 2 entries, got shape {tuple(lams.shape)}")
    if torch.isnan(lams).any():
        raise ValueError(f"lam grid contains NaN: {lams.tolist()}")
    if torch.isinf(lams[:-1]).any() or lams[-1] == -math.inf:
        raise ValueError(f"lam grid must be finite except a final +inf, got {lams.tolist()}")
    bad = (lams[1:] <= lams[:-1]).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"lam grid must be strictly increasing (noisy to clean); entry {i + 1} = "
            f"{lams[i + 1].item():.6g} does not exceed entry {i} = {lams[i].item():.6g}"
        )
    return lams


class Schedule(Protocol):
    """What the trainer and the samplers need from a schedule."""

    def lam(self, u: Tensor) -> Tensor: ...

    def sample_lam(self, n: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor: ...

    def grid(self, steps: int) -> Tensor: ...


def _check_steps(steps: int) -> int:
    return positive_int(steps, "steps")


@dataclass(frozen=True)
class ContinuousSchedule:
    """The CFG paper's schedule ``lam(u) = -2 log tan(a u + b)``, ``u in [0, 1]`` (Ho & Salimans
    2022, Sec. 2): a hyperbolic secant density on ``lam`` truncated to ``[lam_min, lam_max]``.
    ``u = 0`` is the clean end (``lam_max``), ``u = 1`` the noisy end (``lam_min``)."""

    lam_min: float = -20.0
    lam_max: float = 20.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lam_min) and math.isfinite(self.lam_max) and self.lam_min < self.lam_max):
            raise ValueError(
                f"need finite lam_min < lam_max, got lam_min={self.lam_min}, lam_max={self.lam_max}"
            )

    @property
    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-self.lam_max / 2))
        a = math.atan(math.exp(-self.lam_min / 2)) - b
        return a, b

    def lam(self, u: Tensor) -> Tensor:
        """``lam(u) = -2 log tan(a u + b)``."""
        a, b = self._ab
        return -2.0 * torch.log(torch.tan(a * u + b))

    def u(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`lam`: ``u = (arctan(exp(-lam/2)) - b) / a``."""
        a, b = self._ab
        return (torch.atan(torch.exp(-lam / 2)) - b) / a

    def sample_lam(self, n: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
        """Training ``lam`` (CFG paper Algorithm 1): ``lam(u)``, ``u ~ U[0, 1]``."""
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self.lam(u).to(device=device, dtype=torch.float32)

    def grid(self, steps: int, spacing: Literal["u", "lam"] = "u") -> Tensor:
        """``steps`` network evaluations from ``lam_min`` upward, then ``+inf``. ``spacing="u"``
        is the paper's (uniform in ``u``); ``"lam"`` is uniform in log-SNR."""
        steps = _check_steps(steps)
        if spacing == "u":
            lams = self.lam(1.0 - torch.arange(steps, dtype=torch.float64) / steps)
        elif spacing == "lam":
            lams = self.lam_min + (self.lam_max - self.lam_min) * torch.arange(steps, dtype=torch.float64) / steps
        else:
            raise ValueError(f"spacing must be 'u' or 'lam', got {spacing!r}")
        return torch.cat([lams, torch.tensor([math.inf], dtype=torch.float64)])


@dataclass(frozen=True)
class DiscreteSchedule:
    """A discrete VP (DDPM) schedule as a table ``lam_t = log(abar_t / (1 - abar_t))``, t = 1..T
    (``lams[0]`` is t = 1, the least noisy). Networks see ``lam_t``, never ``t``, so a
    discrete-trained model shares every sampler with a continuous one."""

    lams: tuple[float, ...] = field(repr=False)
    name: str = "discrete"

    def __post_init__(self) -> None:
        t = torch.tensor(self.lams, dtype=torch.float64)
        if t.ndim != 1 or t.numel() < 2 or not torch.isfinite(t).all() or (t[1:] >= t[:-1]).any():
            raise ValueError("a discrete schedule needs >= 2 finite lam values, strictly decreasing in t")

    @property
    def T(self) -> int:
        return len(self.lams)

    @property
    def table(self) -> Tensor:
        """``lam_t`` for t = 1..T, float64."""
        return torch.tensor(self.lams, dtype=torch.float64)

    def lam(self, u: Tensor) -> Tensor:
        """``lam`` at ``u = t / T`` (rounded up to the table's next step; ``u`` in ``(0, 1]``)."""
        t = torch.ceil(torch.as_tensor(u, dtype=torch.float64) * self.T).long().clamp(1, self.T)
        return self.table[t - 1]

    @classmethod
    def from_betas(cls, betas: Tensor, name: str = "discrete") -> DiscreteSchedule:
        # abar_t = prod_{s<=t} (1 - beta_s); lam = log abar - log(1 - abar), via log1p/expm1 for accuracy.
        log_abar = torch.cumsum(torch.log1p(-betas.to(torch.float64)), 0)
        lam = log_abar - torch.log(-torch.expm1(log_abar))
        return cls(tuple(lam.tolist()), name)

    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
        """Ho et al. 2020: betas linear from ``beta_start`` to ``beta_end``."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008) -> DiscreteSchedule:
        """Nichol & Dhariwal 2021, eq. 17: ``abar_t = f(t)/f(0)``, ``f(t) = cos((t/T + s)/(1+s) pi/2)^2``,
        betas clipped at 0.999."""
        t = torch.arange(T + 1, dtype=torch.float64)
        f = torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        return cls.from_betas(betas, "cosine")

    def sample_lam(self, n: int, *, generator: torch.Generator | None = None,
                   device: torch.device | str = "cpu") -> Tensor:
        """Training ``lam``: ``lam_t`` with t uniform on 1..T (Ho et al. 2020, Algorithm 1)."""
        t = torch.randint(0, self.T, (n,), generator=generator)
        return self.table[t].to(device=device, dtype=torch.float32)

    def grid(self, steps: int) -> Tensor:
        """``steps`` timesteps evenly spaced from T down to 1 (rounded, duplicates dropped), then ``+inf``."""
        steps = _check_steps(steps)
        if steps > self.T:
            raise ValueError(f"steps={steps} exceeds the schedule's T={self.T}")
        t = torch.linspace(self.T - 1, 0, steps, dtype=torch.float64).round().long().unique_consecutive()
        return torch.cat([self.table[t], torch.tensor([math.inf], dtype=torch.float64)])


def get_schedule(name: str) -> ContinuousSchedule | DiscreteSchedule:
    """A schedule by name: ``"continuous"`` (the CFG paper's), ``"linear"`` or ``"cosine"`` (T=1000), or the
    path of a diffusers scheduler config (``scheduler_config.json``, or a folder holding one, directly or
    in ``scheduler/``): the schedule a diffusers model was trained with (:func:`diffusers_schedule`)."""
    if name == "continuous":
        return ContinuousSchedule()
    if name == "linear":
        return DiscreteSchedule.linear()
    if name == "cosine":
        return DiscreteSchedule.cosine()
    from pathlib import Path

    p = Path(name)
    for f in (p, p / "scheduler_config.json", p / "scheduler" / "scheduler_config.json"):
        if f.is_file():
            import json

            return diffusers_schedule(json.loads(f.read_text()))
    raise ValueError(f"unknown schedule {name!r}; expected 'continuous', 'linear', 'cosine' or the path of a "
                     f"diffusers scheduler_config.json")


def diffusers_schedule(config: dict) -> DiscreteSchedule:
    """The discrete schedule of a diffusers DDPM/DDIM scheduler config (``num_train_timesteps``,
    ``beta_schedule`` = ``linear | scaled_linear | squaredcos_cap_v2``, ``beta_start``, ``beta_end``, or
    ``trained_betas``), computed here as diffusers defines it (no diffusers import)."""
    T = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return DiscreteSchedule.from_betas(torch.tensor(config["trained_betas"], dtype=torch.float64), "diffusers")
    kind = config.get("beta_schedule", "linear")
    b0, b1 = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float64)
    elif kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
        betas = torch.linspace(b0**0.5, b1**0.5, T, dtype=torch.float64) ** 2
    elif kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17, betas capped at 0.999
        return DiscreteSchedule(DiscreteSchedule.cosine(T).lams, "diffusers")
    else:
        raise ValueError(f"beta_schedule {kind!r} is not supported; expected linear, scaled_linear, "
                         f"squaredcos_cap_v2 or trained_betas")
    return DiscreteSchedule.from_betas(betas, "diffusers")


GRIDS = ("schedule", "lam", "karras")
EDM_SIGMA = (0.002, 80.0)  # Karras et al. 2022: sigma_min, sigma_max of the EDM sampler (sigma = exp(-lam/2))


def lam_range(schedule: Schedule) -> tuple[float, float]:
    """``(lam_min, lam_max)``: the log-SNR range a schedule trains on (a discrete table's ends)."""
    if isinstance(schedule, DiscreteSchedule):
        return schedule.lams[-1], schedule.lams[0]
    lo, hi = getattr(schedule, "lam_min", None), getattr(schedule, "lam_max", None)
    if lo is None or hi is None:
        raise ValueError(f"{type(schedule).__name__} has no lam_min/lam_max: give the grid's lam range explicitly")
    return float(lo), float(hi)


def sampling_grid(schedule: Schedule, steps: int, kind: str = "schedule", *, rho: float = 7.0,
                  lam_min: float | None = None, lam_max: float | None = None) -> Tensor:
    """An increasing float64 grid of ``steps`` finite ``lam`` values, then ``+inf``.

    - ``"schedule"``: the training schedule's own (:meth:`ContinuousSchedule.grid`: uniform in its
      ``u``; a discrete schedule's evenly spaced timesteps);
    - ``"lam"``: uniform in log-SNR from ``lam_min`` to ``lam_max``, both included (DPM-Solver's
      "logSNR" spacing);
    - ``"karras"``: EDM's (Karras et al. 2022, eq. 5) in ``s = exp(-lam/2)``:
      ``s_i = (s_max^(1/rho) + i/(steps-1) (s_min^(1/rho) - s_max^(1/rho)))^rho``, ``rho = 7``, over
      EDM's ``s`` in ``[0.002, 80]`` (``lam`` in ``[-8.76, 12.43]``) within the training range.

    ``lam_min``/``lam_max`` override the range; by default it is the schedule's training range
    (:func:`lam_range`), narrowed to EDM's for ``"karras"``.
    """
    steps = _check_steps(steps)
    if kind == "schedule":
        return check_grid(schedule.grid(steps))
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; expected one of {', '.join(GRIDS)}")
    lo_default, hi_default = lam_range(schedule) if lam_min is None or lam_max is None else (lam_min, lam_max)
    if kind == "karras":
        lo_default = max(lo_default, -2 * math.log(EDM_SIGMA[1]))
        hi_default = min(hi_default, -2 * math.log(EDM_SIGMA[0]))
    lo = float(lo_default if lam_min is None else lam_min)
    hi = float(hi_default if lam_max is None else lam_max)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the grid's lam range must be finite with lam_min < lam_max, got ({lo}, {hi})")
    if kind == "lam":
        lams = torch.linspace(lo, hi, steps, dtype=torch.float64)
    else:
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
        s_max, s_min = math.exp(-lo / 2), math.exp(-hi / 2)
        frac = torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)
        s = (s_max ** (1 / rho) + frac * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        lams = -2.0 * torch.log(s)
    return check_grid(torch.cat([lams, torch.tensor([math.inf], dtype=torch.float64)]))
