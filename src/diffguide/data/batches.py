"""Training batches as a pure function of ``(seed, step)``: resume needs no saved state."""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import Tensor

from .dataset import ImageData, check_batch_size

__all__ = ["Batches"]

# Independent random streams derived from (seed, stream, index) by numpy's SeedSequence hashing.
_PERM, _FLIP = 0, 1


def _generator(seed: int, stream: int, index: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _index(n: int, what: str) -> int:
    """``n`` as a Python int >= 0 (numpy and 0-d torch integers accepted)."""
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"{what} must be a non-negative integer, got {n!r}") from None
    if n < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {n}")
    return n


class Batches:
    """Shuffled mini-batches of ``data``, drawn without replacement epoch by epoch.

    ``get(step)`` depends only on ``(seed, step)`` (and the data and ``batch_size``): epoch
    ``e = step // steps_per_epoch`` shuffles with ``randperm(N)`` from a generator seeded by
    ``(seed, e)`` and ``step`` takes batch ``step % steps_per_epoch`` of it; the last
    ``N % batch_size`` images of each permutation are dropped. ``hflip`` mirrors each image
    left-right with probability 1/2, drawn from ``(seed, step)`` (leave it off for digits and text).
    ``device`` moves the data there once (default: where it is); batches come back on it.
    """

    def __init__(self, data: ImageData, batch_size: int, *, seed: int = 0, hflip: bool = False,
                 device: torch.device | str | None = None) -> None:
        check_batch_size(data, batch_size)
        seed = _index(seed, "seed")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.hflip = hflip
        self.images = data.images if device is None else data.images.to(device)
        self.labels = data.labels if device is None else data.labels.to(device)
        self.steps_per_epoch = len(data) // batch_size
        self._epoch = -1
        self._perm: Tensor | None = None

    def permutation(self, epoch: int) -> Tensor:
        """Indices ``(N,)`` of epoch ``epoch``'s shuffle (the latest one is cached)."""
        if epoch != self._epoch or self._perm is None:
            perm = torch.randperm(len(self.data), generator=_generator(self.seed, _PERM, epoch))
            self._perm, self._epoch = perm.to(self.images.device), epoch
        return self._perm

    def get(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch ``step`` (>= 0): ``x`` float32 ``(B, C, H, W)`` in [-1, 1], ``c`` int64 ``(B,)``.
        Fresh tensors: the caller may modify them."""
        step = _index(step, "step")
        epoch, i = divmod(step, self.steps_per_epoch)
        B = self.batch_size
        idx = self.permutation(epoch)[i * B:(i + 1) * B]
        x, c = self.images.index_select(0, idx), self.labels.index_select(0, idx)
        if self.hflip:
            flip = torch.rand(B, generator=_generator(self.seed, _FLIP, step)) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        return x, c

    def __repr__(self) -> str:
        return (f"Batches({self.data!r}, batch_size={self.batch_size}, seed={self.seed}, "
                f"hflip={self.hflip}, steps_per_epoch={self.steps_per_epoch})")
