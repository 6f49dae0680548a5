"""What every sampler shares: the ``eps_fn`` contract, grid checks, x0 with optional clipping.

A sampler is ``sample(eps_fn, z, lams, *, noise=None, ...) -> x``: ``eps_fn(z, lam) -> eps`` with
``z`` of shape ``(B, ...)`` and ``lam`` of shape ``(B,)``; ``lams`` an increasing grid (noisy to
clean) ending in ``+inf`` (see :mod:`diffguide.schedule`); ``z`` the starting latent at
``lams[0]`` (standard normal for a VP model started at ``lam_min``). Samplers know nothing of
labels or guidance, and run under ``torch.no_grad()``.

Step coefficients are float64 Python scalars computed from the grid; tensors stay in ``z``'s dtype
(keep it float32: reduced precision belongs to network forwards only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from ..schedule import check_grid

EpsFn = Callable[[Tensor, Tensor], Tensor]
Noise = Callable[[], Tensor]
Callback = Callable[[int, float, Tensor, Tensor], None]  # (step, lam, z, x0)


def alpha_sigma_f(lam: float) -> tuple[float, float]:
    """``(alpha, sigma)`` as Python floats, stable for any ``lam`` (``+inf`` -> ``(1, 0)``)."""
    if lam == math.inf:
        return 1.0, 0.0
    # alpha^2 = sigmoid(lam) = 1 / (1 + exp(-lam)), written to avoid overflow on either side.
    log_a2 = -math.log1p(math.exp(-lam)) if lam > 0 else lam - math.log1p(math.exp(lam))
    log_s2 = log_a2 - lam
    return math.exp(0.5 * log_a2), math.exp(0.5 * log_s2)


def prepare(z: Tensor, lams: Tensor | list[float], noise: Noise | None) -> tuple[list[float], Noise]:
    """Validate inputs shared by all samplers; returns the grid as floats and a noise source."""
    if not isinstance(z, Tensor) or z.ndim < 1 or z.shape[0] == 0:
        raise ValueError(f"z must be a tensor of shape (B, ...) with B >= 1, got {getattr(z, 'shape', z)!r}")
    if not z.is_floating_point():
        raise ValueError(f"z must be a floating-point tensor, got dtype {z.dtype}")
    grid = check_grid(torch.as_tensor(lams)).tolist()
    return grid, noise if noise is not None else (lambda: torch.randn_like(z))


def call_eps(eps_fn: EpsFn, z: Tensor, lam: float) -> Tensor:
    """``eps_fn`` at a scalar ``lam``, checked for shape and cast back to ``z``'s dtype."""
    eps = eps_fn(z, torch.full((z.shape[0],), lam, dtype=z.dtype, device=z.device))
    if eps.shape != z.shape:
        raise ValueError(f"eps_fn returned shape {tuple(eps.shape)}, expected {tuple(z.shape)} like z")
    return eps.to(z.dtype)


def denoise(z: Tensor, eps: Tensor, alpha: float, sigma: float, clip_x0: float | None) -> tuple[Tensor, Tensor]:
    """``x0 = (z - sigma eps) / alpha``; with ``clip_x0`` the prediction is clamped to
    ``[-clip_x0, clip_x0]`` and ``eps`` recomputed to stay consistent with it."""
    x0 = (z - sigma * eps) / alpha
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = (z - alpha * x0) / sigma
    return x0, eps


def transitions(grid: list[float]) -> Iterator[tuple[int, float, float, tuple[float, float], tuple[float, float]]]:
    """``(i, lam, lam', (alpha, sigma), (alpha', sigma'))`` for each step ``lam -> lam'`` of the grid."""
    for i, (lam, lam_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        yield i, lam, lam_next, alpha_sigma_f(lam), alpha_sigma_f(lam_next)


def predict(eps_fn: EpsFn, z: Tensor, i: int, lam: float, alpha: float, sigma: float, clip_x0: float | None,
            callback: Callback | None) -> tuple[Tensor, Tensor]:
    """``(x0, eps)`` at step ``i`` (see :func:`denoise`), reported to ``callback`` if given."""
    x0, eps = denoise(z, call_eps(eps_fn, z, lam), alpha, sigma, clip_x0)
    if callback is not None:
        callback(i, lam, z, x0)
    return x0, eps
