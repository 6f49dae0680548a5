"""Building blocks shared by the U-Net and the noise-aware classifier (ADM style: Dhariwal & Nichol
2021, Sec. 3 and App. A; Ho et al. 2020, App. B).

Shapes: feature maps ``h`` are ``(B, ch, H, W)`` (any memory format), the conditioning embedding
``emb`` is ``(B, emb_dim)``, log-SNR ``lam`` is ``(B,)``. Nothing here syncs with the device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NetConfig",
    "make_config",
    "level_sizes",
    "LamEmbedding",
    "ResBlock",
    "AttnBlock",
    "Downsample",
    "Upsample",
    "Encoder",
    "Decoder",
    "check_inputs",
    "norm",
    "zero_",
]

LAM_CLAMP = 30.0  # |lam| is clamped here before the Fourier features; training/sampling use [-20, 20]


def _is_int(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


@dataclass(frozen=True)
class NetConfig:
    """Fields shared by :class:`~diffguide.nets.UNetConfig` and :class:`~diffguide.nets.ClassifierConfig`
    (all JSON-serialisable through ``dataclasses.asdict``; lists are turned back into tuples, so
    ``Config(**json.load(f))`` round-trips).

    ``channels[i]`` is the width at level ``i`` (resolution ``image_size / 2**i``, rounded up);
    ``attn_levels`` are the levels whose res blocks are followed by self-attention (``None``:
    the lowest level only, i.e. the middle block's attention); ``groups`` is the GroupNorm group
    count (must divide every width); ``heads`` the attention heads (must divide the widths of the
    attention levels); ``dropout`` is applied inside every res block.
    """

    in_channels: int
    image_size: int
    num_classes: int
    channels: tuple[int, ...] = (32, 64, 128)
    blocks_per_level: int = 1
    attn_levels: tuple[int, ...] | None = None
    emb_dim: int = 128
    dropout: float = 0.0
    groups: int = 8
    heads: int = 4

    _min_classes: ClassVar[int] = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in ("channels", "attn_levels"):
            v = getattr(self, f)
            if isinstance(v, list):
                object.__setattr__(self, f, tuple(v))
        if self.attn_levels is None:
            object.__setattr__(self, "attn_levels", (len(self.channels) - 1,) if self.channels else ())

        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"{name}: {field}={getattr(self, field)!r} is invalid: {why}")

        for f in ("in_channels", "image_size", "blocks_per_level", "emb_dim", "groups", "heads"):
            if not _is_int(getattr(self, f), 1):
                raise bad(f, "expected a positive integer")
        if not _is_int(self.num_classes, self._min_classes):
            raise bad("num_classes", f"expected an integer >= {self._min_classes}")
        if not (isinstance(self.channels, tuple) and self.channels and all(_is_int(c, 1) for c in self.channels)):
            raise bad("channels", "expected a non-empty tuple of positive integers, one per level")
        if any(c % self.groups for c in self.channels):
            raise bad("channels", f"every width must be divisible by groups={self.groups}")
        levels = range(len(self.channels))
        if not (isinstance(self.attn_levels, tuple) and all(_is_int(i, 0) and i in levels for i in self.attn_levels)):
            raise bad("attn_levels", f"expected a tuple of levels in {list(levels)}")
        for i in self.attn_levels:
            if self.channels[i] % self.heads:
                raise bad("heads", f"must divide the width {self.channels[i]} of attention level {i}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise bad("dropout", "expected a float in [0, 1)")

    @property
    def sizes(self) -> tuple[int, ...]:
        """Spatial size at each level, e.g. ``(28, 14, 7, 4)``."""
        return level_sizes(self.image_size, len(self.channels))


def level_sizes(image_size: int, n_levels: int) -> tuple[int, ...]:
    """``image_size`` halved, rounded up, per level (what a stride-2, padding-1 conv gives)."""
    s = [image_size]
    for _ in range(n_levels - 1):
        s.append((s[-1] + 1) // 2)
    return tuple(s)


CfgT = TypeVar("CfgT", bound=NetConfig)


def make_config(cls: type[CfgT], presets: dict[str, dict[str, Any]], preset: str, **fields: Any) -> CfgT:
    """``cls(**presets[preset], **fields)``; an unknown preset or field name raises ``ValueError``
    naming it and the valid choices (bad values are caught by the config's own checks)."""
    if preset not in presets:
        raise ValueError(f"unknown {cls.__name__} preset {preset!r}; valid presets: {sorted(presets)}")
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {valid}")
    return cls(**{**presets[preset], **fields})


def zero_(module: nn.Module) -> nn.Module:
    """Zero a module's parameters in place (ADM's ``zero_module``): a residual branch starts as identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def norm(ch: int, groups: int) -> nn.GroupNorm:
    """GroupNorm (``groups`` must divide ``ch``): per sample, so a batch never mixes (unlike BatchNorm)."""
    return nn.GroupNorm(groups, ch)


class LamEmbedding(nn.Module):
    """``lam (B,) -> (B, emb_dim)``: Fourier features of the clamped ``lam``, then an MLP.

    Frequencies are geometric in ``[f_min, f_max]`` rad per unit of ``lam`` (as the sinusoidal
    timestep embedding of Vaswani et al. 2017 / Ho et al. 2020, but on ``lam`` itself):
    ``f_min * 30 < 1`` keeps a slow, monotone feature over the whole range, ``f_max = 2`` resolves
    steps of a fraction of a unit while staying smooth over ``[-20, 20]``. Infinite ``lam`` (the
    clean end of a sampling grid) is clamped to ``+-30``, never fed as ``inf``.
    """

    freqs: Tensor

    def __init__(self, emb_dim: int, n_freqs: int = 32, f_min: float = 1 / 64, f_max: float = 2.0) -> None:
        super().__init__()
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(math.log(f_min), math.log(f_max), n_freqs)), persistent=False
        )
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def features(self, lam: Tensor) -> Tensor:
        """``(B,) -> (B, 2 n_freqs)`` float32: ``[cos(f lam), sin(f lam)]``."""
        arg = lam.float().clamp(-LAM_CLAMP, LAM_CLAMP)[:, None] * self.freqs[None]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)

    def forward(self, lam: Tensor) -> Tensor:
        return self.mlp(self.features(lam))


class ResBlock(nn.Module):
    """ADM residual block: ``h + F(h, emb)`` with ``F = conv(drop(SiLU(GN(.) (1 + s) + b))) o conv(SiLU(GN(h)))``
    (scale-shift / FiLM conditioning, Dhariwal & Nichol 2021, Sec. 3 "AdaGN"); the last conv is
    zero-initialised so the block starts as the identity (a 1x1 conv maps the skip when the
    channel count changes). ``emb_dim = 0`` gives an unconditioned block."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch) if emb_dim else None
        self.norm2 = norm(out_ch, groups)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        """``h (B, in_ch, H, W)``, ``emb (B, emb_dim)`` already through SiLU -> ``(B, out_ch, H, W)``."""
        r = self.conv1(F.silu(self.norm1(h)))
        r = self.norm2(r)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
            r = torch.addcmul(shift, r, 1 + scale)  # AdaGN: GN(r) (1 + s) + b
        r = self.conv2(self.drop(F.silu(r)))
        return self.skip(h) + r


class AttnBlock(nn.Module):
    """Multi-head self-attention over the ``H W`` positions with a residual connection (ADM's
    ``AttentionBlock``); ``heads`` must divide ``ch``. The output projection starts at zero."""

    def __init__(self, ch: int, *, heads: int = 4, groups: int = 32) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"attention heads={heads} must divide the channel count {ch}")
        self.heads = heads
        self.norm = norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = zero_(nn.Conv2d(ch, ch, 1))

    def forward(self, h: Tensor) -> Tensor:
        B, C, H, W = h.shape
        # (B, 3C, H, W) -> 3 x (B, heads, HW, C/heads)
        q, k, v = self.qkv(self.norm(h)).reshape(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        return h + self.proj(a.transpose(-1, -2).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Stride-2 3x3 conv ``in_ch -> out_ch``: ``H -> ceil(H / 2)`` (odd sizes such as 7 -> 4 work)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """3x3 conv ``in_ch -> out_ch`` at the low resolution, then nearest upsampling to an explicit
    ``size`` (the skip's): undoes :class:`Downsample` for odd sizes too (4 -> 7). Convolving
    before upsampling costs a quarter of ADM's conv-after-upsampling."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, h: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.conv(h), size=size, mode="nearest")


def _apply(layers: nn.Module, h: Tensor, emb: Tensor | None) -> Tensor:
    """Run one level's blocks (an ``nn.ModuleList``), feeding ``emb`` to the residual blocks."""
    for m in layers.children():
        h = m(h, emb) if isinstance(m, ResBlock) else m(h)
    return h


class Encoder(nn.Module):
    """The U-Net's down path, shared by the U-Net (which keeps the skips) and the classifier
    (which pools the output).

    ``conv_in``; then for each level ``i`` but the last: ``blocks_per_level`` res blocks at width
    ``channels[i]`` (each followed by self-attention if ``i in attn_levels``), the level's skip,
    and a :class:`Downsample` to ``channels[i + 1]``; the last level is ADM's middle block
    (res, attention if the level is in ``attn_levels``, res).

    ``forward(x (B, in_ch, H, W), emb (B, emb_dim)) -> (h (B, channels[-1], H_L, W_L), skips)``,
    ``skips[i]`` of shape ``(B, channels[i], H_i, W_i)`` for the levels but the last.
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...], blocks_per_level: int,
                 attn_levels: tuple[int, ...], emb_dim: int, *, groups: int, dropout: float, heads: int) -> None:
        super().__init__()

        def res(ch: int) -> ResBlock:
            return ResBlock(ch, ch, emb_dim, groups=groups, dropout=dropout)

        def attn(i: int) -> list[nn.Module]:
            return [AttnBlock(channels[i], heads=heads, groups=groups)] if i in attn_levels else []

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList(
            nn.ModuleList([m for _ in range(blocks_per_level) for m in (res(ch), *attn(i))]) for i, ch in
            enumerate(channels[:-1]))
        self.down = nn.ModuleList(Downsample(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True))
        L = len(channels) - 1
        self.middle = nn.ModuleList([res(channels[L]), *attn(L), res(channels[L])])

    def forward(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        h = self.conv_in(x)
        skips = []
        for layers, down in zip(self.levels, self.down, strict=True):
            h = _apply(layers, h, emb)
            skips.append(h)
            h = down(h)
        return _apply(self.middle, h, emb), skips


class Decoder(nn.Module):
    """The U-Net's up path, mirroring :class:`Encoder`: for each level ``i`` from the second
    lowest up, an :class:`Upsample` to ``channels[i]`` and the skip's size, concatenation with
    the level's skip, then ``blocks_per_level`` res blocks (the first eats the concatenation,
    ``2 channels[i] -> channels[i]``), each followed by attention if ``i in attn_levels``.

    ``forward(h (B, channels[-1], H_L, W_L), skips, emb) -> (B, channels[0], H, W)``.
    """

    def __init__(self, channels: tuple[int, ...], blocks_per_level: int, attn_levels: tuple[int, ...],
                 emb_dim: int, *, groups: int, dropout: float, heads: int) -> None:
        super().__init__()
        self.up = nn.ModuleList(Upsample(b, a) for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.levels = nn.ModuleList()
        for i, ch in enumerate(channels[:-1]):
            layers = nn.ModuleList()
            for j in range(blocks_per_level):
                layers.append(ResBlock(2 * ch if j == 0 else ch, ch, emb_dim, groups=groups, dropout=dropout))
                if i in attn_levels:
                    layers.append(AttnBlock(ch, heads=heads, groups=groups))
            self.levels.append(layers)

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor | None) -> Tensor:
        for i in reversed(range(len(self.levels))):
            skip = skips[i]
            h = self.up[i](h, skip.shape[-2:])
            h = _apply(self.levels[i], torch.cat([h, skip], dim=1), emb)
        return h


def check_inputs(name: str, z: Tensor, lam: Tensor, in_channels: int, image_size: int,
                 c: Tensor | None = None) -> None:
    """Shape checks at a network's edge (metadata only, no device sync): ``z (B, in_channels,
    image_size, image_size)``, ``lam (B,)`` floating, ``c (B,)`` integer."""
    want = f"(B, {in_channels}, {image_size}, {image_size})"
    if z.ndim != 4 or z.shape[1] != in_channels or tuple(z.shape[2:]) != (image_size, image_size):
        raise ValueError(f"{name}: z must have shape {want} (from its config), got {tuple(z.shape)}")
    B = z.shape[0]
    if lam.shape != (B,):
        raise ValueError(f"{name}: lam must have shape (B,) = ({B},) to match z, got {tuple(lam.shape)}")
    if not lam.is_floating_point():
        raise ValueError(f"{name}: lam must be a floating tensor (log-SNR), got {lam.dtype}")
    if c is not None:
        if c.shape != (B,):
            raise ValueError(f"{name}: c must have shape (B,) = ({B},) to match z, got {tuple(c.shape)}")
        if c.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name}: c must be an integer label tensor (null label = num_classes), got {c.dtype}")
