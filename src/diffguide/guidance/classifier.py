"""Classifier guidance (Dhariwal & Nichol 2021): the gradient of a noise-aware classifier."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..prediction import bcast
from ..schedule import alpha_sigma
from .cfg import Weight

__all__ = ["classifier_grad", "cg_eps"]

Classifier = Callable[[Tensor, Tensor], Tensor]


def classifier_grad(classifier: Classifier, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
    """``grad_z log softmax(classifier(z, lam))[c]``, shape like ``z``, float32.

    Autograd is enabled only here (sampling otherwise runs under ``no_grad``) and no graph outlives
    the call. Each sample's gradient is its own as long as the classifier treats samples
    independently (GroupNorm, or BatchNorm in eval mode).
    """
    with torch.enable_grad():
        z_ = z.detach().float().requires_grad_(True)
        logits = classifier(z_, lam)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(1, c.reshape(-1, 1)).sum()
        (grad,) = torch.autograd.grad(logp, z_)
    return grad


def cg_eps(eps: Tensor, grad: Tensor, lam: Tensor, scale: Weight) -> Tensor:
    """Score-form classifier guidance ``eps - s sigma grad_z log p(c|z)`` (ADM Algorithm 2)
    for DDIM and every ODE solver; ``scale`` a float or shape ``(B,)``."""
    sigma = bcast(alpha_sigma(lam)[1], eps)
    if isinstance(scale, Tensor):
        scale = bcast(scale, eps)
    return eps - scale * sigma * grad
