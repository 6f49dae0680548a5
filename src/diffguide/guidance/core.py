"""The guidance core: requests -> forward engine -> rule -> :class:`~diffguide.prediction.Prediction`.

One evaluation of a :class:`Guidance` at ``(z, lam)`` runs these stages, in this order:

1. **strength**: ``w`` times the schedule ``g(lam)``; outside the guidance interval only the
   conditional request runs and its prediction is used as it is (composed conditions run every
   request there, with every ``w_i = 0``: ``eps_u + sum_i (eps_i - eps_u)``);
2. **base combination**: the rule (CFG, APG, CFG++, CFG-Zero* ...) on the positive prediction and the
   negative one (the null condition, a negative condition, or another network), or composed
   conditions (CFG only); every request on one network is one batched forward;
3. **rescale** (phi) of the guided x0 to the conditional x0's std;
4. **classifier-gradient term** (score form on eps, or the DDPM mean shift), then the **reward term**
   (:mod:`diffguide.guidance.reward`: a differentiable log-likelihood on z or through x0);
5. **dynamic thresholding** of x0.

Samplers call :meth:`Guidance.start` once per sampling run: the returned :class:`GuidanceRun` holds
the rule's per-run state (APG's momentum, CFG-Zero*'s step count), so two runs never share state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..prediction import Prediction, bcast
from .cfg import CFG, composed
from .classifier import ClassifierTerm, cg_eps
from .engine import Engine, Request
from .interval import Interval
from .rescale import check_phi, rescale
from .reward import RewardTerm
from .rule import Rule, Weight, scaled
from .threshold import check_percentile, threshold_eps
from .weight_schedule import WSchedule, evaluate_schedule

__all__ = ["Guidance", "GuidanceRun"]


def _is_zero(w: Weight) -> bool:
    return isinstance(w, float) and w == 0.0


@dataclass(eq=False)
class Guidance:
    """A guided model function for samplers: ``start()`` then ``run(z, lam) -> Prediction``.

    ``positive``: ``(request, w)`` pairs (one for every rule; several compose, CFG only);
    ``negative``: the request guided away from (``None``: no guidance, ``w`` must be 0).
    The other fields are the stages of the module docstring.
    """

    positive: Sequence[tuple[Request, Weight]]
    negative: Request | None
    rule: Rule = field(default_factory=CFG)
    w_schedule: WSchedule | None = None
    interval: Interval | None = None
    rescale: float = 0.0
    classifier: ClassifierTerm | None = None
    threshold: float | None = None
    engine: Engine = field(default_factory=Engine)
    reward: RewardTerm | None = None

    def __post_init__(self) -> None:
        if not self.positive:
            raise ValueError("guidance needs at least one positive (condition, weight) term")
        self.batch = int(self.positive[0][0].cond.shape[0])
        for r, _ in [*self.positive, *([(self.negative, 0.0)] if self.negative is not None else [])]:
            if r.cond.shape[0] != self.batch:
                raise ValueError(f"all conditions need batch size {self.batch}, got one of shape {tuple(r.cond.shape)}")
        if len(self.positive) > 1 and self.negative is None:
            raise ValueError("composed conditions need a negative (null) condition")
        if len(self.positive) > 1 and type(self.rule) is not CFG:
            raise ValueError(f"composed conditions are defined for plain CFG only, not for {self.rule.name}")
        if self.negative is None and any(not _is_zero(w) for _, w in self.positive):
            raise ValueError("a nonzero guidance weight needs a negative (null) condition to guide away from")
        for _, w in self.positive:
            self.rule.check(w)
        if self.w_schedule is not None and not self.rule.zero_is_conditional:
            raise ValueError(f"a strength schedule is not defined for {self.rule.name}: its strength is not a "
                             f"weight on top of the conditional model (CFG++'s lambda = 1 + w)")
        self.rescale = check_phi(self.rescale)
        if self.threshold is not None:
            self.threshold = check_percentile(self.threshold)
        if self.classifier is not None and self.classifier.labels.shape[0] != self.batch:
            raise ValueError(f"classifier labels have batch size {self.classifier.labels.shape[0]}, "
                             f"expected {self.batch}")
        if self.reward is not None and self.reward.cond.shape[0] != self.batch:
            raise ValueError(f"the reward's conditions have batch size {self.reward.cond.shape[0]}, "
                             f"expected {self.batch}")

    @property
    def calls(self) -> int:
        """Network forwards so far (the engine's count)."""
        return self.engine.forwards

    def start(self) -> GuidanceRun:
        """A fresh sampling run (the rule's per-run state is created here)."""
        return GuidanceRun(self, self.rule.start())

    def __call__(self, z: Tensor, lam: Tensor) -> Prediction:
        """One evaluation in a run of its own: for stateless rules only. A rule with per-run state (APG's
        momentum, CFG-Zero*'s step count) would start afresh at every call, so that raises: samplers
        call :meth:`start` once per run themselves; a caller evaluating by hand does the same."""
        run = self.start()
        if run.state is not None:
            raise ValueError(f"{self.rule.name} keeps state across the steps of a sampling run: call start() once "
                             f"per run and evaluate what it returns (samplers do this when handed the Guidance)")
        return run(z, lam)


class GuidanceRun:
    """One sampling run of a :class:`Guidance`; call it as ``run(z, lam) -> Prediction``."""

    def __init__(self, guidance: Guidance, state: object) -> None:
        self.guidance, self.state = guidance, state
        self.evaluations = 0  # evaluations so far in this run (named in the reward's errors)

    def _strength(self, lam: Tensor) -> tuple[Weight, bool]:
        """``(g, inside)``: the schedule's factor (0 where the interval excludes a row) and whether any
        row is guided at all."""
        G = self.guidance
        g: Weight = 1.0
        if G.interval is not None:
            inside = G.interval.contains(lam)
            if not bool(inside.any()):
                return 0.0, False
            if not bool(inside.all()):
                if not G.rule.zero_is_conditional:
                    raise ValueError(f"{G.rule.name} cannot guide part of a batch: every row of one call must "
                                     f"lie on the same side of the guidance interval")
                g = inside.to(lam.dtype)
        if G.w_schedule is not None:
            g = scaled(g, evaluate_schedule(G.w_schedule, lam))
        return g, True

    def __call__(self, z: Tensor, lam: Tensor) -> Prediction:
        G = self.guidance
        if z.shape[0] != G.batch:
            raise ValueError(f"z has batch size {z.shape[0]}, but the conditions have {G.batch}")
        if G.rule.holds(self.state):
            return Prediction(torch.zeros_like(z), hold=True)
        self.evaluations += 1
        g, guided = self._strength(lam)
        ws = [scaled(w, g) for _, w in G.positive]
        pos = [r for r, _ in G.positive]
        # 1-2. the base combination (only the conditional forward where nothing is guided)
        combined = True
        if len(pos) > 1:  # composed conditions (CFG only); outside the interval every w_i is 0
            assert G.negative is not None
            preds = G.engine([*pos, G.negative], z, lam)
            pred = Prediction(composed(preds[:-1], preds[-1], ws))
        elif G.negative is None or not guided or (G.rule.zero_is_conditional and _is_zero(ws[0])):
            preds = G.engine(pos, z, lam)
            pred, combined = Prediction(preds[0]), False
        else:
            preds = G.engine([*pos, G.negative], z, lam)
            pred = G.rule.pair(preds[0], preds[1], z, lam, ws[0], self.state)
        eps = pred.eps
        # 3. rescale to the conditional prediction's std (x0 space)
        if G.rescale and combined:
            eps = rescale(eps, preds[0], z, lam, G.rescale)
        # 4. classifier gradient
        mean_grad = None
        if G.classifier is not None and not _is_zero(G.classifier.scale):
            grad = G.classifier.grad(z, lam)
            if G.classifier.form == "score":
                eps = cg_eps(eps, grad, lam, G.classifier.scale)
            else:
                s = G.classifier.scale
                mean_grad = (bcast(s.to(z.device), grad) if isinstance(s, Tensor) else s) * grad
        if G.reward is not None:
            eps = G.reward(eps, z, lam, self.evaluations)
        # 5. dynamic thresholding of x0
        if G.threshold is not None:
            eps = threshold_eps(eps, z, lam, G.threshold)
        return Prediction(eps.to(z.dtype), pred.eps_renoise.to(z.dtype) if pred.eps_renoise is not None else None,
                          mean_grad.to(z.dtype) if mean_grad is not None else None)

