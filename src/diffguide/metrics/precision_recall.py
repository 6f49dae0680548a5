"""Improved precision and recall (Kynkäänniemi et al. 2019, Sec. 3) and class accuracy.

Each feature set approximates its manifold by the union of balls around its points, the radius
of a ball being the distance to the point's ``k``-th nearest neighbour within its own set
(``k = 3`` in the paper). Precision is the fraction of fake features inside the real manifold
(fidelity); recall the fraction of real features inside the fake manifold (coverage). Pairwise
distances are computed in row blocks with ``torch.cdist``, so 10k x 10k needs a few tens of MB.
Both sets are first centred on the manifold's mean: distances do not change, but ``cdist``'s fast
``|x|^2 + |y|^2 - 2 x.y`` route loses all precision in float32 for features far from the origin.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["class_accuracy", "in_manifold", "manifold_radii", "precision_recall"]

ArrayLike = np.ndarray | Tensor


def _as_tensor(a: ArrayLike, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    t = torch.as_tensor(a) if not isinstance(a, Tensor) else a.detach()
    if t.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(t.shape)}")
    return t.to(device=device or t.device, dtype=dtype)


def manifold_radii(features: ArrayLike, k: int = 3, *, block: int = 1024, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
    """Distance ``(N,)`` from each of the ``(N, D)`` features to its ``k``-th nearest neighbour in
    the same set (the point itself, at distance 0, is not counted)."""
    x = _as_tensor(features, dtype, device)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"need 1 <= k < N, got k={k}, N={x.shape[0]}")
    x = x - x.mean(0)
    out = []
    for i in range(0, x.shape[0], block):
        d = torch.cdist(x[i:i + block], x)
        # the k+1 smallest include the point itself (distance 0), so the largest of them is the k-th neighbour
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(out)


def in_manifold(manifold: ArrayLike, radii: ArrayLike, query: ArrayLike, *, block: int = 1024,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """Bool ``(M,)``: whether each ``(M, D)`` query lies within ``radii[i]`` of some
    ``manifold[i]`` (``(N, D)``; ``radii`` from :func:`manifold_radii`)."""
    m = _as_tensor(manifold, dtype, device)
    q = _as_tensor(query, dtype, m.device)
    r = torch.as_tensor(radii).to(m.device, dtype)
    if m.shape[1] != q.shape[1] or r.shape != (m.shape[0],):
        raise ValueError(f"shape mismatch: manifold {tuple(m.shape)}, radii {tuple(r.shape)}, query {tuple(q.shape)}")
    centre = m.mean(0)
    m, q = m - centre, q - centre
    return torch.cat([(torch.cdist(q[i:i + block], m) <= r).any(1) for i in range(0, q.shape[0], block)]).cpu()


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3, *, block: int = 1024,
                     dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> tuple[float, float]:
    """``(precision, recall)`` of ``fake`` ``(M, D)`` against ``real`` ``(N, D)`` features, each in
    ``[0, 1]``. ``block`` rows of distances are held at a time; ``device`` (default: where
    ``real`` lives) may be a GPU."""
    real_t = _as_tensor(real, dtype, device)
    fake_t = _as_tensor(fake, dtype, real_t.device)
    r_real = manifold_radii(real_t, k, block=block, dtype=dtype)
    r_fake = manifold_radii(fake_t, k, block=block, dtype=dtype)
    precision = in_manifold(real_t, r_real, fake_t, block=block, dtype=dtype).double().mean()
    recall = in_manifold(fake_t, r_fake, real_t, block=block, dtype=dtype).double().mean()
    return float(precision), float(recall)


def class_accuracy(scores: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of rows of ``scores`` ``(N, K)`` (probabilities or logits) whose argmax equals
    ``labels`` ``(N,)`` — for guided samples, how often the evaluator sees the requested class."""
    s = torch.as_tensor(scores)
    y = torch.as_tensor(labels)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"need scores (N, K) and labels (N,), got {tuple(s.shape)} and {tuple(y.shape)}")
    return float((s.argmax(1).cpu() == y.cpu().long()).double().mean())
