"""Class-conditional U-Net ``eps(z, lam, c)`` (ADM: Dhariwal & Nichol 2021; conditioning of the CFG
paper, Ho & Salimans 2022): a learned label embedding whose row ``K`` is the null label, added to
the log-SNR embedding and fed to every residual block by scale-shift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..schedule import Schedule, get_schedule
from .blocks import Decoder, Encoder, LamEmbedding, NetConfig, check_inputs, level_sizes, make_config, norm, zero_

__all__ = ["UNetConfig", "UNet", "unet_config", "UNET_PRESETS"]


@dataclass(frozen=True)
class UNetConfig(NetConfig):
    """Configuration of :class:`UNet`; see :class:`~diffguide.nets.blocks.NetConfig` for the fields.
    ``num_classes = K``; the label embedding has ``K + 1`` rows, row ``K`` the null label
    (``K = 0`` is an unconditional model)."""


UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: 23k parameters.
    "tiny": dict(channels=(8, 16), blocks_per_level=1, emb_dim=32, groups=4, heads=2),
    # MNIST 28x28 on a 2-core CPU (1.23 M parameters, 0.25 GFLOP per forward; the shipped MNIST model).
    # Training throughput against the reference MNIST CFG script: benchmarks/results/train_throughput.md
    # (benchmarks/bench_train.py); benchmarks/bench_nets.py times it against other configs.
    "small": dict(channels=(32, 64, 128), blocks_per_level=1, emb_dim=128, groups=8, heads=4, dropout=0.0),
    # 32-64 px on a GPU (DDPM's CIFAR-10 net: 128 x (1, 2, 2, 2), 2 blocks, dropout 0.1); attention
    # at every level of 16 px or less (set by unet_config).
    "base": dict(channels=(128, 256, 256, 256), blocks_per_level=2, emb_dim=512, groups=32, heads=4, dropout=0.1),
}


def _attn_at_16(image_size: int, n_levels: int) -> tuple[int, ...]:
    """Levels whose resolution is at most 16 (always including the lowest)."""
    return tuple(i for i, s in enumerate(level_sizes(image_size, n_levels)) if s <= 16 or i == n_levels - 1)


def unet_config(preset: str, *, in_channels: int, image_size: int, num_classes: int, **overrides: Any) -> UNetConfig:
    """A :class:`UNetConfig` from a named preset (``tiny``, ``small``, ``base``) with field overrides."""
    presets = {k: dict(v) for k, v in UNET_PRESETS.items()}
    if isinstance(image_size, int):
        presets["base"]["attn_levels"] = _attn_at_16(image_size, len(presets["base"]["channels"]))
    return make_config(UNetConfig, presets, preset, in_channels=in_channels, image_size=image_size,
                       num_classes=num_classes, **overrides)


class UNet(nn.Module):
    """``forward(z (B, C, H, W), lam (B,), c (B,) int) -> eps (B, C, H, W)`` in ``z``'s dtype.

    ``c`` in ``[0, K]``; ``c = K`` (``null_label``) is the unconditional model ``eps(z)``. Label
    dropout belongs to the training loss, not here. Labels are not range-checked (that would sync
    with the device); an out-of-range label fails inside the embedding lookup.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise ValueError(f"UNet needs a UNetConfig, got {type(config).__name__}")
        cfg = self.config = config
        self.num_classes = cfg.num_classes
        self.null_label = cfg.num_classes
        self.sample_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        # the schedule it is trained with (load_model sets the saved one): its default sampling grid
        self.train_schedule: Schedule = get_schedule("continuous")
        E, G = cfg.emb_dim, cfg.groups
        self.lam_emb = LamEmbedding(E)
        self.label_emb = nn.Embedding(cfg.num_classes + 1, E)  # row K: the null label
        self.encoder = Encoder(cfg.in_channels, cfg.channels, cfg.blocks_per_level, cfg.attn_levels or (), E,
                               groups=G, dropout=cfg.dropout, heads=cfg.heads)
        self.decoder = Decoder(cfg.channels, cfg.blocks_per_level, cfg.attn_levels or (), E,
                               groups=G, dropout=cfg.dropout, heads=cfg.heads)
        self.norm_out = norm(cfg.channels[0], G)
        self.conv_out = zero_(nn.Conv2d(cfg.channels[0], cfg.in_channels, 3, padding=1))  # eps = 0 at init

    def null_condition(self, c: Tensor) -> Tensor:
        """The null label ``K`` for a batch of labels (network protocol)."""
        return c.new_full(c.shape, self.null_label)

    def forward(self, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        check_inputs("UNet", z, lam, self.config.in_channels, self.config.image_size, c)
        emb = F.silu(self.lam_emb(lam) + self.label_emb(c))  # (B, emb_dim), SiLU shared by every block
        h = self.decoder(*self.encoder(z, emb), emb)
        return self.conv_out(F.silu(self.norm_out(h))).to(z.dtype)
