"""Fréchet distance between Gaussians fitted to feature sets (FID; Heusel et al. 2017, eq. 6).

``d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1^1/2 S2 S1^1/2)``

The trace term equals ``tr sqrt(S1 S2)`` (the two matrices are similar); the default
``method="eigh"`` computes it from the symmetric positive semi-definite matrix
``S1^1/2 S2 S1^1/2`` with two symmetric eigen-decompositions, which is real by construction and
copes with singular covariances (fewer samples than dimensions). ``method="sqrtm"`` is the
reference implementations' route (``scipy.linalg.sqrtm(S1 @ S2)``, an ``eps`` ridge when the
product is singular, and a check that the imaginary part is rounding noise).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.linalg
import torch

__all__ = ["feature_stats", "fid_from_features", "frechet_distance"]

ArrayLike = np.ndarray | torch.Tensor


def _as_f64(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def feature_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (``N - 1`` denominator) of ``(N, D)``
    features, in float64."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or inf")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; rounding-negative eigenvalues are clipped to 0."""
    lam, U = np.linalg.eigh(s)
    return (U * np.sqrt(np.clip(lam, 0.0, None))) @ U.T


def _trace_sqrt_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    r1 = _psd_sqrt(sigma1)
    m = r1 @ sigma2 @ r1
    lam = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(lam, 0.0, None)).sum())


def _trace_sqrt_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # Singular product: add eps to the diagonals (the TTUR / pytorch-fid remedy).
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm has a significant imaginary part: {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, *,
                     method: Literal["eigh", "sqrtm"] = "eigh", eps: float = 1e-6) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``
    (means ``(D,)``, covariances ``(D, D)``), computed in float64. Tiny negative results from
    rounding are returned as ``0.0``. ``eps`` is only used by ``method="sqrtm"``."""
    mu1, mu2 = np.atleast_1d(_as_f64(mu1)), np.atleast_1d(_as_f64(mu2))
    sigma1, sigma2 = np.atleast_2d(_as_f64(sigma1)), np.atleast_2d(_as_f64(sigma2))
    D = mu1.shape[0]
    if mu1.shape != (D,) or mu2.shape != (D,) or sigma1.shape != (D, D) or sigma2.shape != (D, D):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 {sigma2.shape}"
        )
    if method == "eigh":
        tr_covmean = _trace_sqrt_eigh(sigma1, sigma2)
    elif method == "sqrtm":
        tr_covmean = _trace_sqrt_sqrtm(sigma1, sigma2, eps)
    else:
        raise ValueError(f"method must be 'eigh' or 'sqrtm', got {method!r}")
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(d2, 0.0)


def fid_from_features(a: ArrayLike, b: ArrayLike, *, method: Literal["eigh", "sqrtm"] = "eigh") -> float:
    """FID between two ``(N, D)`` feature sets."""
    return frechet_distance(*feature_stats(a), *feature_stats(b), method=method)
