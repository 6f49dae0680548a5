"""A guidance method as a value: which rule, with which parameters and stages.

:class:`GuidanceSpec` is what the CLI, the API's ``sample_images`` and sweeps share: a frozen,
JSON-able description (``rule``, rescale ``phi``, interval, strength schedule, dynamic threshold and
the rules' own parameters) that :meth:`GuidanceSpec.kwargs` turns into ``guided(...)`` arguments.
The strength itself (``w`` or ``scale``) is not part of it: sweeps vary it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .apg import APG
from .cfg import CFG
from .cfg_zero import CFGZeroStar
from .cfgpp import CFGPlusPlus
from .interval import Interval
from .rescale import check_phi
from .rule import Rule
from .threshold import check_percentile
from .weight_schedule import SCHEDULES

__all__ = ["GuidanceSpec", "METHODS", "DEFAULT_INTERVAL", "num_text"]

# The CLI's --guidance names: a rule, or plain CFG with one stage switched on.
METHODS = ("cfg", "rescale", "interval", "apg", "cfgpp", "cfg-zero")
# The guidance interval's official setting (Kynkaenniemi et al. 2024, EDM Heun 32 steps: sigma ~ 1.61 ... 0.28).
DEFAULT_INTERVAL = (-2 * math.log(1.61), -2 * math.log(0.28))


def num_text(x: float) -> str:
    """Shortest round-tripping text of a float, without a trailing ``.0`` (3.0 -> '3', 0.1 -> '0.1'):
    distinct values give distinct tags (guidance methods here, sweep settings in experiments.sweep)."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class GuidanceSpec:
    """``rule``: ``cfg | apg | cfgpp | cfg-zero``; ``phi``: rescale in [0, 1] (0 = off); ``interval``:
    ``(lam_lo, lam_hi)`` or ``None`` (guide everywhere); ``w_schedule``: ``constant | linear | cosine``;
    ``threshold``: dynamic-thresholding percentile in (0, 1) or ``None``; ``beta, r, eta, clip``: APG's;
    ``zero_init``, ``optimized``: CFG-Zero*'s."""

    rule: str = "cfg"
    phi: float = 0.0
    interval: tuple[float, float] | None = None
    w_schedule: str = "constant"
    threshold: float | None = None
    beta: float = -0.5
    r: float = 15.0
    eta: float = 0.0
    clip: float = 1.0
    zero_init: int = 1
    optimized: bool = True

    def __post_init__(self) -> None:
        if self.rule not in ("cfg", "apg", "cfgpp", "cfg-zero"):
            raise ValueError(f"unknown guidance rule {self.rule!r}; expected cfg, apg, cfgpp or cfg-zero")
        object.__setattr__(self, "phi", check_phi(self.phi))
        if self.interval is not None:
            iv = Interval(*self.interval)  # a list (from JSON) or a tuple
            object.__setattr__(self, "interval", (iv.lo, iv.hi))
        if self.w_schedule not in SCHEDULES:
            raise ValueError(f"unknown guidance schedule {self.w_schedule!r}; expected one of {sorted(SCHEDULES)}")
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_percentile(self.threshold))
        self.make_rule()  # validates the rule's parameters

    @classmethod
    def method(cls, name: str, **params: Any) -> GuidanceSpec:
        """The spec of a CLI ``--guidance`` name: ``rescale`` is CFG with ``phi`` (0.7 unless given),
        ``interval`` CFG with an interval (the paper's unless given); the others name the rule."""
        if name not in METHODS:
            raise ValueError(f"unknown guidance method {name!r}; expected one of {', '.join(METHODS)}")
        if name == "rescale":
            params.setdefault("phi", 0.7)
            return cls(**params)
        if name == "interval":
            params.setdefault("interval", DEFAULT_INTERVAL)
            return cls(**params)
        return cls(rule=name, **params)

    def make_rule(self) -> Rule:
        if self.rule == "apg":
            return APG(beta=self.beta, r=self.r, eta=self.eta, clip=self.clip)
        if self.rule == "cfgpp":
            return CFGPlusPlus()
        if self.rule == "cfg-zero":
            return CFGZeroStar(zero_init=self.zero_init, optimized=self.optimized)
        return CFG()

    def kwargs(self) -> dict[str, Any]:
        """Arguments for :func:`~diffguide.guidance.guided` / :func:`~diffguide.api.sample_images`."""
        return {"rule": self.make_rule(), "rescale": self.phi, "interval": self.interval,
                "w_schedule": None if self.w_schedule == "constant" else self.w_schedule,
                "threshold": self.threshold}

    @property
    def is_plain(self) -> bool:
        return self == GuidanceSpec()

    def asdict(self) -> dict[str, Any]:
        """The fields that differ from plain CFG (``{}`` for plain CFG), as JSON gives them back
        (the interval as a list), so a stored key compares equal to a fresh one."""
        base = GuidanceSpec()
        return {f.name: list(v) if isinstance(v, tuple) else v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) != getattr(base, f.name)}

    @property
    def tag(self) -> str:
        """A file-name-safe name, exact in every parameter: ``cfg``, ``apg-b-0.5-r15-e0``, ``cfg+rescale0.7``,
        ``cfg+interval-1_2`` ..."""
        parts = [self.rule]
        if self.rule == "apg":
            parts = [f"apg-b{num_text(self.beta)}-r{num_text(self.r)}-e{num_text(self.eta)}"
                     + ("" if self.clip == 1.0 else f"-c{num_text(self.clip)}")]
        elif self.rule == "cfg-zero":
            parts = [f"cfgzero-k{self.zero_init}" + ("" if self.optimized else "-s1")]
        if self.w_schedule != "constant":
            parts.append(self.w_schedule)
        if self.interval is not None:
            parts.append(f"interval{num_text(self.interval[0])}_{num_text(self.interval[1])}")
        if self.phi:
            parts.append(f"rescale{num_text(self.phi)}")
        if self.threshold is not None:
            parts.append(f"dthr{num_text(self.threshold)}")
        return "+".join(parts)
