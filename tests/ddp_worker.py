"""A training job for tests/test_distributed.py, started by torchrun (or plainly, as one process).

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT [--batch B] [--accumulate A]
        [--steps S] [--nan-at STEP] [--slow SECONDS] [--time-budget SECONDS] [--teacher STUDENT]

Trains the ``tiny`` U-Net (no dropout) on 64 8x8 images in three classes. After every step each rank
checks that all ranks hold the same weights (an all-gathered float64 checksum) and, at the end, writes
its own weights to ``OUT/rank<r>.safetensors``. ``--nan-at`` makes the loss NaN on the last rank alone at
that step; ``--slow`` sleeps after each step (so a test can kill a worker mid-run). ``--teacher``: train a
round of progressive distillation (4 -> 2 steps) of that stage-one student instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from diffguide.training import trainer  # noqa: E402
from diffguide.training.config import TrainConfig  # noqa: E402
from diffguide.training.distributed import process_rank, shutdown  # noqa: E402
from test_training import tiny_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--time-budget", type=float)
    ap.add_argument("--nan-at", type=int)
    ap.add_argument("--slow", type=float, default=0.0)
    ap.add_argument("--teacher")
    a = ap.parse_args()
    held: dict[str, torch.nn.Module] = {}
    kind_of_run = "progressive" if a.teacher else "diffusion"
    base = trainer.TASKS[kind_of_run]

    def task(cfg, data, schedule, device):  # the usual task, keeping the network for the checks
        net, loss, kind = base(cfg, data, schedule, device)
        held["net"] = net
        if a.nan_at is None:
            return net, loss, kind
        world = int(dist.get_world_size()) if dist.is_initialized() else 1
        calls = {"n": 0}

        def nan_on_last_rank(model, x, c, gen, rows):
            out, stats = loss(model, x, c, gen, rows)
            step, calls["n"] = calls["n"], calls["n"] + 1
            if step == a.nan_at and process_rank() == world - 1:
                out = out * float("nan")
            return out, stats

        return net, nan_on_last_rank, kind

    trainer.TASKS[kind_of_run] = task

    def in_sync(step: int, loss: float) -> None:
        total = torch.stack([p.detach().double().sum() for p in held["net"].parameters()]).sum().reshape(1)
        if dist.is_initialized():
            got = [torch.zeros(1, dtype=torch.float64) for _ in range(dist.get_world_size())]
            dist.all_gather(got, total)
            assert all(torch.equal(g, got[0]) for g in got), f"ranks out of sync after step {step}: {got}"
        time.sleep(a.slow)

    cfg = TrainConfig(out=str(Path(a.out) / "run"), preset="tiny", net={"dropout": 0.0}, batch_size=a.batch,
                      accumulate=a.accumulate, steps=a.steps if a.time_budget is None else None,
                      time_budget=a.time_budget, lr=2e-3, warmup=2, log_every=1, ckpt_every=a.ckpt_every,
                      precision="fp32", device="cpu", seed=3,
                      **({"task": "progressive", "teacher": a.teacher, "from_steps": 4, "to_steps": 2} if a.teacher
                         else {}))
    trainer.train(cfg, progress=False, data=tiny_data(n=64, size=8), on_step=in_sync)
    net = held["net"]
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(Path(a.out) / f"rank{process_rank()}.safetensors"))
    shutdown()


if __name__ == "__main__":
    main()
