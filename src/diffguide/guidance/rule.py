"""What every guidance rule shares: the weight type and the rule contract.

A rule combines a positive prediction ``eps_c`` (the condition) and a negative one ``eps_u`` (the
null condition, a negative condition, or a weaker network) at strength ``w`` (the CFG paper's
weight) into a :class:`~diffguide.prediction.Prediction`. Rules are frozen parameter objects; a
rule that keeps state across steps creates it in :meth:`Rule.start`, which
:class:`~diffguide.guidance.core.Guidance` calls once per sampling run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from torch import Tensor

from ..prediction import Prediction, bcast

__all__ = ["Rule", "Weight", "wb", "scaled", "flat_dot"]

Weight = float | Tensor


def wb(w: Weight, like: Tensor) -> Weight:
    """A weight ready to multiply ``like`` ``(B, ...)``: floats stay floats, ``(B,)`` tensors broadcast."""
    return bcast(w.to(like.device), like) if isinstance(w, Tensor) else w


def scaled(w: Weight, g: Weight) -> Weight:
    """``w * g`` for floats and ``(B,)`` tensors alike (a float result when both are floats)."""
    if isinstance(w, Tensor) and isinstance(g, Tensor):
        return w.to(g.device) * g
    return w * g  # type: ignore[operator, return-value]


def flat_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all but the batch dimension, shape ``(B,)``."""
    return (a * b).flatten(1).sum(1)


@dataclass(frozen=True)
class Rule:
    """The contract. ``space``: where the rule acts (``"eps"`` or ``"x0"``). ``zero_is_conditional``:
    at ``w = 0`` the rule is the conditional prediction alone, so the negative forward can be skipped."""

    name: ClassVar[str] = "rule"
    space: ClassVar[Literal["eps", "x0"]] = "eps"
    zero_is_conditional: ClassVar[bool] = True

    def start(self) -> object:
        """Fresh per-run state (``None`` for a stateless rule)."""
        return None

    def holds(self, state: object) -> bool:
        """Whether this evaluation is a held step (no forward, ``z`` unchanged); see CFG-Zero*."""
        return False

    def check(self, w: Weight) -> None:
        """Raise ``ValueError`` if ``w`` is not a strength this rule accepts."""

    def pair(self, eps_c: Tensor, eps_u: Tensor, z: Tensor, lam: Tensor, w: Weight, state: object) -> Prediction:
        raise NotImplementedError
