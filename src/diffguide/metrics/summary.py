"""All sample metrics in one call: FID, precision/recall, IS and class accuracy of generated
images against :class:`~diffguide.metrics.reference_stats.ReferenceStats`."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .features import FeatureNet, extract
from .fid import feature_stats, frechet_distance
from .inception_score import inception_score
from .kid import kid
from .precision_recall import class_accuracy, precision_recall
from .reference_stats import ReferenceStats

__all__ = ["sample_metrics"]


def sample_metrics(net: FeatureNet, images: Tensor | np.ndarray, reference: ReferenceStats,
                   labels: Tensor | np.ndarray | None = None, *, splits: int = 10, k: int = 3,
                   batch_size: int = 500, features: np.ndarray | None = None,
                   probs: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of generated ``images`` ``(N, C, H, W)`` in [-1, 1] (or uint8) under ``net``:

    - ``fid``: Fréchet distance to ``reference`` (mu, sigma over all reference images);
    - ``kid``, ``kid_std``: unbiased KID (cubic kernel) and its std over 50 subsets of up to 1000 features
      of each set (the reference's stored features);
    - ``precision``, ``recall``: k-NN manifolds (k = ``k``) of equally many real and fake
      features, ``min(N, len(reference.features))`` each (set size changes the radii), the larger
      set subsampled at random (fixed seed: files are often sorted by class or by source);
    - ``is_mean``, ``is_std``: Inception Score over ``splits`` splits of ``net.probs``;
    - ``accuracy``: how often ``net`` classifies a sample as its requested ``labels`` (if given).

    IS and accuracy are left out when ``net.probs`` raises ``NotImplementedError``
    (e.g. :class:`~diffguide.metrics.features.InceptionFeatures`). ``features`` and ``probs``: ``net``'s
    outputs for ``images``, computed elsewhere (e.g. by the ranks of a sharded sweep); they are not
    recomputed."""
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(labels)} labels for {len(images)} images; give one label per image")
    feats = extract(net, images, batch_size) if features is None else features
    out = {"fid": frechet_distance(*feature_stats(feats), reference.mu, reference.sigma)}
    m = min(len(feats), len(reference.features))
    rng = np.random.default_rng(0)

    def subset(a: np.ndarray) -> np.ndarray:
        return a if len(a) == m else a[np.sort(rng.choice(len(a), m, replace=False))]

    if m >= 2:  # statistics files may hold mu and sigma only: then no precision/recall and no KID
        out["precision"], out["recall"] = precision_recall(subset(reference.features), subset(feats), k)
        out["kid"], out["kid_std"] = kid(reference.features, feats, subsets=50)
    if probs is None:
        try:
            probs = extract(net, images, batch_size, output="probs")
        except NotImplementedError:
            return out
    # IS splits are contiguous: shuffle (fixed seed) so that class-sorted files do not score ~1 per split
    order = np.random.default_rng(0).permutation(len(probs))
    out["is_mean"], out["is_std"] = inception_score(probs[order], min(splits, len(probs)))
    if labels is not None:
        out["accuracy"] = class_accuracy(probs, labels)
    return out
