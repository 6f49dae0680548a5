"""Conversions between the network's ``eps`` and ``x0``, ``v`` and the score — here and nowhere else.

``z = alpha x0 + sigma eps``; ``x0 = (z - sigma eps) / alpha``; ``score = grad_z log p(z) = -eps / sigma``;
``v = alpha eps - sigma x0`` (Salimans & Ho 2022). ``lam`` is per sample, shape ``(B,)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .schedule import alpha_sigma

__all__ = ["Prediction", "bcast", "x0_of", "eps_of", "x0_from_eps", "eps_from_x0", "score_from_eps",
           "eps_from_score", "v_from_eps", "eps_from_v"]


@dataclass(frozen=True)
class Prediction:
    """What a model function hands a sampler at one ``(z, lam)``; every sampler consumes it.

    - ``eps``: the noise prediction to denoise with, ``x0 = (z - sigma eps) / alpha`` (shape of ``z``).
    - ``eps_renoise``: the noise to re-noise with, if not ``eps`` (CFG++, Chung et al. 2024:
      ``z' = alpha' x0 + sigma' eps_u``); only samplers with a deterministic direction term take it.
    - ``mean_grad``: ``s * grad_z log p(c|z)``, the DDPM mean shift's direction (Dhariwal & Nichol
      2021, Algorithm 1: ``mu + Sigma mean_grad``); only ancestral DDPM takes it.
    - ``hold``: this step does not move ``z`` (CFG-Zero*'s zero-init, see
      :mod:`diffguide.guidance.cfg_zero`).

    A sampler that cannot honour a field that is set raises: guidance is never dropped silently.
    """

    eps: Tensor
    eps_renoise: Tensor | None = None
    mean_grad: Tensor | None = None
    hold: bool = False


def bcast(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like`` of shape ``(B, ...)``."""
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim)).to(like.dtype)


def _as(lam: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    alpha, sigma = alpha_sigma(lam)
    return bcast(alpha, z), bcast(sigma, z)


def x0_of(z: Tensor, eps: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """``x0 = (z - sigma eps) / alpha`` at given ``alpha, sigma`` (floats, or tensors broadcasting with ``z``)."""
    return (z - sigma * eps) / alpha


def eps_of(z: Tensor, x0: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
    """``eps = (z - alpha x0) / sigma`` at given ``alpha, sigma``."""
    return (z - alpha * x0) / sigma


def x0_from_eps(z: Tensor, eps: Tensor, lam: Tensor) -> Tensor:
    return x0_of(z, eps, *_as(lam, z))


def eps_from_x0(z: Tensor, x0: Tensor, lam: Tensor) -> Tensor:
    return eps_of(z, x0, *_as(lam, z))


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
