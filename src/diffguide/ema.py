"""Exponential moving average (EMA) of a model's weights; the averaged model is the one sampled.

After each optimizer step, ``shadow <- d * shadow + (1 - d) * live`` for every floating
parameter and buffer (non-floating buffers are copied). With ``warmup=True`` the ``n``-th update
(``n = 0, 1, ...``) uses ``d_n = min(decay, (1 + n) / (10 + n))`` (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so early averages forget the random
initialisation quickly; with ``warmup=False``, ``d_n = decay``. The shadow is float32 whatever
the model's dtype.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import unwrap_module

__all__ = ["EMA"]


class EMA:
    """EMA of ``model``'s parameters and buffers, held in ``self.module`` (an eval-mode,
    float32, gradient-free deep copy of the model: call it to sample)."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        self.module: nn.Module = copy.deepcopy(unwrap_module(model)).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The ``d`` the next :meth:`update` will use."""
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _pairs(self, model: nn.Module) -> list[tuple[Tensor, Tensor]]:
        """(shadow, live) tensors by name; tied tensors appear once (``named_parameters``)."""
        model = unwrap_module(model)
        live = dict(chain(model.named_parameters(), model.named_buffers()))
        shadow = dict(chain(self.module.named_parameters(), self.module.named_buffers()))
        if live.keys() != shadow.keys():
            raise ValueError(f"model does not match the EMA: missing {sorted(shadow.keys() - live.keys())}, "
                             f"unexpected {sorted(live.keys() - shadow.keys())}")
        return [(s, live[k]) for k, s in shadow.items()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights (call after ``optimizer.step()``)."""
        w = 1.0 - self.current_decay()  # shadow.lerp_(live, 1 - d) = d * shadow + (1 - d) * live
        floats, targets = [], []
        for s, x in self._pairs(model):
            if s.is_floating_point():
                floats.append(s)
                targets.append(x.detach().to(device=s.device, dtype=s.dtype))
            else:
                s.copy_(x)
        if floats and hasattr(torch, "_foreach_lerp_"):
            torch._foreach_lerp_(floats, targets, w)
        else:
            for s, x in zip(floats, targets, strict=True):
                s.lerp_(x, w)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averages (cast to its dtypes)."""
        for s, x in self._pairs(model):
            x.copy_(s)

    def averaged_model(self) -> nn.Module:
        """The averaged model (``self.module``, shared, not a copy)."""
        return self.module

    def state_dict(self) -> dict[str, Any]:
        """``decay``, ``warmup``, ``num_updates`` and ``shadow`` (the module's state dict)."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": self.module.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["shadow"])
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.num_updates = int(state.get("num_updates", 0))
