"""A diffusers ``UNet2DModel`` as a diffguide network (the optional extra ``diffguide[diffusers]``).

diffusers' DDPM forward process is ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``: diffguide's
``z = alpha x0 + sigma eps`` at ``lam_t = log(abar_t / (1 - abar_t))``. The adapter keeps the
training scheduler's ``lam`` table (diffusers timestep ``i`` is ``alphas_cumprod[i]``, diffguide's
:class:`~diffguide.schedule.DiscreteSchedule` entry ``i``) and feeds the UNet the fractional timestep
at which the table, interpolated linearly in ``lam``, equals the asked ``lam`` (clamped to
``[0, T - 1]``; at the table's own values it is the integer timestep exactly). The UNet's output is
converted to eps through :mod:`diffguide.prediction` for the ``epsilon``, ``v_prediction`` and
``sample`` (x0) prediction types.

A class-conditional UNet (``num_class_embeds = K + 1``) has ``K`` classes and its last embedding as the
null class, as CFG training with label dropout leaves it; an unconditional one has no classes and
ignores the condition (guide it with a classifier or a reward). A UNet trained without label dropout
has no null row: say so with ``null_class=False`` (then ``num_class_embeds = K``, and classifier-free
guidance is refused), and give ``num_classes=K`` to have the embedding count checked.

:func:`load_diffusers` reads a local folder written by diffusers' ``save_pretrained`` (a ``unet/``
and a ``scheduler/`` folder, or a UNet folder with the scheduler's config beside it) from safetensors
only. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..prediction import eps_from_v, eps_from_x0
from ..schedule import DiscreteSchedule

__all__ = ["DiffusersUNet", "load_diffusers", "is_diffusers_folder", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _lam_table(alphas_cumprod: Tensor) -> Tensor:
    abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if abar.ndim != 1 or abar.numel() < 2 or not ((abar > 0) & (abar < 1)).all():
        raise ValueError("alphas_cumprod must be a 1-D table of values in (0, 1), one per training timestep")
    return torch.log(abar) - torch.log1p(-abar)


class DiffusersUNet(nn.Module):
    """``unet(z, t(lam), class_labels) -> eps`` for a diffusers ``UNet2DModel`` (module doc).

    ``alphas_cumprod``: the training scheduler's ``abar_t``, ``t = 0 .. T - 1``; ``prediction_type``:
    the scheduler's (``epsilon | v_prediction | sample``)."""

    lam_table: Tensor

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor, *, prediction_type: str = "epsilon",
                 num_classes: int | None = None, null_class: bool = True) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        table = _lam_table(alphas_cumprod)
        if (table[1:] >= table[:-1]).any():
            raise ValueError("alphas_cumprod must decrease strictly with the timestep")
        config: Any = unet.config
        self.unet = unet
        self.prediction_type = prediction_type
        size = config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (int(config.in_channels), int(h), int(w))
        k = config.num_class_embeds
        self.conditional = k is not None
        self.has_null = null_class and self.conditional
        if self.conditional and int(k) < 1 + self.has_null:
            raise ValueError(f"a class-conditional UNet needs num_class_embeds = K + 1 >= 2 (the last is the null "
                             f"class), got {k}" if null_class else f"num_class_embeds must be >= 1, got {k}")
        self.num_classes = int(k) - self.has_null if self.conditional else 0
        if num_classes is not None and not self.conditional and num_classes:
            raise ValueError(f"num_classes={num_classes} was given, but the UNet is unconditional "
                             f"(num_class_embeds is None)")
        if num_classes is not None and self.conditional and num_classes != self.num_classes:
            raise ValueError(
                f"num_class_embeds = {k} leaves no null row for {num_classes} classes (CFG training needs K + 1 "
                f"embeddings, the last one null); pass null_class=False to use it without classifier-free guidance"
                if null_class and int(k) == num_classes else
                f"num_class_embeds = {k} does not fit {num_classes} classes (expected {num_classes + null_class})")
        self.null_label = self.num_classes
        self.train_schedule = DiscreteSchedule(tuple(table.tolist()), "diffusers")
        self.register_buffer("lam_table", table.flip(0), persistent=False)  # increasing in lam: t = T-1 .. 0

    def null_condition(self, c: Tensor) -> Tensor:
        if self.conditional and not self.has_null:
            raise ValueError(f"this UNet has no null class (num_class_embeds = {self.num_classes}, "
                             f"null_class=False): classifier-free guidance needs one; sample it at w = 0, or guide "
                             f"it with a classifier, a reward or a guide network")
        return torch.full_like(c, self.null_label)

    def timestep(self, lam: Tensor) -> Tensor:
        """The fractional diffusers timestep of each ``lam`` (float64, in ``[0, T - 1]``)."""
        table = self.lam_table
        T = table.numel()
        lam = lam.to(table.device, torch.float64).clamp(float(table[0]), float(table[-1]))
        j = torch.searchsorted(table, lam, right=True).clamp(1, T - 1)  # table[j-1] <= lam < table[j]
        lo, hi = table[j - 1], table[j]
        pos = (j - 1).to(torch.float64) + (lam - lo) / (hi - lo)  # position in the flipped table
        return (T - 1) - pos

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        t = self.timestep(lam).to(z.device, torch.float32)
        labels = c.to(z.device).long() if self.conditional else None
        out = self.unet(z, t, class_labels=labels).sample
        dtype = torch.promote_types(z.dtype, torch.float32)  # convert in float32 at least (not in bf16)
        out, zz, lam = out.to(dtype), z.to(dtype), lam.to(z.device, dtype)
        if self.prediction_type == "v_prediction":
            return eps_from_v(zz, out, lam)
        if self.prediction_type == "sample":
            return eps_from_x0(zz, out, lam)
        return out


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a diffusers ``save_pretrained`` folder (pipeline or UNet)."""
    p = Path(path)
    return p.is_dir() and ((p / "unet" / "config.json").is_file() or (p / "config.json").is_file() and
                           "_class_name" in json.loads((p / "config.json").read_text()))


def load_diffusers(path: str | Path, *, num_classes: int | None = None, null_class: bool = True) -> DiffusersUNet:
    """A :class:`DiffusersUNet` from a local diffusers folder (module doc); safetensors weights only.
    ``num_classes`` and ``null_class`` as for :class:`DiffusersUNet`."""
    p = Path(path)
    if not p.exists():
        hint = " (a hub name? diffguide never downloads: save the model locally with save_pretrained)" \
            if str(path).count("/") == 1 and not str(path).startswith((".", "/")) else ""
        raise FileNotFoundError(f"no diffusers folder at {path}{hint}")
    try:
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise ImportError("loading a diffusers model needs the diffusers extra: pip install 'diffguide[diffusers]'") \
            from None
    unet_dir = p / "unet" if (p / "unet").is_dir() else p
    sched_file = next((f for f in (p / "scheduler" / "scheduler_config.json", p / "scheduler_config.json",
                                   unet_dir.parent / "scheduler" / "scheduler_config.json") if f.is_file()), None)
    if sched_file is None:
        raise FileNotFoundError(f"{p}: no scheduler_config.json (in scheduler/ or beside the UNet): the training "
                                f"noise schedule is needed to map lam to the UNet's timesteps")
    if not any(unet_dir.glob("*.safetensors")):
        raise ValueError(f"{unet_dir}: no .safetensors weights (diffguide does not unpickle .bin files)")
    unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=True, local_files_only=True,
                                       low_cpu_mem_usage=False)
    config = json.loads(sched_file.read_text())
    scheduler = DDPMScheduler.from_config(config)
    return DiffusersUNet(unet.eval(), scheduler.alphas_cumprod,
                         prediction_type=config.get("prediction_type", "epsilon"), num_classes=num_classes,
                         null_class=null_class)
