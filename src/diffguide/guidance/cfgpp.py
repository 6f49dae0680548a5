"""CFG++ (Chung et al., ICLR 2025, Algorithm 1 in DDIM form).

Denoise with ``eps_l = eps_u + l (eps_c - eps_u)``, ``l in [0, 1]``, then **re-noise with the
unconditional** ``eps_u``: ``z' = alpha' x0(eps_l) + sigma' eps_u``. The paper's ``l`` plays the
part of CFG's scale ``s = 1 + w``, so in diffguide's convention ``l = 1 + w`` with ``w in [-1, 0]``
(``scale=l`` says it directly). The sampler honours the re-noise eps through
:attr:`~diffguide.prediction.Prediction.eps_renoise` (DDIM here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..prediction import Prediction
from .cfg import cfg
from .rule import Rule, Weight

__all__ = ["CFGPlusPlus"]


@dataclass(frozen=True)
class CFGPlusPlus(Rule):
    """CFG++ at ``l = 1 + w`` (pass ``scale=l``); ``l`` must lie in [0, 1]."""

    name = "cfgpp"
    zero_is_conditional = False  # at w = 0 it still re-noises with eps_u: the unconditional forward runs

    def check(self, w: Weight) -> None:
        lo, hi = (float(w.min()), float(w.max())) if isinstance(w, Tensor) else (w, w)
        if lo < -1 or hi > 0:
            bad = lo if lo < -1 else hi
            raise ValueError(f"CFG++ needs its lambda = 1 + w in [0, 1] (scale=lambda), got w = {bad:g} "
                             f"(lambda = {1 + bad:g})")

    def pair(self, eps_c: Tensor, eps_u: Tensor, z: Tensor, lam: Tensor, w: Weight, state: object) -> Prediction:
        eps = torch.lerp(eps_u, eps_c, 1.0 + w) if isinstance(w, float) else cfg(eps_c, eps_u, w)
        return Prediction(eps, eps_renoise=eps_u)
