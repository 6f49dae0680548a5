"""Image grids, sample files and the uint8 <-> [-1, 1] conversions (Pillow and numpy only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .fileio import atomic_path, open_npz

__all__ = ["to_uint8", "from_uint8", "make_grid", "save_grid", "save_samples", "load_samples"]


def to_uint8(x: Tensor) -> np.ndarray:
    """Images in [-1, 1], ``(N, C, H, W)`` -> uint8 ``(N, H, W, C)`` numpy: ``round((x + 1) * 127.5)``,
    ``x`` clamped to [-1, 1] first (the inverse of :func:`from_uint8` on its values)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(u: Tensor) -> Tensor:
    """Pixel values in [0, 255] (uint8, or any integer dtype) -> float32 in [-1, 1] as ``u / 127.5 - 1``
    (0 -> -1, 255 -> 1 exactly); same shape and layout (NCHW stays NCHW)."""
    return u.to(torch.float32, copy=True).div_(127.5).sub_(1.0)  # in place on the copy: no second buffer


def make_grid(x: Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images in [-1, 1] into one uint8 ``(H', W', C)`` array, ``nrow`` per row."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(imgs):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return grid


def save_grid(x: Tensor, path: str | Path, nrow: int, scale: int = 2) -> Path:
    """Write a PNG grid of ``x`` (upscaled ``scale`` times with nearest neighbours)."""
    g = make_grid(x, nrow)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    if scale > 1:
        # Image.NEAREST is set dynamically (invisible to mypy); Image.Resampling needs Pillow >= 9.1
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)  # type: ignore[attr-defined]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def save_samples(path: str | Path, x: Tensor, labels: Tensor, **meta: float | int | str) -> Path:
    """Samples as ``.npz``: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int64, plus scalar metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scalars: dict[str, Any] = {k: np.asarray(v) for k, v in meta.items()}
    images, labels_np = to_uint8(x), labels.cpu().numpy().astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, images=images, labels=labels_np, **scalars)
    return path


def load_samples(path: str | Path) -> tuple[Tensor, Tensor | None]:
    """``(images in [-1, 1] (N, C, H, W), labels or None)`` from a ``.npz`` with ``images`` uint8 NHWC."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file not found: {path}")
    with open_npz(path) as f:
        if "images" not in f:
            raise ValueError(f"{path} has no 'images' array (found {sorted(f.files)})")
        images = f["images"]
        labels = torch.from_numpy(f["labels"].astype(np.int64)) if "labels" in f else None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{path}: 'images' must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}")
    return from_uint8(torch.from_numpy(images).permute(0, 3, 1, 2)), labels
