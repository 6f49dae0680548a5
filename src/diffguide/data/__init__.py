"""Labelled image data in memory (built-in MNIST, image folders, ``.npz``) and training batches.

``load_data(spec) -> ImageData`` (float32 ``(N, C, S, S)`` images in [-1, 1], int64 labels in
``[0, K)``); ``Batches(data, batch_size, seed=...).get(step) -> (x, c)`` is a pure function of
``(seed, step)``.
"""

from .batches import Batches
from .dataset import ImageData, check_batch_size, load_data
from .mnist import load_mnist

__all__ = ["Batches", "ImageData", "check_batch_size", "load_data", "load_mnist"]
