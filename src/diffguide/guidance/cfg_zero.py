"""CFG-Zero* (Fan et al. 2025): optimized scale and zero-init, in eps space.

Optimized scale: per sample ``s* = <eps_c, eps_u> / (||eps_u||^2 + 1e-8)`` and
``eps~ = s* eps_u + (1 + w)(eps_c - s* eps_u)`` (the paper's ``s = 1 + w``); ``s* = 1`` is plain CFG.
The paper projects flow velocities; here the projection is of the eps predictions (the issue's
choice), where ``s*`` is close to 1 at high noise (both predictions ~ z / sigma there).

Zero-init: the paper zeroes the flow's velocity for the first step(s). For a flow that is a no-op
step (``x`` does not move); for an eps-model, ``eps = 0`` is *not* a no-op (it asserts the latent
is clean). The faithful analogue is the no-op itself: the first ``zero_init`` steps are held
(:attr:`~diffguide.prediction.Prediction.hold`: ``z`` is not moved, no network runs), so sampling
effectively starts from the initial noise at the later grid point, as the flow does.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..prediction import Prediction, bcast
from .rule import Rule, Weight, flat_dot, wb

__all__ = ["CFGZeroStar", "CFGZeroState", "optimized_scale"]


def optimized_scale(eps_c: Tensor, eps_u: Tensor) -> Tensor:
    """``s* = <eps_c, eps_u> / (||eps_u||^2 + 1e-8)`` per sample, shape ``(B,)`` (the paper's eq. 7)."""
    return flat_dot(eps_c, eps_u) / (flat_dot(eps_u, eps_u) + 1e-8)


@dataclass
class CFGZeroState:
    """Evaluations so far in this run (for zero-init)."""

    step: int = 0


@dataclass(frozen=True)
class CFGZeroStar(Rule):
    """``zero_init``: steps held at the start (0 = none; the paper zeroes ~4 % of the steps, at least 1:
    1 of DDIM's 25);
    ``optimized``: use ``s*`` (``False`` forces ``s* = 1``, i.e. plain CFG)."""

    zero_init: int = 1
    optimized: bool = True
    name = "cfg-zero"

    def __post_init__(self) -> None:
        if isinstance(self.zero_init, bool) or not isinstance(self.zero_init, int) or self.zero_init < 0:
            raise ValueError(f"CFG-Zero* zero_init = {self.zero_init!r} is invalid: expected an integer >= 0")

    def start(self) -> CFGZeroState:
        return CFGZeroState()

    def holds(self, state: object) -> bool:
        assert isinstance(state, CFGZeroState)
        state.step += 1
        return state.step <= self.zero_init

    def pair(self, eps_c: Tensor, eps_u: Tensor, z: Tensor, lam: Tensor, w: Weight, state: object) -> Prediction:
        if not self.optimized:
            return Prediction(eps_c + wb(w, eps_c) * (eps_c - eps_u))
        s = bcast(optimized_scale(eps_c, eps_u), eps_u) * eps_u
        return Prediction(s + (1 + wb(w, eps_c)) * (eps_c - s))
