"""Classifier guidance (Dhariwal & Nichol 2021): the gradient of a noise-aware classifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..prediction import bcast
from ..schedule import alpha_sigma
from .reward import classifier_reward, reward_grad
from .rule import Weight, wb

__all__ = ["Classifier", "ClassifierTerm", "classifier_grad", "cg_eps"]

Classifier = Callable[[Tensor, Tensor], Tensor]


def classifier_grad(classifier: Classifier, z: Tensor, lam: Tensor, c: Tensor) -> Tensor:
    """``grad_z log softmax(classifier(z, lam))[c]``, shape and dtype of ``z`` (at least float32): the
    gradient of :func:`~diffguide.guidance.reward.classifier_reward` on ``z``.

    Autograd is enabled only here (sampling otherwise runs under ``no_grad``) and no graph outlives
    the call. Each sample's gradient is its own as long as the classifier treats samples
    independently (GroupNorm, or BatchNorm in eval mode).
    """
    return reward_grad(classifier_reward(classifier), z, lam, c)


def cg_eps(eps: Tensor, grad: Tensor, lam: Tensor, scale: Weight) -> Tensor:
    """Score-form classifier guidance ``eps - s sigma grad_z log p(c|z)`` (ADM Algorithm 2)
    for DDIM and every ODE solver; ``scale`` a float or shape ``(B,)``."""
    sigma = bcast(alpha_sigma(lam)[1], eps)
    return eps - wb(scale, eps) * sigma * grad.to(eps.dtype)


@dataclass(frozen=True, eq=False)
class ClassifierTerm:
    """Classifier guidance towards ``labels`` at scale ``s``: ``form="score"`` adds
    ``-s sigma grad`` to eps (any sampler); ``"mean"`` hands DDPM the mean shift ``s grad``."""

    classifier: Classifier
    labels: Tensor
    scale: Weight
    form: Literal["score", "mean"] = "score"

    def __post_init__(self) -> None:
        if self.form not in ("score", "mean"):
            raise ValueError(f"cg_form must be 'score' or 'mean', got {self.form!r}")

    def grad(self, z: Tensor, lam: Tensor) -> Tensor:
        """``grad_z log p(c|z)`` at ``labels`` (CPU forwards padded like the network's)."""
        return classifier_grad(self.classifier, z, lam, self.labels.to(z.device))
