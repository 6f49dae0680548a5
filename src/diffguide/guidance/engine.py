"""The forward engine: evaluate (network, condition) requests in as few network forwards as possible.

Every request shares the same ``(z, lam)``; requests on the same network run as **one batched
forward** over ``len(requests) * B`` rows (CFG's conditional and unconditional passes are one
forward), cut into equal chunks of at most ``max_batch`` rows, padded on CPU, under autocast if asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..validate import optional_positive_int

__all__ = ["Net", "Request", "Engine", "MIN_ROWS", "pad_rows"]

Net = Callable[[Tensor, Tensor, Tensor], Tensor]

# On CPU, oneDNN picks other kernels for forwards of very few rows (on the CPUs measured, 1-11 rows gave
# results ~1e-6 off those of the same rows in a bigger batch), which broke "same seed, same sample,
# whatever the batch size" in fp32. CPU forwards (network and classifier) of fewer rows are padded to
# this many by repeating the last row; the padding's outputs are dropped. tests/test_api.py checks
# the samples bit for bit. Other devices are not padded (a small max_batch there saves memory).
MIN_ROWS = 16


def pad_rows(*ts: Tensor) -> tuple[Tensor, ...]:
    """``ts`` (same batch size) padded to :data:`MIN_ROWS` rows on CPU; unchanged otherwise."""
    n = ts[0].shape[0]
    if n >= MIN_ROWS or ts[0].device.type != "cpu":
        return ts
    return tuple(torch.cat([t, t[-1:].expand(MIN_ROWS - n, *t.shape[1:])]) for t in ts)


@dataclass(frozen=True, eq=False)
class Request:
    """One prediction to evaluate: ``net(z, lam, cond)``; ``cond`` is an opaque batch-first tensor."""

    net: Net
    cond: Tensor


class Engine:
    """Evaluates requests; counts what it ran.

    ``max_batch``: rows per network forward (``None``: all at once); results do not depend on it.
    ``autocast``: a reduced precision (e.g. ``torch.bfloat16``) for network forwards only; outputs
    are returned in at least float32 (float64 stays float64). Counters: ``forwards`` (calls of a
    network, chunks included), ``evaluations`` (predictions per sample: a CFG step adds 2, a step
    with only the conditional forward adds 1).
    """

    def __init__(self, *, max_batch: int | None = None, autocast: torch.dtype | None = None) -> None:
        self.max_batch, self.autocast = optional_positive_int(max_batch, "max_batch"), autocast
        self.forwards = 0
        self.evaluations = 0

    def _forward(self, net: Net, z: Tensor, lam: Tensor, cond: Tensor) -> Tensor:
        n = z.shape[0]
        z, lam, cond = pad_rows(z, lam, cond)
        ctx = torch.autocast(z.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with ctx:
            out = net(z, lam, cond)[:n]
        self.forwards += 1
        return out.to(torch.promote_types(out.dtype, torch.float32))  # bf16 -> fp32; fp64 stays

    def _batched(self, net: Net, z: Tensor, lam: Tensor, conds: Sequence[Tensor]) -> list[Tensor]:
        k = len(conds)
        zz, ll = (z, lam) if k == 1 else (torch.cat([z] * k), torch.cat([lam] * k))
        cc = torch.cat([c.to(z.device) for c in conds]) if k > 1 else conds[0].to(z.device)
        rows = zz.shape[0]
        if self.max_batch is None or rows <= self.max_batch:
            out = self._forward(net, zz, ll, cc)
        else:  # as few chunks as max_batch allows, of equal size: 200 rows at 128 -> 100 + 100, not 128 + 72
            chunks = -(-rows // self.max_batch)
            size = -(-rows // chunks)
            out = torch.cat([self._forward(net, zz[i:i + size], ll[i:i + size], cc[i:i + size])
                             for i in range(0, rows, size)])
        return list(out.split(z.shape[0]))

    def __call__(self, requests: Sequence[Request], z: Tensor, lam: Tensor) -> list[Tensor]:
        """Each request's prediction at ``(z, lam)``, in request order."""
        B = z.shape[0]
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            if r.cond.shape[0] != B:
                raise ValueError(f"a condition has batch size {r.cond.shape[0]}, but z has {B}")
            groups.setdefault(id(r.net), []).append(i)
        out: list[Tensor | None] = [None] * len(requests)
        for idx in groups.values():
            preds = self._batched(requests[idx[0]].net, z, lam, [requests[i].cond for i in idx])
            for i, p in zip(idx, preds, strict=True):
                out[i] = p
        self.evaluations += len(requests)
        return [p for p in out if p is not None]
