"""Sample metrics as the papers compute them: FID (Heusel et al. 2017), Inception Score
(Salimans et al. 2016), improved precision/recall (Kynkäänniemi et al. 2019, k = 3) and class
accuracy, on features of a :class:`FeatureNet` — the MNIST domain evaluator for built-in data,
Inception (``diffguide[inception]``) for natural RGB images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .features import FeatureNet, InceptionFeatures, extract, inception_weights_path
from .fid import feature_stats, fid_from_features, frechet_distance
from .inception_score import inception_score
from .kid import kid, mmd2_unbiased
from .precision_recall import class_accuracy, in_manifold, manifold_radii, precision_recall
from .reference_stats import ReferenceStats, mnist_reference_stats, reference_stats, weights_hash
from .summary import sample_metrics

if TYPE_CHECKING:
    from .evaluator import MNISTEvaluator, load_evaluator, train_evaluator

__all__ = [
    "FeatureNet", "InceptionFeatures", "MNISTEvaluator", "ReferenceStats", "class_accuracy", "extract",
    "feature_stats", "fid_from_features", "frechet_distance", "in_manifold", "inception_score", "kid", "mmd2_unbiased",
    "inception_weights_path", "load_evaluator", "manifold_radii", "mnist_reference_stats", "precision_recall",
    "reference_stats", "sample_metrics", "train_evaluator", "weights_hash",
]

_LAZY = {"MNISTEvaluator", "load_evaluator", "train_evaluator"}


def __getattr__(name: str) -> Any:
    # Imported on first use so that `python -m diffguide.metrics.evaluator` runs the module fresh
    # (no runpy "found in sys.modules" warning).
    if name in _LAZY:
        from . import evaluator

        return getattr(evaluator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
