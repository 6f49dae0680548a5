"""The small runtime a training (or sampling) job runs in: one process, or one rank of a ``torchrun`` job.

``torchrun --nproc_per_node=N -m diffguide train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_runtime` reads them, starts ``torch.distributed`` (NCCL on GPUs, gloo on CPU) and pins the
rank's device (``cuda:LOCAL_RANK``). Without them it is the single-process runtime, whose collectives
are no-ops, so the same code serves both.

What keeps a run independent of how many processes made it: every rank draws the randomness of the
*global* batch (the same generator, seeded by ``(seed, step)``) and keeps its own rows
(:meth:`Runtime.rows`), and the gradients DistributedDataParallel averages over equal row counts are the
global batch's mean gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Runtime", "init_runtime", "resolve_device", "in_torchrun", "restart_count", "run_id", "process_rank",
           "shutdown"]

BACKENDS = ("auto", "gloo", "nccl")


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` (or any launcher that sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def process_rank() -> int:
    """This process's global rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0) if in_torchrun() else 0


def shutdown() -> None:
    """End the process group, if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def restart_count() -> int:
    """How often torchrun has restarted this job (``--max-restarts``): 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def run_id() -> str | None:
    """torchrun's id of this job (the same across its restarts), or ``None`` outside torchrun."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if in_torchrun() else None


@dataclass(frozen=True)
class Runtime:
    """Rank, world size and device of this process, with the few collectives training needs."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes (logs, checkpoints, config.json, outputs) and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` (``n`` divisible by the world size)."""
        if n % self.world:
            raise ValueError(f"a global batch of {n} rows does not split evenly over {self.world} processes")
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def span(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one): for samples."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` (tensors of any row count, arrays, tuples of them) on rank 0, in rank order;
        ``None`` on the others. The objects travel between this job's own processes only."""
        if not self.distributed:
            return [obj]
        got: list[Any] = [None] * self.world if self.is_main else []
        dist.gather_object(obj.cpu() if isinstance(obj, Tensor) else obj, got if self.is_main else None, dst=0)
        return got if self.is_main else None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, t: Tensor, op: str = "sum") -> Tensor:
        """``t`` reduced over ranks (``sum`` | ``max``) and returned, on ``t``'s device (the collective runs
        on the rank's device: NCCL takes CUDA tensors only); ``t`` itself in one process."""
        if not self.distributed:
            return t
        comm = t.to(self.device) if self.device.type == "cuda" else t
        dist.all_reduce(comm, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return comm.to(t.device)

    def agree(self, *values: float) -> list[float]:
        """Rank 0's ``values`` on every rank (one small float64 all-reduce): clocks, stop decisions."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values if self.is_main else [0.0] * len(values), dtype=torch.float64)
        return self.all_reduce(t).tolist()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank: a NaN on one rank stops them all, together."""
        if not self.distributed:
            return flag
        return bool(self.all_reduce(torch.tensor([float(flag)]), "max").item())


def resolve_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device ``name`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) names, checked; under a ``world`` of
    several processes, each rank's ``cuda:local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for, but CUDA is not available here")
        if world > 1:  # one GPU per rank, by its local rank
            if dev.index is not None:
                raise ValueError(f"--device {name}: under torchrun each rank takes cuda:LOCAL_RANK; give --device "
                                 f"cuda (or auto), not a fixed index")
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs here: start at "
                                 f"most {torch.cuda.device_count()} processes per node")
            dev = torch.device("cuda", local_rank)
        if dev.index is not None:
            torch.cuda.set_device(dev)
    return dev


def init_runtime(device: str = "auto", backend: str = "auto") -> Runtime:
    """The runtime of this process (module doc); starts the process group under torchrun."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not in_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return Runtime(device=resolve_device(device, 0, 1))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank, world)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError(f"backend nccl needs CUDA devices, but the device is {dev} (--device {device}): use gloo "
                         f"on CPU (--backend gloo, or auto)")
    if not dist.is_initialized():
        # torchrun keeps its store across restarts (--max-restarts): a fresh key prefix per attempt, so a
        # restarted group never reads the dead attempt's addresses
        store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                store=dist.PrefixStore(f"diffguide/attempt{restart_count()}", store))
    return Runtime(rank=rank, world=world, device=dev, local_rank=local_rank)
