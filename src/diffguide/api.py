"""The public face: load a model, sample it with guidance, in batches, reproducibly.

    import diffguide as dg
    model = dg.load("mnist")                       # shipped CFG net + noise-aware classifier
    x = model.sample(range(10), w=2.0, sampler="ddim", steps=50, seed=0)
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from .guidance import Interval, RewardGuidance, Rule, check_weight, get_rule, guided, resolve_w
from .guidance.guided import check_guide
from .guidance.weight_schedule import WSchedule
from .models import load_model
from .nets.protocol import GuidedNetwork, check_network
from .noise import PerSampleNoise, sample_seeds
from .sampling import SamplingConfig, takers
from .schedule import Schedule

__all__ = ["Pipeline", "load", "sample_images", "check_combination", "default_max_batch", "distilled_sampling",
           "ASSETS", "BUILTIN", "BUILTIN_GUIDES", "CPU_MAX_BATCH"]

ASSETS = Path(__file__).parent / "assets"
BUILTIN = {"mnist": ("mnist_cfg_small.safetensors", "mnist_classifier_small.safetensors"),
           # guidance-distilled students of it (issue #18): w inside, one forward per step
           "mnist-student": ("mnist_student.safetensors", "mnist_classifier_small.safetensors"),
           # ... and its progressive students for deterministic DDIM in 8 and 4 steps
           "mnist-student-8": ("mnist_student_8.safetensors", "mnist_classifier_small.safetensors"),
           "mnist-student-4": ("mnist_student_4.safetensors", "mnist_classifier_small.safetensors")}
BUILTIN_GUIDES = {"mnist": "mnist_guide_tiny.safetensors"}  # autoguidance guides of the built-in models
# On CPU a forward's cost per row grows with its size once activations outgrow the caches: the shipped
# U-Net costs more per row at 1000 rows than at 128 (benchmarks/results/sampling_speed.md), so
# CPU forwards are cut into chunks of this many rows by default. Accelerators take the whole batch.
CPU_MAX_BATCH = 128


def default_max_batch(device: torch.device) -> int | None:
    """Rows per network forward when the caller does not say: :data:`CPU_MAX_BATCH` on CPU, else all."""
    return CPU_MAX_BATCH if device.type == "cpu" else None


def _check_pair(net: GuidedNetwork, classifier: nn.Module | None) -> None:
    if classifier is None:
        return
    shape = tuple(getattr(classifier, "sample_shape", net.sample_shape))
    if shape != tuple(net.sample_shape):
        fmt = lambda s: "x".join(map(str, s))  # noqa: E731
        raise ValueError(f"classifier expects {fmt(shape)} samples but the model makes {fmt(net.sample_shape)}")


def check_combination(rule: str | Rule, sampling: SamplingConfig, uses_classifier: bool = False) -> None:
    """Refuse, before any work, a rule or classifier-guidance form the sampler cannot honour (the
    sampler would refuse it too, at its first step)."""
    takes = sampling.takes
    if takes is None:  # a user's sampler checks for itself
        return
    if get_rule(rule).name == "cfgpp" and "eps_renoise" not in takes:
        raise ValueError(f"CFG++ re-noises with eps_u, which the {sampling.name} sampler cannot do: use "
                         f"{' or '.join(takers('eps_renoise'))}")
    if uses_classifier and sampling.resolved_cg_form() == "mean" and "mean_grad" not in takes:
        raise ValueError(f"the mean-shift form of classifier guidance needs {' or '.join(takers('mean_grad'))}, "
                         f"got {sampling.name!r}")


def _check_device(module: nn.Module | None, device: torch.device, what: str) -> None:
    p = next(module.parameters(), None) if module is not None else None
    if p is not None and p.device.type != device.type:
        raise ValueError(f"the {what}'s weights are on {p.device} but device={str(device)!r}: move it there "
                         f"(module.to(device)), or sample through dg.Pipeline, which does")


def distilled_sampling(net: nn.Module) -> dict[str, Any]:
    """The sampler a progressive student learnt, ``{"sampler": "ddim", "steps": N}`` (deterministic DDIM on
    its schedule's grid at its step count, x0 clipped to [-1, 1]: the defaults); ``{}`` for other networks."""
    steps = getattr(net, "distilled_steps", None)
    return {} if steps is None else {"sampler": "ddim", "steps": steps}


def _check_distilled_steps(net: nn.Module, cfg: SamplingConfig) -> None:
    """A progressive student sampled otherwise than it learnt (:func:`distilled_sampling`) is warned about."""
    steps = distilled_sampling(net).get("steps")
    if steps is None:
        return
    eta = cfg.options.get("eta", 0.0)
    if cfg.name != "ddim" or cfg.steps != steps or cfg.grid_kind != "schedule" or eta or cfg.clip_x0 != 1.0:
        warnings.warn(f"this student was distilled for deterministic DDIM in {steps} steps on the schedule's grid "
                      f"with x0 clipped to [-1, 1] (sampler='ddim', steps={steps}, clip_x0=1); sampling it with "
                      f"{cfg.describe()}, clip_x0={cfg.clip_x0} is not what it learnt", stacklevel=3)


def sample_images(net: nn.Module, labels: Iterable[int] | Tensor, w: float | Tensor | None = None, *,
                  scale: float | Tensor | None = None, rule: str | Rule = "cfg",
                  w_schedule: str | WSchedule | None = None, interval: Interval | tuple[float, float] | None = None,
                  rescale: float = 0.0, threshold: float | None = None, classifier: nn.Module | None = None,
                  cg_scale: float | Tensor = 0.0, unconditional: bool = False, guide: nn.Module | None = None,
                  reward: RewardGuidance | None = None, sampling: SamplingConfig | None = None,
                  schedule: Schedule | None = None, device: str | torch.device = "cpu", first_index: int = 0,
                  progress: bool = False, counter: dict[str, int] | None = None, **options: Any) -> Tensor:
    """Guided samples, one per label: float32 ``(N, *sample_shape)`` in [-1, 1] on the CPU.

    ``net`` implements the network protocol (:mod:`diffguide.nets.protocol`). ``w`` is the CFG paper's
    weight (``0`` = conditional model), or give ``scale`` (``s = 1 + w``, diffusers' ``guidance_scale``;
    not both). ``rule``, ``w_schedule``, ``interval``, ``rescale`` and ``threshold`` select the
    guidance method (see :func:`diffguide.guidance.guided`). ``unconditional=True`` samples the null
    condition instead (then only classifier guidance steers). ``cg_scale`` is the classifier-guidance
    scale ``s`` (with ``classifier``). ``guide``: autoguidance by this weaker network under the same
    condition, in place of the null condition (Karras et al. 2024). ``reward``: guidance by a
    differentiable log-likelihood (:class:`~diffguide.guidance.reward.RewardGuidance`), on top of any of these.

    How to sample is ``sampling`` (a :class:`~diffguide.sampling.SamplingConfig`; default: its
    defaults, or DDIM at its own step count for a progressive student), with any of its fields, or a
    sampler option, given here as a keyword overriding it
    (``sampler="unipc", steps=10``, ``eta=1.0``): see :meth:`SamplingConfig.make`. ``schedule``: the
    grid's schedule (default: the network's training schedule). Sample ``i`` uses the noise stream
    seeded by ``(seed, first_index + i)``, so results do not depend on ``batch_size`` or
    ``max_batch`` (fp32). ``counter``, if given, gets ``forwards`` and ``evaluations`` (per sample)
    added to it.
    """
    net = cast(nn.Module, check_network(net))
    proto = cast(GuidedNetwork, net)
    if sampling is None and all(options.get(k) is None for k in ("sampler", "steps")):
        options = {**options, **distilled_sampling(net)}  # a progressive student: what it learnt
    cfg = SamplingConfig.make(sampling, **options)
    labels = torch.as_tensor(list(labels) if not isinstance(labels, Tensor) else labels)
    if labels.ndim < 1 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty batch of conditions, got shape {tuple(labels.shape)}")
    if not labels.is_floating_point():
        labels = labels.long()
    N = labels.shape[0]
    w = check_weight(resolve_w(w, scale), "w", minimum=-1.0, batch=N)
    check_combination(rule, cfg, classifier is not None)
    _check_pair(proto, classifier)
    _check_distilled_steps(net, cfg)
    grid = cfg.lams(schedule or proto.train_schedule)
    shape = tuple(proto.sample_shape)
    seeds = sample_seeds(cfg.seed, N, start=first_index)
    device = torch.device(device)
    _check_device(net, device, "network")
    _check_device(classifier, device, "classifier")
    if guide is not None:  # guided() checks that it matches the network
        check_network(guide, "guide")
        _check_device(guide, device, "guide")
    if isinstance(cg_scale, Tensor):
        cg_scale = check_weight(cg_scale, "cg_scale", minimum=0.0, batch=N)
    if reward is not None and isinstance(reward.scale, Tensor) and reward.scale.shape[0] != N:
        raise ValueError(f"the reward scale has {reward.scale.shape[0]} entries for {N} samples")
    max_batch = default_max_batch(device) if cfg.max_batch == "auto" else cfg.max_batch
    autocast, sample = cfg.autocast(device), cfg.fn
    out = []
    starts = range(0, N, cfg.batch_size)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, unit="batch", leave=False)
    for i in starts:
        c = labels[i:i + cfg.batch_size].to(device)
        wi = w[i:i + cfg.batch_size] if isinstance(w, Tensor) else w
        si = cg_scale[i:i + cfg.batch_size] if isinstance(cg_scale, Tensor) else cg_scale
        ri = reward
        if reward is not None and isinstance(reward.scale, Tensor):
            ri = dataclasses.replace(reward, scale=reward.scale[i:i + cfg.batch_size])
        noise = PerSampleNoise(seeds[i:i + cfg.batch_size], shape, device=device)
        model = guided(net, c, wi, rule=rule, w_schedule=w_schedule, interval=interval, rescale=rescale,
                       threshold=threshold, unconditional=unconditional, classifier=classifier, cg_scale=si,
                       cg_form=cfg.resolved_cg_form(), guide=guide, reward=ri, max_batch=max_batch, autocast=autocast)
        out.append(sample(model, noise(), grid, noise=noise, clip_x0=cfg.clip_x0).float().cpu())
        if counter is not None:
            counter["forwards"] = counter.get("forwards", 0) + model.engine.forwards
            counter["evaluations"] = counter.get("evaluations", 0) + model.engine.evaluations * c.shape[0]
    return torch.cat(out)


class Pipeline:
    """A diffusion network (network protocol), optionally with a noise-aware classifier and an
    autoguidance guide, ready to sample.

    With a ``guide`` (a weaker network of the same protocol, Karras et al. 2024) every sample is
    autoguided: ``w`` weighs the main network against the guide under the same condition. The
    pipeline samples from its own copies of the networks, moved to ``device``, channels-last and in
    eval mode; the caller's modules are left as they were."""

    def __init__(self, net: nn.Module, classifier: nn.Module | None = None, device: str | torch.device = "cpu",
                 *, guide: nn.Module | None = None, copy: bool = True):
        self.device = torch.device(device)
        check_network(net)
        _check_pair(cast(GuidedNetwork, net), classifier)
        if guide is not None:
            check_guide(net, check_network(guide, "guide"))
        self.net = self._prepare(net, copy)
        self.classifier = self._prepare(classifier, copy) if classifier is not None else None
        self.guide = self._prepare(guide, copy) if guide is not None else None

    def _prepare(self, module: nn.Module, copy: bool) -> nn.Module:
        if copy:
            module = deepcopy(module)
        # channels_last weights: ~12 % faster CPU forwards for the shipped U-Net (same results to ~1e-6)
        return module.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]

    @property
    def num_classes(self) -> int:
        return int(cast(GuidedNetwork, self.net).num_classes)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(cast(GuidedNetwork, self.net).sample_shape)

    def sample(self, labels: Iterable[int] | Tensor, w: float | Tensor | None = None, *,
               scale: float | Tensor | None = None, cg_scale: float | Tensor = 0.0, **kwargs: Any) -> Tensor:
        """See :func:`sample_images`; ``cg_scale > 0`` uses this pipeline's classifier."""
        uses_cg = isinstance(cg_scale, Tensor) or cg_scale != 0
        if uses_cg and self.classifier is None:
            raise ValueError("cg_scale > 0 needs a classifier: load one with dg.load(..., classifier=PATH)")
        clf = self.classifier if uses_cg else None
        return sample_images(self.net, labels, w, scale=scale, classifier=clf, cg_scale=cg_scale, guide=self.guide,
                             device=self.device, **kwargs)


def _load_network(path: str | Path) -> nn.Module:
    from .nets.diffusers_adapter import is_diffusers_folder, load_diffusers

    if is_diffusers_folder(path):
        net = load_diffusers(path)
        net.meta = {"kind": "diffusion", "source": "diffusers", "path": str(path)}  # type: ignore[assignment]
        return net
    if not Path(path).exists() and str(path).count("/") == 1 and not str(path).startswith((".", "/", "~")):
        raise FileNotFoundError(f"model not found: {path} (a hub name? diffguide never downloads anything: save "
                                f"the model locally, e.g. with diffusers' save_pretrained, and pass that folder)")
    return load_model(path)


def load(name_or_path: str | Path = "mnist", *, classifier: str | Path | None = None,
         guide: str | Path | None = None, device: str | torch.device = "cpu") -> Pipeline:
    """``"mnist"`` (the shipped CFG model and classifier), ``"mnist-student"`` (its guidance-distilled
    student, w inside: one forward per step), ``"mnist-student-8"``/``"-4"`` (that student progressively
    distilled for DDIM in 8 and 4 steps), or a path to an exported ``.safetensors``
    file, a checkpoint or a run directory (``classifier`` and ``guide``, an autoguidance guide,
    likewise, optional; ``guide="mnist"``: the shipped guide of the MNIST model, the ``tiny`` preset at 1/4
    of its training). A local
    diffusers ``save_pretrained`` folder (a ``UNet2DModel`` and its scheduler) loads through
    :mod:`diffguide.nets.diffusers_adapter` (network or guide)."""
    clf = None
    if str(name_or_path) in BUILTIN:
        net_file, clf_file = BUILTIN[str(name_or_path)]
        if not (ASSETS / net_file).exists():
            raise FileNotFoundError(f"the built-in {name_or_path!r} model is missing from {ASSETS}")
        net = load_model(ASSETS / net_file)
        if classifier is None and (ASSETS / clf_file).exists():
            clf = load_model(ASSETS / clf_file)
    else:
        net = _load_network(name_or_path)
    if classifier is not None:
        clf = load_model(classifier)
    gd = None
    if guide is not None:
        gd = load_model(ASSETS / BUILTIN_GUIDES[str(guide)]) if str(guide) in BUILTIN_GUIDES else _load_network(guide)
    for m, kinds in ((net, ("diffusion", "student")), (clf, ("classifier",)), (gd, ("diffusion",))):
        if m is None:
            continue
        meta = cast(dict[str, Any], m.meta)  # attached by load_model
        if meta.get("kind") not in kinds:
            raise ValueError(f"expected a {' or '.join(kinds)} model, got a {meta.get('kind')!r} model")
    return Pipeline(net, clf, device, guide=gd, copy=False)
