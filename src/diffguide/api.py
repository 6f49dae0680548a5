"""The public face: load a model, sample it with guidance, in batches, reproducibly.

    import diffguide as dg
    model = dg.load("mnist")                       # shipped CFG net + noise-aware classifier
    x = model.sample(range(10), w=2.0, sampler="ddim", steps=50, seed=0)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from .guidance import check_weight, guided
from .models import load_model
from .noise import PerSampleNoise, sample_seeds
from .samplers import get_sampler
from .schedule import Schedule, get_schedule

__all__ = ["Pipeline", "load", "sample_images", "default_max_batch", "ASSETS", "BUILTIN", "CPU_MAX_BATCH"]

ASSETS = Path(__file__).parent / "assets"
BUILTIN = {"mnist": ("mnist_cfg_small.safetensors", "mnist_classifier_small.safetensors")}
# On CPU a forward's cost per row grows with its size once activations outgrow the caches: the shipped
# U-Net costs ~1.8x more per row at 1000 rows than at 128 (benchmarks/results/sampling_speed.md), so
# CPU forwards are cut into chunks of this many rows by default. Accelerators take the whole batch.
CPU_MAX_BATCH = 128


def default_max_batch(device: torch.device) -> int | None:
    """Rows per network forward when the caller does not say: :data:`CPU_MAX_BATCH` on CPU, else all."""
    return CPU_MAX_BATCH if device.type == "cpu" else None


def _schedule_of(net: nn.Module) -> Schedule:
    meta = getattr(net, "meta", None) or {}
    return get_schedule(meta.get("train", {}).get("schedule", "continuous"))


def sample_images(net: nn.Module, labels: Iterable[int] | Tensor, w: float | Tensor = 0.0, *,
                  sampler: Literal["ddim", "ddpm"] = "ddim", steps: int = 50, seed: int = 0,
                  schedule: Schedule | None = None, classifier: nn.Module | None = None, cg_scale: float = 0.0,
                  cg_form: Literal["auto", "score", "mean"] = "auto", unconditional: bool = False,
                  eta: float = 0.0, v: float = 0.0, clip_x0: float | None = 1.0, batch_size: int = 500,
                  max_batch: int | None | Literal["auto"] = "auto", device: str | torch.device = "cpu",
                  autocast: torch.dtype | None = None, first_index: int = 0, progress: bool = False) -> Tensor:
    """Guided samples, one per label: float32 ``(N, C, H, W)`` in [-1, 1] on the CPU.

    ``w`` is the CFG paper's weight (``0`` = conditional model); ``unconditional=True`` samples the null
    label instead (then only classifier guidance steers). ``cg_scale`` is the classifier-guidance scale
    ``s``; ``cg_form`` ``"score"`` (``eps - s sigma grad``, any sampler) or ``"mean"`` (DDPM mean shift,
    ADM Alg. 1); ``"auto"`` = mean on DDPM, score elsewhere. Sample ``i`` uses the noise stream seeded
    by ``(seed, first_index + i)``, so results do not depend on ``batch_size``. ``clip_x0`` clamps the
    predicted clean image (``None`` to disable). ``max_batch``: rows per network forward (the CFG pair
    of a batch of B samples is 2B rows; fp32 results are bit-identical for any value); ``"auto"`` =
    :func:`default_max_batch`. ``autocast``: reduced precision for network forwards.
    """
    labels = torch.as_tensor(list(labels) if not isinstance(labels, Tensor) else labels, dtype=torch.long)
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {tuple(labels.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    w = check_weight(w, "w", minimum=-1.0, batch=labels.numel())
    sample = get_sampler(sampler)
    if cg_form == "auto":
        cg_form = "mean" if sampler == "ddpm" else "score"
    if cg_form == "mean" and sampler != "ddpm":
        raise ValueError(f"the mean-shift form of classifier guidance needs sampler='ddpm', got {sampler!r}")
    cfg: Any = net.config
    if classifier is not None:
        ccfg: Any = classifier.config
        if (ccfg.in_channels, ccfg.image_size) != (cfg.in_channels, cfg.image_size):
            raise ValueError(f"classifier expects {ccfg.in_channels}x{ccfg.image_size}px images but the model "
                             f"makes {cfg.in_channels}x{cfg.image_size}px")
    grid = (schedule or _schedule_of(net)).grid(steps)
    extra = {"eta": eta} if sampler == "ddim" else {"v": v}
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    seeds = sample_seeds(seed, labels.numel(), start=first_index)
    device = torch.device(device)
    if max_batch == "auto":
        max_batch = default_max_batch(device)
    out = []
    starts = range(0, labels.numel(), batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, unit="batch", leave=False)
    for i in starts:
        c = labels[i:i + batch_size].to(device)
        wi = w[i:i + batch_size] if isinstance(w, Tensor) else w
        noise = PerSampleNoise(seeds[i:i + batch_size], shape, device=device)
        eps_fn = guided(net, c, wi, unconditional=unconditional, classifier=classifier, cg_scale=cg_scale,
                        cg_form=cg_form, max_batch=max_batch, autocast=autocast)
        out.append(sample(eps_fn, noise(), grid, noise=noise, clip_x0=clip_x0, **extra,
                          **eps_fn.sampler_kwargs()).float().cpu())
    return torch.cat(out)


class Pipeline:
    """A diffusion network, optionally with a noise-aware classifier, ready to sample."""

    def __init__(self, net: nn.Module, classifier: nn.Module | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        # channels_last weights: ~12 % faster CPU forwards for the shipped U-Net (same results to ~1e-6)
        cl = {"memory_format": torch.channels_last}
        self.net = net.to(self.device, **cl).eval()  # type: ignore[call-overload]
        self.classifier = classifier.to(self.device, **cl).eval() if classifier is not None else None  # type: ignore[call-overload]

    @property
    def num_classes(self) -> int:
        return int(cast(Any, self.net.num_classes))

    def sample(self, labels: Iterable[int] | Tensor, w: float | Tensor = 0.0, *, cg_scale: float = 0.0,
               **kwargs: object) -> Tensor:
        """See :func:`sample_images`; ``cg_scale > 0`` uses this pipeline's classifier."""
        if cg_scale and self.classifier is None:
            raise ValueError("cg_scale > 0 needs a classifier: load one with dg.load(..., classifier=PATH)")
        clf = self.classifier if cg_scale else None
        return sample_images(self.net, labels, w, classifier=clf, cg_scale=cg_scale, device=self.device,
                             **kwargs)  # type: ignore[arg-type]


def load(name_or_path: str | Path = "mnist", *, classifier: str | Path | None = None,
         device: str | torch.device = "cpu") -> Pipeline:
    """``"mnist"`` (the shipped CFG model and classifier), or a path to an exported ``.safetensors``
    file, a checkpoint or a run directory (``classifier`` likewise, optional)."""
    clf = None
    if str(name_or_path) in BUILTIN:
        net_file, clf_file = BUILTIN[str(name_or_path)]
        if not (ASSETS / net_file).exists():
            raise FileNotFoundError(f"the built-in {name_or_path!r} model is missing from {ASSETS}")
        net = load_model(ASSETS / net_file)
        if classifier is None and (ASSETS / clf_file).exists():
            clf = load_model(ASSETS / clf_file)
    else:
        net = load_model(name_or_path)
    if classifier is not None:
        clf = load_model(classifier)
    for m, kind in ((net, "diffusion"), (clf, "classifier")):
        if m is None:
            continue
        meta = cast(dict[str, Any], m.meta)  # attached by load_model
        if meta.get("kind") != kind:
            raise ValueError(f"expected a {kind} model, got a {meta.get('kind')!r} model")
    return Pipeline(net, clf, device)
