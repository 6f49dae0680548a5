"""Noise-aware classifier ``p(c | z_lam)`` for classifier guidance (Dhariwal & Nichol 2021, Sec. 4:
the U-Net's encoder half, conditioned on the noise level only, with a pooled head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import Encoder, LamEmbedding, NetConfig, check_inputs, make_config, norm
from .unet import UNET_PRESETS, _attn_at_16

__all__ = ["ClassifierConfig", "NoiseClassifier", "classifier_config", "CLASSIFIER_PRESETS"]


@dataclass(frozen=True)
class ClassifierConfig(NetConfig):
    """Configuration of :class:`NoiseClassifier` (the U-Net's encoder fields; ``num_classes = K``
    logits, no null label)."""

    _min_classes: ClassVar[int] = 1


# The U-Net's presets without dropout: a classifier sees fresh noise at every step and overfits little.
CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {k: {**v, "dropout": 0.0} for k, v in UNET_PRESETS.items()}


def classifier_config(preset: str, *, in_channels: int, image_size: int, num_classes: int,
                      **overrides: Any) -> ClassifierConfig:
    """A :class:`ClassifierConfig` from a named preset (``tiny``, ``small``, ``base``) with field overrides."""
    presets = {k: dict(v) for k, v in CLASSIFIER_PRESETS.items()}
    if isinstance(image_size, int):
        presets["base"]["attn_levels"] = _attn_at_16(image_size, len(presets["base"]["channels"]))
    return make_config(ClassifierConfig, presets, preset, in_channels=in_channels, image_size=image_size,
                       num_classes=num_classes, **overrides)


class NoiseClassifier(nn.Module):
    """``forward(z (B, C, H, W), lam (B,)) -> logits (B, K)`` in ``z``'s dtype.

    Encoder (res blocks conditioned on the ``lam`` embedding, no label input), then
    GroupNorm, SiLU, spatial mean-pool and a linear head. Differentiable in ``z``:
    ``grad_z log softmax(logits)[c]`` is the classifier-guidance term.
    """

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise ValueError(f"NoiseClassifier needs a ClassifierConfig, got {type(config).__name__}")
        cfg = self.config = config
        self.num_classes = cfg.num_classes
        self.sample_shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        self.lam_emb = LamEmbedding(cfg.emb_dim)
        self.encoder = Encoder(cfg.in_channels, cfg.channels, cfg.blocks_per_level, cfg.attn_levels or (),
                               cfg.emb_dim, groups=cfg.groups, dropout=cfg.dropout, heads=cfg.heads)
        self.norm_out = norm(cfg.channels[-1], cfg.groups)
        self.head = nn.Linear(cfg.channels[-1], cfg.num_classes)

    def forward(self, z: Tensor, lam: Tensor) -> Tensor:
        check_inputs("NoiseClassifier", z, lam, self.config.in_channels, self.config.image_size)
        h, _ = self.encoder(z, F.silu(self.lam_emb(lam)))
        logits = self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))
        return logits.to(z.dtype)
