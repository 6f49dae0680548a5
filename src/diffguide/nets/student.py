"""The w-conditioned student of guidance distillation (Meng et al., CVPR 2023, stage one).

The student is the teacher's U-Net with one more input: the guidance weight ``w`` (the CFG paper's),
through a Fourier embedding added to the ``lam`` embedding. It predicts the teacher's *guided* output
in one forward, so sampling it costs one network evaluation per step instead of CFG's two.

Its condition is a ``(B, 2)`` float tensor of rows ``[label, w]`` (:meth:`GuidedStudent.condition`
builds it). The network protocol says how it is guided: ``w_inside = True`` and the ``w_range`` it was
trained on; :func:`~diffguide.guidance.guided` then runs the one forward and refuses classifier-free
guidance on top. The w branch's last layer starts at zero, so a student made by :meth:`from_teacher`
equals the teacher's conditional prediction exactly at initialisation.

Stage two (progressive distillation, Salimans & Ho 2022, as Meng et al. apply it) makes students of
such a student for a few deterministic DDIM steps (:meth:`GuidedStudent.from_student`). Those predict
``v = alpha eps - sigma x0`` (``output = "v"``), from which ``x0 = alpha z - sigma v`` and
``eps = sigma z + alpha v`` are well conditioned at every ``lam``: an eps-network's
``x0 = (z - sigma eps) / alpha`` divides by ``alpha ~ 5e-5`` at the noisiest ``lam``, and a few-step
student's first step is all about that ``x0``. (The samplers take ``eps`` and divide again; from a
v-student's float32 ``eps`` that ``x0`` is off by at most ~3e-3 at ``lam = -20``, and the training
targets go through the same samplers' arithmetic.) ``steps`` records the DDIM step count a student was
distilled for.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..prediction import bcast, x0_of
from ..schedule import alpha_sigma
from .blocks import check_inputs, zero_
from .unet import UNet, UNetConfig, unet_config

__all__ = ["StudentConfig", "GuidedStudent", "student_config"]


@dataclass(frozen=True)
class StudentConfig(UNetConfig):
    """A :class:`UNetConfig` plus the trained guidance range ``w_range = (w_min, w_max)``."""

    w_range: tuple[float, float] = (0.0, 4.0)
    output: str = "eps"
    steps: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        lo, hi = (float(v) for v in self.w_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and -1.0 <= lo <= hi):
            raise ValueError(f"w_range must be (w_min, w_max) with -1 <= w_min <= w_max, got {self.w_range!r}")
        if self.output not in ("eps", "v"):
            raise ValueError(f"a student's output is 'eps' or 'v', got {self.output!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"steps (the DDIM steps a student was distilled for) must be a positive integer or "
                             f"None, got {self.steps!r}")


def student_config(preset: str, **fields: Any) -> StudentConfig:
    """A :class:`StudentConfig` from a U-Net preset and fields (``w_range``, ``output``, ``steps`` among them)."""
    own: dict[str, Any] = {k: fields.pop(k) for k in ("output", "steps") if k in fields}
    w_range = fields.pop("w_range", (0.0, 4.0))
    base = unet_config(preset, **fields)
    return StudentConfig(**{**dataclasses.asdict(base), "w_range": tuple(w_range), **own})


class WEmbedding(nn.Module):
    """``w (B,) -> (B, E)``: Fourier features of ``w`` (periods from ~1 to ~40 units of w), then an MLP
    whose last layer starts at zero."""

    freqs: Tensor

    def __init__(self, emb_dim: int, n_freqs: int = 16) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(math.log(0.15), math.log(6.0), n_freqs)),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, emb_dim), nn.SiLU(), zero_(nn.Linear(emb_dim, emb_dim)))

    def forward(self, w: Tensor) -> Tensor:
        arg = w.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([torch.cos(arg), torch.sin(arg)], dim=1))


class GuidedStudent(UNet):
    """``forward(z, lam, cond) -> eps`` with ``cond = [[label, w], ...]`` ``(B, 2)``: the teacher's guided
    prediction at weight ``w`` in one forward (module doc); ``predict="x0"`` gives the clean-image
    prediction, computed the well-conditioned way for a v-student."""

    w_inside = True

    def __init__(self, config: StudentConfig) -> None:
        if not isinstance(config, StudentConfig):
            raise ValueError(f"GuidedStudent needs a StudentConfig, got {type(config).__name__}")
        super().__init__(config)
        self.w_range = (float(config.w_range[0]), float(config.w_range[1]))
        self.output = config.output
        self.distilled_steps = config.steps
        self.w_emb = WEmbedding(config.emb_dim)

    @classmethod
    def from_teacher(cls, teacher: UNet, w_range: tuple[float, float]) -> GuidedStudent:
        """A student with the teacher's architecture and weights, and a fresh (zero-output) w branch."""
        if not isinstance(teacher, UNet) or isinstance(teacher, GuidedStudent) or not teacher.num_classes:
            raise ValueError("the teacher must be a class-conditional diffguide U-Net trained with label dropout "
                             "(CFG), with a null label to guide away from")
        student = cls(StudentConfig(**{**dataclasses.asdict(teacher.config), "w_range": tuple(w_range)}))
        missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("w_emb.") for k in missing):
            raise ValueError(f"teacher weights do not fit the student (missing {missing}, unexpected {unexpected})")
        student.train_schedule = teacher.train_schedule
        return student

    @classmethod
    def from_student(cls, teacher: GuidedStudent, steps: int) -> GuidedStudent:
        """A progressive-distillation student of ``teacher`` for ``steps`` DDIM steps: its weights, with the
        output read as ``v``. From a v-teacher that is the teacher's function exactly; from a stage-one
        (eps) teacher it agrees at both ends of ``lam`` (``eps = sigma z + alpha v`` tends to ``z`` and to the
        network's output) and is corrected in between by the first round."""
        if not isinstance(teacher, GuidedStudent):
            raise ValueError(f"progressive distillation starts from a w-conditioned student (diffguide distill, "
                             f"stage one), got a {type(teacher).__name__}")
        config = cast(StudentConfig, teacher.config)
        student = cls(dataclasses.replace(config, output="v", steps=steps))
        student.load_state_dict(teacher.state_dict())
        student.train_schedule = teacher.train_schedule
        return student

    def condition(self, labels: Tensor, w: float | Tensor) -> Tensor:
        """The ``(B, 2)`` condition ``[label, w]`` for integer ``labels`` ``(B,)`` and ``w`` (float or ``(B,)``)."""
        ws = torch.as_tensor(w, dtype=torch.float32, device=labels.device).expand(labels.shape[0])
        return torch.stack([labels.to(torch.float32), ws], dim=1)

    def null_condition(self, c: Tensor) -> Tensor:
        raise ValueError("a distilled student carries w inside: it has no null condition to guide away from "
                         "(classifier-free guidance on top of it is not defined)")

    def forward(self, z: Tensor, lam: Tensor, c: Tensor, predict: str = "eps") -> Tensor:
        """``eps`` (the network protocol's), or with ``predict="x0"`` the clean-image prediction: ``alpha z -
        sigma v`` for a v-student, ``(z - sigma eps) / alpha`` for an eps one. One entry point, so that
        DistributedDataParallel and ``torch.compile`` see every training forward."""
        if predict not in ("eps", "x0"):
            raise ValueError(f"predict must be 'eps' or 'x0', got {predict!r}")
        out, (alpha, sigma) = self.raw(z, lam, c), alpha_sigma(lam)
        a, s = bcast(alpha, z), bcast(sigma, z)
        if predict == "eps":
            return out if self.output == "eps" else s * z + a * out  # eps = sigma z + alpha v
        return a * z - s * out if self.output == "v" else x0_of(z, out, a, s)

    def raw(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        """The network's own output: ``eps`` or ``v`` (``output``)."""
        if c.ndim != 2 or c.shape[1] != 2 or not c.is_floating_point():
            raise ValueError(f"a GuidedStudent's condition is a float (B, 2) tensor of [label, w] rows "
                             f"(GuidedStudent.condition), got {c.dtype} of shape {tuple(c.shape)}")
        labels, w = c[:, 0].round().long(), c[:, 1]
        check_inputs("GuidedStudent", z, lam, self.config.in_channels, self.config.image_size, labels)
        emb = F.silu(self.lam_emb(lam) + self.label_emb(labels) + self.w_emb(w))
        h = self.decoder(*self.encoder(z, emb), emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(z.dtype)
