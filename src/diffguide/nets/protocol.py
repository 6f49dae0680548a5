"""The network protocol: what diffguide needs of any network it samples, guides or evaluates.

A network is called as ``net(z, lam, cond) -> eps`` (``z`` of shape ``(B, *sample_shape)``, ``lam``
``(B,)``, ``cond`` an opaque batch-first tensor: labels today, embeddings tomorrow) and says:

- ``sample_shape``: the shape of one sample, e.g. ``(1, 28, 28)``;
- ``num_classes``: ``K`` for label conditions (0 for an unconditional or embedding-conditioned net);
- ``null_condition(cond)``: the null condition for a batch ``cond`` (label ``K``, or a learned null
  embedding repeated over the batch);
- ``train_schedule``: the noise schedule it was trained with (its default sampling grid).

The shipped :class:`~diffguide.nets.UNet`, the analytic mixture and :class:`Network` (a wrapper for
any user module) implement it; pipelines, samplers and sweeps read nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..schedule import Schedule, get_schedule

__all__ = ["GuidedNetwork", "Network", "check_network", "label_null"]

_ATTRS = ("sample_shape", "num_classes", "null_condition", "train_schedule")


@runtime_checkable
class GuidedNetwork(Protocol):
    sample_shape: tuple[int, ...]
    num_classes: int
    train_schedule: Schedule

    def null_condition(self, cond: Tensor) -> Tensor: ...

    def __call__(self, z: Tensor, lam: Tensor, cond: Tensor) -> Tensor: ...


def check_network(net: object, what: str = "network") -> GuidedNetwork:
    """``net`` if it implements :class:`GuidedNetwork`, else a ``ValueError`` naming what it lacks."""
    missing = [a for a in _ATTRS if not hasattr(net, a)]
    if missing or not callable(net):
        raise ValueError(f"the {what} ({type(net).__name__}) does not implement diffguide's network protocol: "
                         f"missing {', '.join(missing) or '__call__'}; wrap it with diffguide.nets.Network(module, "
                         f"sample_shape=..., num_classes=...)")
    return net  # type: ignore[return-value]


def label_null(cond: Tensor, num_classes: int) -> Tensor:
    """The null label ``K`` for a batch of labels."""
    return torch.full_like(cond, num_classes)


class Network(nn.Module):
    """Any ``module(z, lam, cond) -> eps`` made into a :class:`GuidedNetwork`.

    ``null``: ``None`` for label conditions (the null label is ``num_classes``), or the null
    condition of one sample (e.g. a learned null embedding of shape ``(L, D)``), repeated over the
    batch. ``schedule``: its training schedule, a name (``continuous | linear | cosine``) or an object.
    """

    def __init__(self, module: nn.Module | Callable[[Tensor, Tensor, Tensor], Tensor], *,
                 sample_shape: tuple[int, ...], num_classes: int = 0, null: Tensor | None = None,
                 schedule: str | Schedule = "continuous") -> None:
        super().__init__()
        if not callable(module):
            raise ValueError(f"module must be callable as module(z, lam, cond), got {type(module).__name__}")
        shape = tuple(sample_shape)
        if not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"sample_shape must be a tuple of positive ints, got {sample_shape!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.module: Any = module
        self.sample_shape = shape
        self.num_classes = num_classes
        self.null = null
        self.train_schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule

    def null_condition(self, cond: Tensor) -> Tensor:
        if self.null is None:
            if cond.is_floating_point():
                raise ValueError("this network's conditions are not labels: give Network(..., null=EMBEDDING)")
            return label_null(cond, self.num_classes)
        return self.null.to(cond.device, cond.dtype).expand(cond.shape[0], *self.null.shape)

    def forward(self, z: Tensor, lam: Tensor, cond: Tensor) -> Tensor:
        return self.module(z, lam, cond)
