"""Analytic references: distributions whose optimal ``eps*``, scores and noisy classifiers are exact,
used as ground truth by tests, docs and examples."""

from .gmm import GaussianMixture, MixtureClassifier

__all__ = ["GaussianMixture", "MixtureClassifier"]
