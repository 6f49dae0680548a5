"""Guidance: pure functions of predictions, and one wrapper that makes a sampler's ``eps_fn``."""

from .cfg import cfg, check_weight, w_from_scale
from .classifier import cg_eps, classifier_grad
from .guided import GuidedEps, check_labels, guided, null_condition

__all__ = ["cfg", "check_weight", "w_from_scale", "cg_eps", "classifier_grad", "GuidedEps", "guided",
           "null_condition", "check_labels"]
