"""``guided(...)``: the one-call sugar that builds a :class:`~diffguide.guidance.core.Guidance`.

Guidance is a weighted sum over (condition, weight) pairs, evaluated in **one batched forward**:
plain CFG is ``[(c, 1 + w), (null, -w)]``; a negative condition takes the null's place; several
conditions compose as ``eps(null) + sum_i (1 + w_i)(eps(c_i) - eps(null))`` (Liu et al. 2022). The
condition is opaque here: any tensor whose first dimension is the batch. The rule (CFG, APG, CFG++,
CFG-Zero*), the strength schedule or interval, rescale, classifier guidance and dynamic
thresholding compose in the order documented in :mod:`diffguide.guidance.core`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from .apg import APG
from .cfg import CFG, check_weight, resolve_w
from .cfg_zero import CFGZeroStar
from .cfgpp import CFGPlusPlus
from .classifier import Classifier, ClassifierTerm
from .core import Guidance
from .engine import Engine, Net, Request
from .interval import Interval
from .reward import RewardGuidance
from .rule import Rule, Weight
from .weight_schedule import WSchedule, get_w_schedule

__all__ = ["guided", "null_condition", "check_labels", "check_guide", "RULES", "get_rule"]

RULES: dict[str, Callable[..., Rule]] = {"cfg": CFG, "apg": APG, "cfgpp": CFGPlusPlus, "cfg-zero": CFGZeroStar}


def get_rule(rule: str | Rule) -> Rule:
    """A rule by name (``cfg | apg | cfgpp | cfg-zero``, default parameters) or a rule object."""
    if isinstance(rule, Rule):
        return rule
    if rule not in RULES:
        raise ValueError(f"unknown guidance rule {rule!r}; expected one of {sorted(RULES)} or a Rule object")
    return RULES[rule]()


def null_condition(net: Net, c: Tensor) -> Tensor:
    """The network's null condition for a batch ``c`` (network protocol ``null_condition``, else
    label ``net.null_label``)."""
    fn = getattr(net, "null_condition", None)
    if callable(fn):
        return fn(c)
    null = getattr(net, "null_label", None)
    if null is None:
        raise ValueError("this network has neither `null_condition` nor `null_label`: pass the null condition "
                         "explicitly (null=...)")
    return torch.full_like(c, int(null))


def check_labels(c: Tensor, num_classes: int, *, allow_null: bool, what: str = "label") -> None:
    """Labels must be integers in ``[0, K)``, or ``[0, K]`` with the null label ``K`` allowed."""
    if c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(f"{what}s must be an integer tensor, got dtype {c.dtype}")
    hi = num_classes if allow_null else num_classes - 1
    bad = (c < 0) | (c > hi)
    if bad.any():
        v = c[bad].flatten()[0].item()
        raise ValueError(f"{what} {v} is out of range: expected integers in [0, {hi}]"
                         + (f" ({num_classes} is the null label)" if allow_null else ""))


def check_guide(net: object, guide: object) -> None:
    """Autoguidance needs a guide that makes the same samples under the same conditions: its sample
    shape and class count (where both say) must be the network's."""
    shapes = getattr(net, "sample_shape", None), getattr(guide, "sample_shape", None)
    if shapes[0] is not None and shapes[1] is not None and tuple(shapes[0]) != tuple(shapes[1]):
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        raise ValueError(f"the guide makes {fmt(shapes[1])} samples but the network makes {fmt(shapes[0])}")
    ks = getattr(net, "num_classes", None), getattr(guide, "num_classes", None)
    if ks[0] is not None and ks[1] is not None and int(ks[0]) != int(ks[1]):
        raise ValueError(f"the guide has {ks[1]} classes but the network has {ks[0]}")


def _check_student(net: Net, conds: list[Tensor], w: Weight, *, rule: str | Rule, null: Tensor | None,
                   unconditional: bool, guide: Net | None, w_schedule: object, interval: object,
                   rescale: float) -> None:
    """A w-conditioned student takes ``w`` inside its trained range, and nothing that needs a second
    (unconditional) prediction: no CFG rule, schedule, interval, rescale, negative or guide on top."""
    extra = [name for name, on in (("composed conditions", len(conds) > 1), ("null=", null is not None),
                                   ("unconditional=True", unconditional), ("guide=", guide is not None),
                                   ("w_schedule", w_schedule is not None), ("interval", interval is not None),
                                   ("rescale", bool(rescale)), (f"rule={rule!r}", type(get_rule(rule)) is not CFG))
             if on]
    if extra:
        raise ValueError(f"this network is a distilled student with w inside: it runs one forward per step, and "
                         f"classifier-free guidance on top of it ({', '.join(extra)}) is not defined")
    lo, hi = net.w_range  # type: ignore[attr-defined]
    wt = w if isinstance(w, Tensor) else torch.tensor([w])
    if bool((wt < lo).any()) or bool((wt > hi).any()):
        bad = float(wt[(wt < lo) | (wt > hi)][0])
        raise ValueError(f"w = {bad:g} is outside the student's trained range [{lo:g}, {hi:g}]")


def _interval(interval: Interval | tuple[float, float] | None) -> Interval | None:
    if interval is None or isinstance(interval, Interval):
        return interval
    try:
        lo, hi = interval
    except (TypeError, ValueError):
        raise ValueError(f"interval must be an Interval or a (lam_lo, lam_hi) pair, got {interval!r}") from None
    return Interval(lo, hi)


def guided(net: Net, c: Tensor | Sequence[Tensor], w: Weight | Sequence[Weight] | None = None, *,
           scale: Weight | None = None, rule: str | Rule = "cfg", null: Tensor | None = None,
           unconditional: bool = False, w_schedule: str | WSchedule | None = None,
           interval: Interval | tuple[float, float] | None = None, rescale: float = 0.0,
           classifier: Classifier | None = None, cg_scale: Weight = 0.0,
           cg_form: Literal["score", "mean"] = "score", threshold: float | None = None, guide: Net | None = None,
           reward: RewardGuidance | None = None, max_batch: int | None = None,
           autocast: torch.dtype | None = None) -> Guidance:
    """The usual guided model function for a batch of conditions ``c`` (labels, shape ``(B,)``).

    - ``w`` (the CFG paper's, float or ``(B,)``, ``>= -1``) or ``scale`` (``s = 1 + w``; not both):
      ``(1+w) eps(z,c) - w eps(z, null)``. ``null`` defaults to the network's null condition; pass
      another condition for a negative prompt. A list of conditions with a list of weights composes
      them (CFG only).
    - ``rule``: ``"cfg"`` (default), ``"apg"``, ``"cfgpp"`` (``scale`` is its lambda in [0, 1]),
      ``"cfg-zero"``, or a rule object with its parameters (``APG(beta=-0.5, r=15, eta=0)``).
    - ``w_schedule`` (``constant | linear | cosine`` or ``g(lam)``), ``interval`` (``(lam_lo, lam_hi)``
      or an :class:`~diffguide.guidance.Interval`: guidance only inside, one forward outside),
      ``rescale`` (phi in [0, 1]), ``threshold`` (dynamic-thresholding percentile in (0, 1)).
    - ``guide``: autoguidance (Karras et al. 2024): guide away from this weaker network **under the same
      condition**, ``(1+w) eps(z,c) - w eps_guide(z,c)`` (the paper's ``G = 1 + w``); one forward per
      network. Not with ``null`` or ``unconditional``.
    - ``unconditional=True``: the network's null-condition prediction alone (no CFG weight) —
      classifier guidance of an unconditional model.
    - ``classifier``/``cg_scale`` (``>= 0``): classifier guidance towards ``c``, on top of any of these.
    - ``reward``: a :class:`~diffguide.guidance.reward.RewardGuidance` (a differentiable log-likelihood
      on z, or through the network's x0 prediction at the first condition), on top of any of these.
    """
    conds: list[Tensor] = list(c) if isinstance(c, (list, tuple)) else [cast(Tensor, c)]
    if not conds:
        raise ValueError("give at least one condition")
    if len(conds) > 1:
        if scale is not None or not isinstance(w, (list, tuple)) or len(w) != len(conds):
            raise ValueError(f"{len(conds)} composed conditions need a list of {len(conds)} weights w")
        ws: list[Weight] = list(w)
    else:
        if isinstance(w, (list, tuple)):
            raise ValueError("a list of weights needs a list of conditions of the same length")
        ws = [resolve_w(cast("Weight | None", w), scale)]
    B = conds[0].shape[0]
    ws = [check_weight(wi, "w", minimum=-1.0, batch=B) for wi in ws]
    K = getattr(net, "num_classes", None)
    for ci in conds:
        if K and not ci.is_floating_point():
            check_labels(ci, int(K), allow_null=False)
    cg = None
    if classifier is not None:
        Kc = getattr(classifier, "num_classes", None)
        if K and Kc is not None and int(K) != int(Kc):  # an unconditional network (K = 0) takes any classifier
            raise ValueError(f"classifier has {Kc} classes but the network has {K}")
        if Kc is not None:
            check_labels(conds[0], int(Kc), allow_null=False)
        cg = ClassifierTerm(classifier, conds[0], check_weight(cg_scale, "cg_scale", minimum=0.0, batch=B), cg_form)
    if guide is not None:
        if null is not None or unconditional or len(conds) > 1:
            raise ValueError("autoguidance (guide=) guides one condition away from the guide under that same "
                             "condition: not with null=, unconditional=True or composed conditions")
        check_guide(net, guide)
    positive: list[tuple[Request, Weight]]
    negative: Request | None
    if getattr(net, "w_inside", False):  # a distilled student: the guided prediction in one forward
        _check_student(net, conds, ws[0], rule=rule, null=null, unconditional=unconditional, guide=guide,
                       w_schedule=w_schedule, interval=interval, rescale=rescale)
        positive, negative = [(Request(net, net.condition(conds[0], ws[0])), 0.0)], None  # type: ignore[attr-defined]
    elif guide is not None:  # autoguidance: the same condition, the guide's prediction
        positive, negative = [(Request(net, conds[0]), ws[0])], Request(guide, conds[0])
    elif (null is None and not unconditional and len(conds) == 1 and isinstance(ws[0], float) and ws[0] == 0.0
          and get_rule(rule).zero_is_conditional):  # the conditional model: no null condition needed (nor run)
        positive, negative = [(Request(net, conds[0]), 0.0)], None
    else:
        null = null_condition(net, conds[0]) if null is None else null
        if unconditional:
            if len(conds) > 1 or isinstance(ws[0], Tensor) or ws[0] != 0.0:
                raise ValueError(f"unconditional sampling takes no CFG weight, got w={ws[0]}")
            positive, negative = [(Request(net, null), 0.0)], None
        else:
            positive = [(Request(net, ci), wi) for ci, wi in zip(conds, ws, strict=True)]
            negative = Request(net, null)
    engine = Engine(max_batch=max_batch, autocast=autocast)
    if reward is not None and not isinstance(reward, RewardGuidance):
        raise ValueError(f"reward must be a RewardGuidance (the reward function with its scale and options), "
                         f"got {type(reward).__name__}")
    term = reward.bind(conds[0], positive[0][0].net, positive[0][0].cond, engine) if reward is not None else None
    return Guidance(positive, negative, rule=get_rule(rule), w_schedule=get_w_schedule(w_schedule),
                    interval=_interval(interval), rescale=rescale, classifier=cg, threshold=threshold,
                    engine=engine, reward=term)
