"""Training losses, each a small callable: ``loss(net, x, c, generator) -> (loss, stats)``.

``x`` are images in [-1, 1] of shape ``(B, C, H, W)``, ``c`` int64 labels ``(B,)``. Randomness
(``lam``, ``eps``, label dropout) comes from ``generator`` only, so a step is a pure function of
the weights, the batch and the generator's seed (exact resume).

``rows`` (a slice, default all): the rows the network sees and the loss averages. The randomness is
drawn for the whole batch first, so row ``i`` gets the same ``lam``, ``eps`` and dropout whichever
process (or gradient-accumulation micro-batch) computes it: a run does not depend on how it is split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..prediction import bcast
from ..schedule import Schedule, alpha_sigma

__all__ = ["DiffusionLoss", "ClassifierLoss", "DistillationLoss", "ProgressiveLoss", "two_step_target", "drop_labels",
           "noise_quartile"]

ALL = slice(None)


def drop_labels(c: Tensor, p_uncond: float, null_label: int, generator: torch.Generator) -> Tensor:
    """Replace each label by the null label with probability ``p_uncond`` (CFG paper, Algorithm 1)."""
    if p_uncond <= 0:
        return c
    drop = torch.rand(c.shape, generator=generator, device=generator.device).to(c.device) < p_uncond
    return torch.where(drop, torch.full_like(c, null_label), c)


def _noisy(x: Tensor, lam: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    eps = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device)
    alpha, sigma = alpha_sigma(lam)
    return bcast(alpha, x) * x + bcast(sigma, x) * eps, eps  # z = alpha x + sigma eps


@dataclass(frozen=True)
class DiffusionLoss:
    """``||eps_theta(z_lam, c~) - eps||^2`` with ``lam`` from the schedule and ``c~`` the label dropped to
    the null label with probability ``p_uncond`` (CFG paper, Algorithm 1)."""

    schedule: Schedule
    p_uncond: float = 0.1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p_uncond) and 0.0 <= self.p_uncond <= 1.0):
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond!r}")

    def __call__(self, net: nn.Module, x: Tensor, c: Tensor, generator: torch.Generator,
                 rows: slice = ALL) -> tuple[Tensor, dict]:
        lam = self.schedule.sample_lam(x.shape[0], generator=generator).to(x.device)
        c = drop_labels(c, self.p_uncond, int(cast(Any, net.null_label)), generator)
        z, eps = _noisy(x, lam, generator)
        loss = F.mse_loss(net(z[rows], lam[rows], c[rows]).float(), eps[rows])
        return loss, {}


def noise_quartile(schedule: Schedule, lam: Tensor) -> Tensor:
    """Noise quartile of each ``lam``: 0 for the least noisy quarter of the schedule (``u < 1/4``) to 3."""
    edges = schedule.lam(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).to(lam.device, lam.dtype)
    return (lam[:, None] < edges[None, :]).sum(1)  # edges decrease in u: below more edges = noisier


@dataclass(frozen=True)
class ClassifierLoss:
    """Cross-entropy of a noise-aware classifier ``p(c | z_lam)`` on ``z = alpha x + sigma eps``, ``lam``
    from the diffusion schedule (Dhariwal & Nichol 2021, Sec. 4); a fraction ``p_clean`` of the batch is
    shown clean (``lam = lam_max`` of the schedule). Stats: per-quartile correct/total counts."""

    schedule: Schedule
    p_clean: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.p_clean) and 0.0 <= self.p_clean <= 1.0):
            raise ValueError(f"p_clean must be in [0, 1], got {self.p_clean!r}")

    def __call__(self, net: nn.Module, x: Tensor, c: Tensor, generator: torch.Generator,
                 rows: slice = ALL) -> tuple[Tensor, dict]:
        lam = self.schedule.sample_lam(x.shape[0], generator=generator).to(x.device)
        if self.p_clean > 0:
            clean = torch.rand(lam.shape, generator=generator, device=generator.device).to(x.device) < self.p_clean
            lam = torch.where(clean, self.schedule.lam(torch.zeros(1)).to(lam), lam)
        z, _ = _noisy(x, lam, generator)
        z, lam, c = z[rows], lam[rows], c[rows]
        logits = net(z, lam).float()
        q = noise_quartile(self.schedule, lam)
        correct = (logits.argmax(1) == c).float()
        stats = {"correct_q": torch.zeros(4, device=x.device).index_add_(0, q, correct),
                 "count_q": torch.zeros(4, device=x.device).index_add_(0, q, torch.ones_like(correct))}
        return F.cross_entropy(logits, c), stats


@dataclass(frozen=True, eq=False)
class DistillationLoss:
    """Guidance distillation, stage one (Meng et al., CVPR 2023): the student at weight ``w`` regresses
    the frozen teacher's guided prediction ``(1 + w) x0(z, c) - w x0(z)``, with ``w ~ U[w_min, w_max]`` per
    sample and ``z`` at the schedule's ``lam`` (the teacher's pair is one batched forward, no gradient).

    ``weighting`` is the ``omega(lam)`` in front of the x0-space error: ``"snr"`` (``alpha^2 / sigma^2``,
    i.e. the eps-space MSE the teacher itself was trained with; the default) or ``"truncated-snr"``
    (``max(SNR, 1)``, Salimans & Ho 2022, Sec. 4, which progressive distillation and Meng et al. use with
    x0- or v-parameterised networks). For an eps-parameterised network the truncated weight multiplies the
    eps error by ``max(1, 1/SNR)``, about ``e^20`` at the continuous schedule's noisiest ``lam``.
    """

    teacher: nn.Module
    schedule: Schedule
    w_range: tuple[float, float] = (0.0, 4.0)
    weighting: str = "snr"

    def __post_init__(self) -> None:
        if self.weighting not in ("snr", "truncated-snr"):
            raise ValueError(f"weighting must be 'snr' or 'truncated-snr', got {self.weighting!r}")

    def __call__(self, net: nn.Module, x: Tensor, c: Tensor, generator: torch.Generator,
                 rows: slice = ALL) -> tuple[Tensor, dict]:
        lam = self.schedule.sample_lam(x.shape[0], generator=generator).to(x.device)
        lo, hi = self.w_range
        w = (lo + (hi - lo) * torch.rand(x.shape[0], generator=generator, device=generator.device)).to(x.device)
        z, _ = _noisy(x, lam, generator)
        z, lam, c, w = z[rows], lam[rows], c[rows], w[rows]
        B = z.shape[0]
        with torch.no_grad():  # the teacher's CFG pair, one batched forward
            null = torch.full_like(c, int(cast(Any, self.teacher).null_label))
            both = self.teacher(torch.cat([z, z]), torch.cat([lam, lam]), torch.cat([c, null])).float()
            eps_c, eps_u = both[:B], both[B:]
            target = eps_c + bcast(w, eps_c) * (eps_c - eps_u)  # (1 + w) eps_c - w eps_u: x0's combination too
        eps_s = net(z, lam, cast(Any, net).condition(c, w)).float()
        err = (eps_s - target).pow(2).flatten(1).mean(1)  # eps error; x0 error = err / SNR
        if self.weighting == "truncated-snr":
            err = err * torch.clamp(torch.exp(-lam.float()), min=1.0)  # max(SNR, 1) / SNR
        return err.mean(), {}


def _ddim_step(net: nn.Module, z: Tensor, lam: Tensor, lam_next: Tensor, cond: Tensor,
               clip_x0: float | None) -> Tensor:
    """One deterministic DDIM step ``lam -> lam_next`` per sample (float64 arithmetic around a float32
    forward), exactly as :func:`diffguide.samplers.ddim` takes it: ``x0`` (clamped to ``clip_x0``, ``eps``
    made consistent with it), then ``alpha' x0 + sigma' eps``; a step to ``+inf`` is ``x0``."""
    from ..samplers.base import denoise

    (a, s), (a_n, s_n) = alpha_sigma(lam), alpha_sigma(lam_next)
    a, s, a_n, s_n = (bcast(t, z) for t in (a, s, a_n, s_n))
    x0, eps = denoise(z, net(z.float(), lam.float(), cond).double(), a, s, clip_x0)
    return a_n * x0 + s_n * eps  # (1, 0) at lam_next = +inf: x0


def two_step_target(teacher: nn.Module, z: Tensor, lams: Tensor, cond: Tensor,
                    clip_x0: float | None = 1.0) -> Tensor:
    """Progressive distillation's target (Salimans & Ho 2022, Algorithm 2): the ``x0`` with which one DDIM
    step ``lams[:, 0] -> lams[:, 2]`` from ``z`` lands where the teacher's two steps through ``lams[:, 1]``
    do: ``x~ = (z'' - (sigma''/sigma) z) / (alpha'' - (sigma''/sigma) alpha)``; ``z''`` itself when the
    second step ends at ``+inf``. float64 ``(B, ...)``."""
    z = z.double()
    z2 = _ddim_step(teacher, _ddim_step(teacher, z, lams[:, 0], lams[:, 1], cond, clip_x0), lams[:, 1], lams[:, 2],
                    cond, clip_x0)
    s, (a_n, s_n) = alpha_sigma(lams[:, 0])[1], alpha_sigma(lams[:, 2])
    ratio = s_n / s
    # alpha'' - ratio alpha = alpha'' (1 - exp((lam - lam'') / 2)) > 0: lam < lam''
    denom = -a_n * torch.expm1((lams[:, 0] - lams[:, 2]) / 2)
    return (z2 - bcast(ratio, z) * z) / bcast(denom, z)


@dataclass(frozen=True, eq=False)
class ProgressiveLoss:
    """One round of progressive distillation of a w-conditioned student (Salimans & Ho 2022, Algorithm 2;
    Meng et al. 2023, stage two): the student's one DDIM step from ``z`` at a point of its ``steps``-step
    grid matches the frozen teacher's two steps on the grid of twice as many (:func:`two_step_target`).

    ``grid``: the teacher's float64 sampling grid, ``2 steps`` finite ``lam`` then ``+inf`` (the student's
    is every other point). Per sample: a student step ``k ~ U{0..steps-1}``, ``w ~ U[w_range]``,
    ``z = alpha x + sigma eps`` at its ``lam``. Loss: the x0 error weighted by ``max(SNR, 1)`` (truncated
    SNR weighting, Salimans & Ho 2022, Sec. 4). The teacher runs in fp32 even under autocast: an eps
    teacher's ``x0`` at ``lam = -20`` needs it. ``clip_x0``: as the sampler's (DDIM's default 1)."""

    teacher: nn.Module
    grid: Tensor
    w_range: tuple[float, float] = (0.0, 4.0)
    clip_x0: float | None = 1.0

    def __post_init__(self) -> None:
        n = self.grid.numel()
        if n < 3 or n % 2 == 0 or self.grid[-1] != math.inf:
            raise ValueError(f"the teacher's grid needs an even number of finite steps then +inf, got {n} points")

    @property
    def steps(self) -> int:
        return (self.grid.numel() - 1) // 2

    def __call__(self, net: nn.Module, x: Tensor, c: Tensor, generator: torch.Generator,
                 rows: slice = ALL) -> tuple[Tensor, dict]:
        B, dev = x.shape[0], generator.device
        k = torch.randint(self.steps, (B,), generator=generator, device=dev).to(x.device)
        lo, hi = self.w_range
        w = (lo + (hi - lo) * torch.rand(B, generator=generator, device=dev)).to(x.device)
        grid = self.grid.to(x.device)
        lams = torch.stack([grid[2 * k], grid[2 * k + 1], grid[2 * k + 2]], dim=1)  # (B, 3) float64
        eps = torch.randn(x.shape, generator=generator, device=dev).to(x.device)
        lams, c, w, x, eps = lams[rows], c[rows], w[rows], x[rows], eps[rows]
        a, s = alpha_sigma(lams[:, 0])
        z = bcast(a, x) * x.double() + bcast(s, x) * eps.double()  # float64: the target's own z
        student = cast(Any, net)
        cond = student.condition(c, w)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            target = two_step_target(self.teacher, z, lams, cond, self.clip_x0)
        x0 = net(z.float(), lams[:, 0].float(), cond, predict="x0").float()  # through forward: DDP syncs it
        err = (x0 - target.float()).pow(2).flatten(1).mean(1)
        weight = torch.clamp(torch.exp(lams[:, 0]), min=1.0).float()  # max(SNR, 1)
        return (err * weight).mean(), {}
