"""Inception Score (Salimans et al. 2016, Sec. 4): ``IS = exp E_x KL(p(y|x) || p(y))``, computed
per split of the samples with ``p(y)`` the split's mean prediction; reported as mean and
standard deviation over splits. Any classifier's softmax may stand in for Inception's (for
MNIST: the domain evaluator's)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["inception_score"]


def inception_score(probs: np.ndarray | torch.Tensor, splits: int = 10, eps: float = 1e-12) -> tuple[float, float]:
    """``(mean, std)`` of ``exp(mean_x KL(p(y|x) || p(y)))`` over ``splits`` near-equal contiguous
    splits (``np.array_split``; std with ``ddof=0`` as in the reference code) of ``probs``
    ``(N, K)`` (rows are probability vectors). Logs are taken of ``max(p, eps)``; float64.
    Ranges from 1 (every prediction equal) to K (confident and uniform over classes)."""
    p = (probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)).astype(np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"need 1 <= splits <= N, got splits={splits}, N={p.shape[0]}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("probs rows must be finite, non-negative and sum to 1 (pass softmax outputs, not logits)")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        # KL(p(y|x) || p(y)) = sum_y p(y|x) (log p(y|x) - log p(y)); 0 log 0 = 0.
        kl = (part * (np.log(np.maximum(part, eps)) - np.log(np.maximum(py, eps)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
