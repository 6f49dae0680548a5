"""Training data held in memory as one float32 image tensor in [-1, 1] and one int64 label tensor.

``load_data(spec)`` reads the built-in MNIST, a folder of class sub-folders, or a ``.npz`` file, and
returns an :class:`ImageData`; the trainer indexes its tensors directly (see :class:`Batches`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..images import from_uint8
from ..validate import optional_positive_int, positive_int
from .labels import check_labels

__all__ = ["ImageData", "load_data", "check_batch_size"]

_MNIST_SPECS = {"mnist": "train", "mnist:train": "train", "mnist:test": "test"}


@dataclass(frozen=True, eq=False, repr=False)
class ImageData:
    """A labelled image set in memory.

    ``images``: float32 ``(N, C, H, W)`` in [-1, 1], square (``H == W``); ``labels``: int64 ``(N,)``
    in ``[0, num_classes)`` (the null label ``num_classes`` never appears in data);
    ``class_names[k]`` names label ``k``; ``name`` is the spec it was loaded from (``"mnist:train"``,
    a folder or ``.npz`` path), so ``load_data(data.name)`` reads it again.
    Fields cannot be reassigned; the tensors themselves are not copied or locked.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        x, c, K = self.images, self.labels, self.num_classes
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be a float32 tensor (N, C, H, W), got "
                f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{self.name}: no images")
        if x.shape[2] != x.shape[3]:
            raise ValueError(f"{self.name}: images must be square, got H x W = {x.shape[2]} x {x.shape[3]}")
        if not isinstance(c, Tensor) or c.dtype != torch.int64 or c.ndim != 1:
            raise ValueError(
                f"{self.name}: labels must be an int64 tensor (N,), got "
                f"{getattr(c, 'dtype', type(c).__name__)} of shape {tuple(getattr(c, 'shape', ()))}"
            )
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"{self.name}: {x.shape[0]} images but {c.shape[0]} labels")
        positive_int(K, f"{self.name}: num_classes")
        names = tuple(str(n) for n in self.class_names)
        if len(names) != K:
            raise ValueError(f"{self.name}: {len(names)} class names for num_classes={K}")
        object.__setattr__(self, "class_names", names)
        check_labels(c, K, self.name)
        lo, hi = x.min().item(), x.max().item()
        if not (lo >= -1.0 and hi <= 1.0):  # also catches NaN
            raise ValueError(f"{self.name}: images must lie in [-1, 1], found values in [{lo:.4g}, {hi:.4g}]")

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Height = width, in pixels."""
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (
            f"ImageData(name={self.name!r}, n={len(self)}, channels={self.channels}, "
            f"image_size={self.image_size}, num_classes={self.num_classes})"
        )


def check_batch_size(data: ImageData, batch_size: int) -> None:
    """Raise a ``ValueError`` unless ``batch_size`` is a positive integer no larger than ``len(data)``."""
    positive_int(batch_size, "batch_size")
    if batch_size > len(data):
        raise ValueError(
            f"batch_size {batch_size} exceeds the {len(data)} images in {data.name}; "
            f"use a batch size of at most {len(data)} or more data"
        )


def load_data(spec: str | os.PathLike[str], *, image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Load a labelled image set as :class:`ImageData` (images float32 ``(N, C, S, S)`` in [-1, 1]).

    ``spec`` is one of

    - ``"mnist"`` (= ``"mnist:train"``, 60k) or ``"mnist:test"`` (10k): built-in, 28 x 28, 1 channel;
    - a folder with one sub-folder per class (class names = sorted sub-folder names; files with an
      image extension Pillow reads, searched recursively; hidden files and folders skipped);
    - a ``.npz`` file with ``images`` and ``labels`` (and optionally ``class_names``); see
      :func:`diffguide.data.npz.read_npz` for the accepted layouts and value ranges.

    ``channels`` (1 or 3) converts every image to grayscale (ITU-R 601 luma) or RGB; by default it
    is the data's own (a folder mixing grayscale and colour images is an error). ``image_size``
    resizes the shorter side to ``image_size`` (bicubic, antialiased) and center-crops a square;
    by default images keep their size, which must be square and common to all.
    A built-in name wins over a folder of that name in the working directory (write ``./mnist``).
    """
    optional_positive_int(image_size, "image_size")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"data spec must be a string or path, got {type(spec).__name__}")
    spec = os.fspath(spec)

    if spec in _MNIST_SPECS:
        from .mnist import load_mnist

        split = _MNIST_SPECS[spec]
        images, labels = load_mnist(split)
        x = from_uint8(images)
        name = f"mnist:{split}"
        return _finish(x, labels, tuple(str(k) for k in range(10)), name, image_size, channels)
    if spec.startswith("mnist:"):
        raise ValueError(f"unknown MNIST split in {spec!r}; expected 'mnist:train' or 'mnist:test'")

    path = Path(spec).expanduser()
    if path.is_dir():
        from .folder import read_image_folder

        images, labels, class_names = read_image_folder(path, image_size=image_size, channels=channels)
        return ImageData(from_uint8(images), labels, len(class_names), class_names, spec)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"{path} is a file but not a .npz; expected a .npz file or a folder of class "
                             "sub-folders")
        from .npz import read_npz

        x, labels, class_names = read_npz(path)
        return _finish(x, labels, class_names, spec, image_size, channels)
    if os.sep in spec or "/" in spec or spec.startswith((".", "~")) or path.suffix:
        raise FileNotFoundError(f"no such file or folder: {spec}")
    raise ValueError(
        f"unknown data spec {spec!r} (and no file or folder of that name); expected 'mnist', "
        "'mnist:train', 'mnist:test', a folder of class sub-folders or a .npz file"
    )


def _finish(x: Tensor, labels: Tensor, class_names: tuple[str, ...], name: str,
            image_size: int | None, channels: int | None) -> ImageData:
    """Set channels and size of float ``(N, C, H, W)`` images in [-1, 1], then wrap them."""
    if channels == 1:  # fewer channels to resize: convert first
        x = set_channels(x, channels)
    x = set_channels(fit_size(x, image_size, name), channels)
    return ImageData(x, labels, len(class_names), class_names, name)


def set_channels(x: Tensor, channels: int | None) -> Tensor:
    """Convert ``(N, C, H, W)`` images between 1 channel (luma, ITU-R 601 like Pillow's ``"L"``) and
    3 (gray repeated); ``None`` or the same count returns ``x`` unchanged."""
    C = x.shape[1]
    if channels is None or channels == C:
        return x
    if C == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if C == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
        return torch.einsum("nchw,c->nhw", x, w).unsqueeze(1).clamp_(-1.0, 1.0)
    raise ValueError(f"cannot convert {C}-channel images to {channels} channels")


def fit_size(x: Tensor, image_size: int | None, source: str, chunk: int = 4096) -> Tensor:
    """Resize the shorter side of ``(N, C, H, W)`` images in [-1, 1] to ``image_size`` (bicubic,
    antialiased, clamped to [-1, 1]) and center-crop a square. ``None`` keeps the size but requires
    ``H == W``."""
    H, W = x.shape[2], x.shape[3]
    if image_size is None:
        if H != W:
            raise ValueError(f"{source}: images are not square (H x W = {H} x {W}); pass image_size to "
                             "resize the shorter side and center-crop")
        return x
    if H == W == image_size:
        return x
    s = image_size
    h, w = (s, max(s, round(W * s / H))) if H <= W else (max(s, round(H * s / W)), s)
    top, left = (h - s) // 2, (w - s) // 2
    out = torch.empty(x.shape[0], x.shape[1], s, s, dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], chunk):
        y = F.interpolate(x[i:i + chunk], size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        out[i:i + chunk] = y[:, :, top:top + s, left:left + s].clamp_(-1.0, 1.0)
    return out
