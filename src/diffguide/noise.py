"""Per-sample noise streams: the same seed gives the same sample whatever the batch size.

Sample ``i`` of a run with seed ``s`` draws every one of its noise tensors (the starting ``z``
and each stochastic step's noise) from its own generator, seeded from ``(s, i)`` through
numpy's ``SeedSequence`` (so nearby seeds and indices do not collide).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["PerSampleNoise", "sample_seeds"]


def sample_seeds(seed: int, n: int, start: int = 0) -> list[int]:
    """Seeds of samples ``start .. start + n - 1`` of a run with base ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return [int(np.random.SeedSequence([int(seed), i]).generate_state(1, np.uint64)[0] >> 1)
            for i in range(start, start + n)]


class PerSampleNoise:
    """Callable that returns the next standard-normal draw, shape ``(B, *shape)``, one generator a row.

    ``seeds`` has one integer per sample (see :func:`sample_seeds`). Noise is drawn on the CPU in
    float32 and moved to ``device``, so CPU and CUDA runs see the same numbers.
    """

    def __init__(self, seeds: Sequence[int], shape: Sequence[int], *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if len(seeds) == 0:
            raise ValueError("PerSampleNoise needs at least one seed")
        self.shape = tuple(int(s) for s in shape)
        self.device, self.dtype = torch.device(device), dtype
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self) -> Tensor:
        out = torch.empty((len(self.generators), *self.shape))
        for row, g in zip(out, self.generators, strict=True):
            torch.randn(self.shape, generator=g, out=row)
        return out.to(self.device, self.dtype)
