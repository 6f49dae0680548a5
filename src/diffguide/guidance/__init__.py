"""Guidance: pure rules on predictions, a forward engine, and :class:`Guidance`, which composes them
into the model function every sampler consumes (see :mod:`diffguide.guidance.core` for the order)."""

from .apg import APG, apg_x0
from .cfg import CFG, cfg, check_weight, composed, resolve_w, w_from_scale
from .cfg_zero import CFGZeroStar, optimized_scale
from .cfgpp import CFGPlusPlus
from .classifier import ClassifierTerm, cg_eps, classifier_grad
from .core import Guidance, GuidanceRun
from .engine import MIN_ROWS, Engine, Request
from .guided import RULES, check_labels, get_rule, guided, null_condition
from .interval import Interval
from .rescale import rescale, rescale_x0
from .reward import REWARDS, RewardGuidance, classifier_reward, get_reward, ink, reward_grad
from .rule import Rule, Weight
from .spec import METHODS, GuidanceSpec
from .threshold import dynamic_threshold
from .weight_schedule import SCHEDULES, get_w_schedule

__all__ = ["APG", "apg_x0", "CFG", "cfg", "check_weight", "composed", "resolve_w", "w_from_scale", "CFGZeroStar",
           "optimized_scale", "CFGPlusPlus", "ClassifierTerm", "cg_eps", "classifier_grad", "Guidance",
           "GuidanceRun", "MIN_ROWS", "Engine", "Request", "RULES", "check_labels", "get_rule", "guided",
           "null_condition", "Interval", "rescale", "rescale_x0", "Rule", "Weight", "dynamic_threshold",
           "SCHEDULES", "get_w_schedule", "GuidanceSpec", "METHODS", "RewardGuidance",
           "classifier_reward", "reward_grad", "REWARDS", "get_reward", "ink"]
