"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4 and App. D).

KID is the squared MMD between the feature distributions of two sets under the cubic polynomial
kernel ``k(x, y) = (x . y / d + 1)^3``, estimated without bias: the diagonal terms of the within-set
kernel sums are left out. As in the paper's code, it is averaged over random subsets of equal size
(``subset_size`` from each set, ``subsets`` times), and the spread over subsets is reported beside
the mean. Unlike FID, its estimator is unbiased, so it can be compared across set sizes; it can be
slightly negative for two samples of one distribution.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["kid", "mmd2_unbiased"]


def mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    """The unbiased squared MMD of ``a`` ``(m, d)`` and ``b`` ``(m, d)`` (same ``m``) under the cubic kernel."""
    d = a.shape[1]
    m = a.shape[0]
    kaa = (a @ a.T / d + 1) ** 3
    kbb = (b @ b.T / d + 1) ** 3
    kab = (a @ b.T / d + 1) ** 3
    within = (kaa.sum() - np.trace(kaa) + kbb.sum() - np.trace(kbb)) / (m * (m - 1))
    return float(within - 2 * kab.sum() / (m * m))


def kid(real: ArrayLike, fake: ArrayLike, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of the unbiased KID over ``subsets`` random subsets of ``min(subset_size, len(real),
    len(fake))`` features of each set (float64; a fixed ``seed``, so a figure is reproducible)."""
    a, b = np.asarray(real, dtype=np.float64), np.asarray(fake, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of one D, got {a.shape} and {b.shape}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features in each set, got {len(a)} and {len(b)}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))
