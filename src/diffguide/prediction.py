"""Conversions between the network's ``eps`` and ``x0``, ``v`` and the score — here and nowhere else.

``z = alpha x0 + sigma eps``; ``x0 = (z - sigma eps) / alpha``; ``score = grad_z log p(z) = -eps / sigma``;
``v = alpha eps - sigma x0`` (Salimans & Ho 2022). ``lam`` is per sample, shape ``(B,)``.
"""

from __future__ import annotations

from torch import Tensor

from .schedule import alpha_sigma

__all__ = ["bcast", "x0_from_eps", "eps_from_x0", "score_from_eps", "eps_from_score", "v_from_eps",
           "eps_from_v"]


def bcast(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like`` of shape ``(B, ...)``."""
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim)).to(like.dtype)


def _as(lam: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = alpha_sigma(lam)
    return bcast(alpha, z), bcast(sigma, z)


def x0_from_eps(z: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    alpha, sigma = _as(lam, z)
    return (z - sigma * eps) / alpha


def eps_from_x0(z: Tensor, x0: Tensor, lam: Tensor) -> Tensor:
    alpha, sigma = _as(lam, z)
    return (z - alpha * x0) / sigma


def score_from_eps(eps: Tensor, lam: Tensor) -> Tensor:
    return -eps / _as(lam, eps)[1]


def eps_from_score(score: Tensor, lam: Tensor) -> Tensor:
    return -score * _as(lam, score)[1]


def v_from_eps(z: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    # v = alpha eps - sigma x0 = (eps - sigma z) / alpha, using alpha^2 + sigma^2 = 1.
    alpha, sigma = _as(lam, z)
    return (eps - sigma * z) / alpha


def eps_from_v(z: Tensor, v: Tensor, lam: Tensor) -> Tensor:
    alpha, sigma = _as(lam, z)
    return sigma * z + alpha * v
