"""Labelled images from a ``.npz`` file: arrays ``images``, ``labels`` and optionally ``class_names``.

Layouts of ``images`` (channels ``C`` = 1 or 3): ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``.
The channel axis is the one of size 1 or 3; when both axis 1 and axis 3 qualify (tiny images),
channels-first is chosen unless only the channels-last reading is square.

Value ranges, decided from the dtype and the data (tolerance ``1e-3``, then clamped):

- integer dtype: [0, 255] (8-bit), mapped ``x / 127.5 - 1`` — also when the values happen to be
  only 0 and 1;
- float dtype with no negative value: [0, 1], mapped ``2 x - 1``;
- float dtype with a negative value: [-1, 1], kept.

Anything outside (NaN, a float above 1, an integer above 255, ...) is an error.
``labels`` are ``(N,)`` integers (floats are accepted when whole) in ``[0, K)``, where ``K`` is
``len(class_names)`` if given, else ``max(labels) + 1`` (class names then ``"0"``, ``"1"``, ...).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..images import from_uint8
from .labels import check_labels

__all__ = ["read_npz"]

_TOL = 1e-3


def read_npz(path: Path) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Read ``path`` as ``(images, labels, class_names)``: float32 ``(N, C, H, W)`` in [-1, 1],
    int64 ``(N,)`` and one name per class. See the module docstring for the rules."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            for key in ("images", "labels"):
                if key not in keys:
                    raise ValueError(f"{path} has no array {key!r}; expected arrays 'images' and 'labels' "
                                     f"(and optionally 'class_names'), found {sorted(keys)}")
            images, labels = z["images"], z["labels"]
            names = z["class_names"] if "class_names" in keys else None
    except ValueError as e:
        if "pickle" in str(e):  # an object array: np.save of a list of str or mixed types
            raise ValueError(f"{path} holds an object array, which is not read (no pickles); store "
                             "class_names as a string array, e.g. np.array(names, dtype=str)") from e
        raise
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read {path} as a .npz file: {e}") from e

    x = _images(images, path)
    c = _labels(labels, path)
    if c.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: {x.shape[0]} images but {c.shape[0]} labels; they must match")
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise ValueError(f"{path}: class_names must be a 1-D string array, got {names.dtype} of shape "
                             f"{names.shape}")
        class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
        if not class_names:
            raise ValueError(f"{path}: class_names is empty")
    else:
        class_names = tuple(str(k) for k in range(int(c.max()) + 1 if c.numel() else 1))
    check_labels(c, len(class_names), str(path))
    return x, c, class_names


def _images(a: np.ndarray, path: Path) -> Tensor:
    """Layout -> ``(N, C, H, W)``; value range -> float32 [-1, 1]."""
    shape = a.shape
    if a.ndim == 3:
        first = True
        a = a[:, None]
    elif a.ndim == 4 and (shape[1] in (1, 3) or shape[3] in (1, 3)):
        first = shape[1] in (1, 3)
        if first and shape[3] in (1, 3):  # ambiguous: prefer the square reading, else channels-first
            first = shape[2] == shape[3] or shape[1] != shape[2]
    else:
        raise ValueError(f"{path}: images of shape {shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                         "with C = 1 or 3")
    if a.shape[0] == 0:
        raise ValueError(f"{path}: images is empty (shape {shape})")
    x = torch.from_numpy(np.ascontiguousarray(a))
    if a.ndim == 4 and not first:
        x = x.permute(0, 3, 1, 2)

    kind = a.dtype.kind
    if kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{path}: integer images must lie in [0, 255], found values in [{lo}, {hi}]")
        return from_uint8(x).contiguous()
    if kind != "f":
        raise ValueError(f"{path}: images must be integer (uint8 in [0, 255]) or float ([0, 1] or [-1, 1]), "
                         f"got dtype {a.dtype}")
    x = x.to(torch.float32)
    flo, fhi = x.min().item(), x.max().item()
    if not (flo >= -1 - _TOL and fhi <= 1 + _TOL):  # also catches NaN
        raise ValueError(f"{path}: float images must lie in [0, 1] or [-1, 1], found values in "
                         f"[{flo:.4g}, {fhi:.4g}] (store 8-bit data as uint8)")
    if flo >= 0:  # no negative value: [0, 1]
        x = x.mul(2.0).sub_(1.0)
    return x.clamp_(-1.0, 1.0).contiguous()


def _labels(a: np.ndarray, path: Path) -> Tensor:
    if a.ndim != 1:
        raise ValueError(f"{path}: labels must have shape (N,), got {a.shape}")
    if a.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{path}: labels must be integers; label {a[i]!r} at index {i} is not")
        a = a.astype(np.int64)
    elif a.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got dtype {a.dtype}")
    elif a.dtype == np.uint64 and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{path}: label {int(a.max())} is out of range")
    return torch.from_numpy(a.astype(np.int64))
