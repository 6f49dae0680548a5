"""Progressive distillation of a w-conditioned student, round by round (Meng et al. 2023, stage two).

Each round ``N -> N/2`` is an ordinary training run of the ``progressive`` task (:mod:`.trainer`: EMA,
atomic checkpoints, exact resume, time budget, NaN stop) in ``OUT/round-N-to-M/``; its EMA weights are
exported to ``OUT/student-M.safetensors`` with a model card, and that student is the next round's
teacher. Resuming skips the exported rounds and resumes the one in progress, so an interrupted run
ends where an uninterrupted one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..checkpoint import latest_checkpoint
from ..data import ImageData
from .config import TrainConfig, halvings
from .distributed import init_runtime
from .trainer import train

__all__ = ["distill_progressive", "round_dir", "student_file"]


def round_dir(out: str | Path, n: int) -> Path:
    return Path(out) / f"round-{n}-to-{n // 2}"


def student_file(out: str | Path, steps: int) -> Path:
    return Path(out) / f"student-{steps}.safetensors"


def distill_progressive(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
                        data: ImageData | None = None, command: str | None = None,
                        on_step: Callable[[int, float], None] | None = None,
                        say: Callable[[str], None] = print) -> list[Path]:
    """Run the rounds ``cfg.from_steps -> ... -> cfg.to_steps`` (``cfg.steps`` training steps each) from the
    stage-one student ``cfg.teacher``; returns each round's exported student, in order. ``command``: for
    the model cards. Under torchrun every rank trains and rank 0 alone exports."""
    from ..models import export_model, load_model, write_model_card

    rounds = halvings(cfg.from_steps, cfg.to_steps)
    rt = init_runtime(cfg.device, cfg.backend)
    teacher, out = str(cfg.teacher), Path(cfg.out)
    if (cfg.w_min, cfg.w_max) == (TrainConfig.w_min, TrainConfig.w_max):  # the default: the teacher's range
        # (a range that is neither the default nor the teacher's is refused by the round's task)
        lo, hi = getattr(load_model(teacher), "w_range", (cfg.w_min, cfg.w_max))
        cfg = cfg.replace(w_min=lo, w_max=hi)
    made = []
    for n, m in rounds:
        run, export = round_dir(out, n), student_file(out, m)
        if resume and export.exists():
            if rt.is_main:
                say(f"round {n} -> {m}: done ({export})")
            teacher = str(export)
            made.append(export)
            continue
        t0 = time.time()
        train(cfg.replace(out=str(run), teacher=teacher, from_steps=n, to_steps=m),
              resume=resume and latest_checkpoint(run) is not None, progress=progress, data=data, on_step=on_step)
        if rt.is_main:
            wall = time.time() - t0
            cmd = command or f"distill_progressive(from_steps={cfg.from_steps}, to_steps={cfg.to_steps})"
            write_model_card(run, export, command=cmd, wall_time_s=wall)  # the card first: the export marks done
            export_model(run, export, card={"command": cmd, "round": f"{n} -> {m} DDIM steps",
                                            "wall_time_s": round(wall, 1)})
            say(f"round {n} -> {m}: {wall:.0f} s; student {export}")
        rt.barrier()  # the export is on disk before any rank loads it as the next teacher
        teacher = str(export)
        made.append(export)
    return made
