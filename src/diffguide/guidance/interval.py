"""Guidance interval (Kynkäänniemi et al., NeurIPS 2024): guide only while ``lam`` lies in
``[lo, hi]``; elsewhere only the conditional network runs (one forward instead of CFG's two).

Bounds are in log-SNR ``lam``; :meth:`Interval.from_sigma` takes EDM's ``sigma = exp(-lam / 2)``
(the official code guides EDM Heun's 32-step grid at sigma ~ 1.61 ... 0.28, i.e. lam ~ -0.95 ... 2.55).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Interval"]


@dataclass(frozen=True)
class Interval:
    """``lo <= lam <= hi`` (either may be infinite)."""

    lo: float = -math.inf
    hi: float = math.inf

    def __post_init__(self) -> None:
        lo, hi = self.lo, self.hi
        for name, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
                raise ValueError(f"guidance interval {name} = {v!r} is invalid: expected a number (lam)")
        if not lo < hi:
            raise ValueError(f"guidance interval [{lo}, {hi}] is empty: expected lo < hi (in lam)")
        object.__setattr__(self, "lo", float(lo))
        object.__setattr__(self, "hi", float(hi))

    @classmethod
    def from_sigma(cls, sigma_lo: float, sigma_hi: float) -> Interval:
        """The interval ``sigma_lo <= sigma <= sigma_hi`` in EDM's ``sigma = exp(-lam / 2)``."""
        for name, v in (("sigma_lo", sigma_lo), ("sigma_hi", sigma_hi)):
            if not (isinstance(v, (int, float)) and v >= 0 and not math.isnan(v)):
                raise ValueError(f"guidance interval {name} = {v!r} is invalid: expected a number >= 0")
        if not sigma_lo < sigma_hi:
            raise ValueError(f"guidance interval sigma in [{sigma_lo}, {sigma_hi}] is empty: expected lo < hi")
        lam = lambda s: math.inf if s == 0 else -2 * math.log(s)  # noqa: E731
        return cls(lam(sigma_hi), lam(sigma_lo))

    def contains(self, lam: Tensor) -> Tensor:
        """Per-sample mask ``(B,)``: where guidance applies."""
        return (lam >= self.lo) & (lam <= self.hi)
