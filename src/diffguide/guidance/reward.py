"""Training-free guidance by any differentiable per-sample log-likelihood ("reward").

``reward(x, lam, cond) -> (B,)`` is a log-likelihood of each sample, differentiable in ``x``. It guides
in one of two places:

- ``on="z"``: on the noisy latent itself, for a noise-aware reward (like the noise-aware classifier):
  ``eps - s sigma grad_z reward(z, lam, c)``, the score form of classifier guidance (Dhariwal & Nichol
  2021). Classifier guidance *is* this rule with ``reward = log softmax(classifier(z, lam))[c]``
  (:func:`classifier_reward`; :class:`~diffguide.guidance.classifier.ClassifierTerm` computes its
  gradient here).
- ``on="x0"``: through the network's clean-image prediction, ``grad_z reward(x0_hat(z), lam, c)`` with the
  network forward inside autograd: DPS (Chung et al. 2023, Algorithm 1, in eps form) and the forward
  guidance of universal guidance (Bansal et al. 2023). A clean-image model (an ordinary
  classifier, a reward model) guides without having been trained on noise. ``x0_steps > 0`` adds
  universal guidance's backward guidance: ``Delta`` ascends ``reward(x0 + Delta)`` for that many
  gradient steps of size ``x0_lr`` and the prediction moves to ``x0 + Delta``, i.e.
  ``eps -= (alpha / sigma) Delta``.

The strength at ``lam`` is ``scale * schedule(lam)`` (a name from
:mod:`~diffguide.guidance.weight_schedule` or a callable); ``clip`` caps each sample's gradient norm
(L2 over all its elements) before scaling. Gradients are per sample as long as the reward and the
network treat samples independently. The forward under autograd runs in chunks of the engine's
``max_batch`` rows, padded on CPU like every other forward, so results do not depend on batch size.
A reward that returns the wrong shape, or a reward or gradient that is NaN or infinite, raises an
error naming the evaluation and ``lam``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..prediction import bcast, x0_from_eps
from ..schedule import alpha_sigma
from .engine import Engine, Net, pad_rows
from .rule import Weight, scaled, wb
from .weight_schedule import WSchedule, evaluate_schedule, get_w_schedule

__all__ = ["Reward", "RewardGuidance", "RewardTerm", "reward_grad", "classifier_reward", "clip_norm", "ink",
           "REWARDS", "get_reward"]

Reward = Callable[[Tensor, Tensor, Tensor], Tensor]


def ink(x: Tensor, lam: Tensor, cond: Tensor) -> Tensor:
    """Ink per image, in pixels: the sum of ``(x + 1) / 2`` over all but the batch dimension (images in
    [-1, 1]; a clean-image reward, for ``on="x0"``)."""
    return ((x + 1) / 2).flatten(1).sum(1)


def less_ink(x: Tensor, lam: Tensor, cond: Tensor) -> Tensor:
    return -ink(x, lam, cond)


REWARDS: dict[str, Reward] = {"ink": ink, "-ink": less_ink}


def get_reward(spec: str) -> Reward:
    """A reward by name (``ink``: more ink, ``-ink``: less) or ``module:function`` (imported; the function
    is called as ``reward(x, lam, cond) -> (B,)``)."""
    if spec in REWARDS:
        return REWARDS[spec]
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"unknown reward {spec!r}: expected one of {sorted(REWARDS)} or module:function")
    import importlib

    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load the reward {spec!r}: {e}") from None
    if not callable(fn):
        raise ValueError(f"the reward {spec!r} is not callable")
    return fn


def classifier_reward(classifier: Callable[[Tensor, Tensor], Tensor]) -> Reward:
    """``log softmax(classifier(x, lam))[c]``: a classifier's log-likelihood of the asked class as a reward."""

    def reward(x: Tensor, lam: Tensor, c: Tensor) -> Tensor:
        logits = classifier(x, lam)
        return torch.log_softmax(logits.to(x.dtype), dim=-1).gather(1, c.reshape(-1, 1).to(x.device))[:, 0]

    return reward


def _where(at: tuple[int, Tensor] | None) -> str:
    if at is None:
        return ""
    k, lam = at
    return f" at evaluation {k} (lam = {lam.flatten()[0].item():.6g})"


def _checked(r: object, n: int, at: tuple[int, Tensor] | None) -> Tensor:
    if not isinstance(r, Tensor):
        raise ValueError(f"the reward returned {type(r).__name__}{_where(at)}: expected a ({n},) tensor, one "
                         f"log-likelihood per sample")
    if tuple(r.shape) != (n,):
        raise ValueError(f"the reward returned shape {tuple(r.shape)}{_where(at)}: expected ({n},), one "
                         f"log-likelihood per row of x (CPU batches of fewer than 16 rows arrive padded)")
    if not torch.isfinite(r).all():
        i = int((~torch.isfinite(r)).nonzero()[0])
        raise ValueError(f"the reward returned {r[i].item()} for sample {i}{_where(at)}: expected finite values")
    return r


def reward_grad(reward: Reward, z: Tensor, lam: Tensor, cond: Tensor, *, net: Net | None = None,
                net_cond: Tensor | None = None, max_batch: int | None = None, autocast: torch.dtype | None = None,
                at: tuple[int, Tensor] | None = None) -> Tensor:
    """``grad_z reward(z, lam, cond)`` (``net=None``) or ``grad_z reward(x0_hat(z), lam, cond)`` with
    ``x0_hat = (z - sigma net(z, lam, net_cond)) / alpha`` (``net`` given; ``net_cond`` defaults to
    ``cond``: for an unconditional model it is the null condition while the reward sees the asked one);
    shape and dtype of ``z`` (at least float32). Autograd is enabled only here; no graph outlives a chunk
    of ``max_batch`` rows."""
    dtype = torch.promote_types(z.dtype, torch.float32)
    n = z.shape[0]
    size = n if max_batch is None else min(n, max_batch)
    ctx = torch.autocast(z.device.type, dtype=autocast) if (autocast and net is not None) else contextlib.nullcontext()
    net_cond = cond if net_cond is None else net_cond
    out = []
    for i in range(0, n, size):
        zi, li, ci, ni = pad_rows(z[i:i + size].detach().to(dtype), lam[i:i + size].to(dtype), cond[i:i + size],
                                  net_cond[i:i + size])
        m = min(size, n - i)
        with torch.enable_grad():
            zi.requires_grad_(True)
            x = zi
            if net is not None:
                with ctx:
                    eps = net(zi, li, ni)
                x = x0_from_eps(zi, eps.to(dtype), li)
            # the reward sees the padded rows too (CPU padding, as every forward): its own forwards then
            # see the same batch shapes whatever the batch size; the padding's rewards are dropped
            r = _checked(reward(x, li, ci), len(x), at)[:m]
            # a reward with no path to x (a constant) has no graph: its gradient is zero
            g = torch.autograd.grad(r.sum(), zi, allow_unused=True)[0] if r.requires_grad else None
        out.append(torch.zeros_like(zi[:m]) if g is None else g[:m])
    grad = torch.cat(out)
    if not torch.isfinite(grad).all():
        raise ValueError(f"the reward's gradient is not finite{_where(at)}")
    return grad


def clip_norm(grad: Tensor, max_norm: float) -> Tensor:
    """Each sample's gradient scaled down to L2 norm at most ``max_norm`` (unchanged below it)."""
    norm = grad.flatten(1).norm(dim=1)
    return grad * bcast(torch.clamp(max_norm / norm.clamp_min(1e-30), max=1.0), grad)


@dataclass(frozen=True, eq=False)
class RewardGuidance:
    """Guidance by ``reward(x, lam, cond) -> (B,)``, a differentiable per-sample log-likelihood (module doc).

    ``scale`` (``>= 0``, float or ``(B,)``) times ``schedule(lam)``; ``on``: ``"z"`` (noise-aware reward on
    the latent) or ``"x0"`` (through the network's x0 prediction, DPS / universal guidance); ``clip``: the
    largest per-sample gradient norm (``None``: no clipping); ``x0_steps``/``x0_lr``: universal guidance's
    backward steps in x0 space (``on="x0"`` only)."""

    reward: Reward
    scale: Weight = 1.0
    on: Literal["z", "x0"] = "z"
    schedule: str | WSchedule | None = None
    clip: float | None = None
    x0_steps: int = 0
    x0_lr: float = 0.1

    def __post_init__(self) -> None:
        if not callable(self.reward):
            raise ValueError(f"reward must be a callable reward(x, lam, cond) -> (B,), "
                             f"got {type(self.reward).__name__}")
        if self.on not in ("z", "x0"):
            raise ValueError(f"reward guidance acts on 'z' or 'x0', got on={self.on!r}")
        if isinstance(self.scale, Tensor):
            if self.scale.ndim != 1 or not torch.isfinite(self.scale).all() or (self.scale < 0).any():
                raise ValueError("a per-sample reward scale must be a finite (B,) tensor >= 0")
        elif isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or \
                not math.isfinite(self.scale) or self.scale < 0:
            raise ValueError(f"reward scale must be a finite number >= 0, got {self.scale!r}")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and self.clip > 0 and
                                          math.isfinite(self.clip)):
            raise ValueError(f"clip (the largest per-sample gradient norm) must be a finite number > 0 or None, "
                             f"got {self.clip!r}")
        if isinstance(self.x0_steps, bool) or not isinstance(self.x0_steps, int) or self.x0_steps < 0:
            raise ValueError(f"x0_steps must be an integer >= 0, got {self.x0_steps!r}")
        if self.x0_steps and self.on != "x0":
            raise ValueError("x0_steps (universal guidance's backward steps) need a clean-image reward: on='x0'")
        if not (isinstance(self.x0_lr, (int, float)) and self.x0_lr > 0 and math.isfinite(self.x0_lr)):
            raise ValueError(f"x0_lr must be a finite number > 0, got {self.x0_lr!r}")
        get_w_schedule(self.schedule)  # a bad name fails here, not at the first step

    def bind(self, cond: Tensor, net: Net, net_cond: Tensor, engine: Engine) -> RewardTerm:
        """The term for one batch: ``cond`` goes to the reward; ``net`` at ``net_cond`` is the prediction
        whose x0 the reward sees (``on="x0"``)."""
        if isinstance(self.scale, Tensor) and self.scale.shape[0] != cond.shape[0]:
            raise ValueError(f"the reward scale has {self.scale.shape[0]} entries, expected {cond.shape[0]}")
        return RewardTerm(self, cond, net, net_cond, engine)


@dataclass(frozen=True, eq=False)
class RewardTerm:
    """A :class:`RewardGuidance` bound to a batch; :class:`~diffguide.guidance.core.Guidance` applies it."""

    spec: RewardGuidance
    cond: Tensor
    net: Net
    net_cond: Tensor
    engine: Engine

    def strength(self, lam: Tensor) -> Weight:
        schedule = get_w_schedule(self.spec.schedule)
        s = self.spec.scale.to(lam.device) if isinstance(self.spec.scale, Tensor) else float(self.spec.scale)
        return s if schedule is None else scaled(s, evaluate_schedule(schedule, lam))

    def __call__(self, eps: Tensor, z: Tensor, lam: Tensor, evaluation: int) -> Tensor:
        """``eps`` guided by the reward at ``(z, lam)``."""
        s, spec, at = self.strength(lam), self.spec, (evaluation, lam)
        if isinstance(s, float) and s == 0.0:
            return eps
        E = self.engine
        net = self.net if spec.on == "x0" else None
        grad = reward_grad(spec.reward, z, lam, self.cond.to(z.device), net=net,
                           net_cond=self.net_cond.to(z.device), max_batch=E.max_batch, autocast=E.autocast, at=at)
        if net is not None:  # the forward under autograd: one more evaluation, one forward per chunk
            E.forwards += -(-z.shape[0] // (E.max_batch or z.shape[0]))
            E.evaluations += 1
        if spec.clip is not None:
            grad = clip_norm(grad, spec.clip)
        sigma = bcast(alpha_sigma(lam)[1], eps)
        eps = eps - wb(s, eps) * sigma * grad.to(eps.dtype)
        if spec.x0_steps:  # universal guidance, backward: ascend the reward in x0 space from this x0
            eps = self._backward(eps, z, lam, s, at)
        return eps

    def _backward(self, eps: Tensor, z: Tensor, lam: Tensor, s: Weight, at: tuple[int, Tensor]) -> Tensor:
        spec = self.spec
        x0 = x0_from_eps(z, eps, lam).detach()
        delta = torch.zeros_like(x0)
        for _ in range(spec.x0_steps):
            g = reward_grad(spec.reward, x0 + delta, lam, self.cond.to(z.device), max_batch=self.engine.max_batch,
                            at=at)
            if spec.clip is not None:
                g = clip_norm(g, spec.clip)
            delta = delta + spec.x0_lr * wb(s, g) * g.to(delta.dtype)
        alpha, sigma = (bcast(t, eps) for t in alpha_sigma(lam))
        return eps - alpha / sigma * delta  # x0 -> x0 + delta at the same z
