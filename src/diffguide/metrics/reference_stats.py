"""Reference statistics of real data, computed once per (data set, split, feature net, weights)
and cached as ``.npz``: the features' mean and covariance (for FID) and a fixed random subset of
the raw features (for precision/recall).

Cache directory: the ``cache_dir`` argument, else ``$DIFFGUIDE_CACHE``, else
``~/.cache/diffguide``. Files are written atomically (temp file + ``os.replace``), so concurrent
runs never see a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..fileio import atomic_path, open_npz
from ..images import from_uint8
from .features import FeatureNet, _check_eval, _device_of, _fixed_rows

__all__ = ["ReferenceStats", "cache_path", "mnist_reference_stats", "reference_stats", "resolve_cache_dir",
           "weights_hash", "content_hash", "load_reference", "save_stats"]

ImagesLike = Tensor | np.ndarray


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` (float64) over all ``n`` images; ``features``
    ``(M, D)`` float32, a fixed random subset of ``M <= max_features`` of them; ``image_shape``
    ``(C, H, W)`` of the images they came from (``None`` when unknown: statistics from elsewhere)."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    n: int
    image_shape: tuple[int, ...] | None = None


def weights_hash(net: FeatureNet | nn.Module) -> str:
    """Hex SHA-256 (first 16 digits) over the net's ``state_dict``: names, dtypes, shapes, bytes."""
    state_dict = getattr(net, "state_dict", None)
    if state_dict is None:
        raise TypeError(f"cannot hash the weights of {type(net).__name__}: it has no state_dict()")
    h = hashlib.sha256()
    for name, t in sorted(state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir``, else ``$DIFFGUIDE_CACHE``, else ``~/.cache/diffguide``."""
    if cache_dir is None:
        cache_dir = os.environ.get("DIFFGUIDE_CACHE") or Path.home() / ".cache" / "diffguide"
    return Path(cache_dir).expanduser()


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", s)


def cache_path(dataset: str, split: str, net: FeatureNet, max_features: int,
               cache_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Path:
    """Cache file ``{dataset}-{split}-{net.name}-{weights_hash}-m{max_features}[-s{seed}].npz``
    (the seed draws the kept subset, so it is named unless it is the default 0)."""
    name = f"{dataset}-{split}-{net.name}-{weights_hash(net)}-m{max_features}" + (f"-s{seed}" if seed else "")
    return resolve_cache_dir(cache_dir) / f"{_safe(name)}.npz"


@torch.no_grad()
def _compute(net: FeatureNet, images: ImagesLike, max_features: int, batch_size: int, seed: int) -> ReferenceStats:
    """One streaming pass: float64 sums of shifted features and their outer products, plus the
    rows of a seeded random subset (so memory is ``O(D^2 + M D)``, not ``O(N D)``)."""
    x_all = torch.from_numpy(images) if isinstance(images, np.ndarray) else images
    N = len(x_all)
    if N < 2:
        raise ValueError(f"need at least 2 reference images, got {N}")
    _check_eval(net)
    keep = np.sort(np.random.default_rng(seed).choice(N, size=min(max_features, N), replace=False))
    device = _device_of(net)

    def feats(i: int) -> Tensor:
        x = x_all[i:i + batch_size]
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        return _fixed_rows(net.features, x.to(device)).double().cpu()  # the rows of extract(): same features

    f = feats(0)
    shift = f.mean(0)  # centring by a rough mean keeps the one-pass covariance accurate
    s1, s2 = torch.zeros_like(shift), torch.zeros(len(shift), len(shift), dtype=torch.float64)
    kept = []
    for i in range(0, N, batch_size):
        f = f if i == 0 else feats(i)
        g = f - shift
        s1 += g.sum(0)
        s2 += g.T @ g
        sel = keep[(keep >= i) & (keep < i + len(f))] - i
        kept.append(f[torch.from_numpy(sel)].float())
    mean_g = s1 / N
    sigma = (s2 - N * torch.outer(mean_g, mean_g)) / (N - 1)
    return ReferenceStats(mu=(shift + mean_g).numpy(), sigma=(0.5 * (sigma + sigma.T)).numpy(),
                          features=torch.cat(kept).numpy(), n=N, image_shape=tuple(int(d) for d in x_all.shape[1:]))


def _save(path: Path, stats: ReferenceStats) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        shape = np.asarray(stats.image_shape or (), dtype=np.int64)
        np.savez(f, mu=stats.mu, sigma=stats.sigma, features=stats.features, n=np.int64(stats.n), image_shape=shape)


def _shape_of(z: np.lib.npyio.NpzFile) -> tuple[int, ...] | None:
    return tuple(int(d) for d in z["image_shape"]) or None if "image_shape" in z.files else None


def _load(path: Path) -> ReferenceStats | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return ReferenceStats(mu=z["mu"], sigma=z["sigma"], features=z["features"], n=int(z["n"]),
                                  image_shape=_shape_of(z))
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # missing or unreadable: recompute


def reference_stats(dataset: str, split: str, net: FeatureNet, images: ImagesLike | Callable[[], ImagesLike], *,
                    cache_dir: str | os.PathLike[str] | None = None, max_features: int = 10_000,
                    batch_size: int = 500, seed: int = 0, recompute: bool = False) -> ReferenceStats:
    """Reference statistics of ``images`` (``(N, C, H, W)``, float in [-1, 1] or uint8) under
    ``net``, from the cache if present. ``images`` may be a zero-argument callable, called only
    on a cache miss. ``dataset`` and ``split`` name the data in the cache key — they must
    identify ``images`` uniquely."""
    path = cache_path(dataset, split, net, max_features, cache_dir, seed)
    if not recompute and (stats := _load(path)) is not None:
        return stats
    stats = _compute(net, images() if callable(images) else images, max_features, batch_size, seed)
    _save(path, stats)
    return stats


def mnist_reference_stats(split: str = "train", net: FeatureNet | None = None, *,
                          cache_dir: str | os.PathLike[str] | None = None,
                          max_features: int = 10_000) -> ReferenceStats:
    """Reference statistics of built-in MNIST ``split`` under ``net`` (default: the shipped
    :func:`~diffguide.metrics.evaluator.load_evaluator`)."""
    from diffguide.data.mnist import load_mnist

    from .evaluator import load_evaluator

    return reference_stats("mnist", split, net if net is not None else load_evaluator(),
                           lambda: load_mnist(split)[0], cache_dir=cache_dir, max_features=max_features)


def content_hash(images: Tensor) -> str:
    """Hex SHA-256 (first 16 digits) of an image tensor's dtype, shape and bytes: the cache key of user data."""
    t = images.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def save_stats(path: str | os.PathLike[str], stats: ReferenceStats) -> Path:
    """Write ``stats`` as an ``.npz`` (``mu``, ``sigma``, ``features``, ``n``) that :func:`load_reference` reads."""
    _save(Path(path), stats)
    return Path(path)


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _check_shape(spec: str, got: tuple[int, ...] | None, want: tuple[int, ...] | None, how: str) -> None:
    """FID compares like with like: a reference of another shape than the samples is refused, naming both."""
    if want is None or got is None or tuple(got) == tuple(want):
        return
    raise ValueError(f"reference {spec} holds {_fmt(got)} images but the samples are {_fmt(want)} (channels x "
                     f"height x width); {how}")


def load_reference(ref: str | os.PathLike[str], net: FeatureNet, *, image_size: int | None = None,
                   sample_shape: tuple[int, ...] | None = None, cache_dir: str | os.PathLike[str] | None = None,
                   max_features: int = 10_000) -> ReferenceStats:
    """Reference statistics under ``net`` of ``ref``: ``mnist`` / ``mnist:train`` / ``mnist:test``; an image
    folder or an ``.npz`` of images (anything :func:`~diffguide.data.load_data` reads, resized and
    center-cropped to ``image_size`` if given), cached under a key of the images' content; or an ``.npz`` of
    statistics (``mu``, ``sigma``, and ``features`` for precision/recall and KID) written by :func:`save_stats`
    or ``diffguide reference-stats``. Statistics files must come from features of ``net``'s dimension.

    ``sample_shape`` ``(C, H, W)``: the samples the statistics will score. A reference of another shape
    (after the ``image_size`` resize) is refused with both shapes named, never silently compared."""
    spec = os.fspath(ref)
    resize = (f"pass --resize-reference (image_size={sample_shape[-1]}) to resize and center-crop it to the "
              f"samples' size, or use a reference at their resolution") if sample_shape else ""
    if spec in ("mnist", "mnist:train", "mnist:test"):
        _check_shape(spec, (1, 28, 28), sample_shape, "use a reference at the samples' resolution")
        return mnist_reference_stats(spec.partition(":")[2] or "train", net, cache_dir=cache_dir,
                                     max_features=max_features)
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"reference not found: {spec} (expected mnist, an image folder, an .npz of images "
                                f"or of statistics)")
    if p.suffix == ".npz":
        with open_npz(p) as z:
            keys = set(z.files)
            if {"mu", "sigma"} <= keys:
                feats = z["features"] if "features" in keys else np.zeros((0, len(z["mu"])), np.float32)
                stats = ReferenceStats(mu=z["mu"], sigma=z["sigma"], features=feats,
                                       n=int(z["n"]) if "n" in keys else 0, image_shape=_shape_of(z))
                dim = getattr(net, "feature_dim", None)
                if dim is not None and len(stats.mu) != int(dim):
                    raise ValueError(f"{spec}: statistics of {len(stats.mu)}-d features, but {net.name} gives "
                                     f"{dim}-d features")
                _check_shape(spec, stats.image_shape, sample_shape, "write statistics of a reference at the "
                             "samples' resolution (diffguide reference-stats --image-size)")
                return stats
    from ..data import load_data

    data = load_data(spec, image_size=image_size,
                     channels=sample_shape[0] if image_size is not None and sample_shape else None)
    _check_shape(spec, tuple(data.images.shape[1:]), sample_shape, resize)
    key = content_hash(data.images)
    return reference_stats(f"data-{key}", f"s{image_size or data.images.shape[-1]}", net, data.images,
                           cache_dir=cache_dir, max_features=max_features)
