"""One training loop for the diffusion model and the noise-aware classifier.

Each step is a pure function of (weights, optimizer state, step index, seed): the batch comes from
:class:`~diffguide.data.Batches` and all noise from a generator seeded by ``(seed, step)``, so a run
resumed from a checkpoint reproduces an uninterrupted one exactly (with a step budget; a wall-clock
budget's learning-rate schedule follows the clock and is not reproducible by nature).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.profiler import record_function

from ..checkpoint import checkpoints, latest_checkpoint, load_checkpoint, read_config, save_checkpoint
from ..data import Batches, ImageData, check_batch_size, load_data
from ..ema import EMA
from ..models import build_model
from ..precision import cpu_has_native_bf16, resolve_precision
from ..schedule import DiscreteSchedule, get_schedule
from .config import TrainConfig
from .distributed import Runtime, init_runtime, resolve_device, restart_count, run_id
from .losses import ClassifierLoss, DiffusionLoss, DistillationLoss, ProgressiveLoss

__all__ = ["train", "TrainingDiverged", "resolve_device", "resolve_precision", "cpu_has_native_bf16", "global_batch"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; no update was applied and the last good checkpoint is kept."""


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then decay by ``progress`` in [0, 1] (steps or time)."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    p = min(max(progress, 0.0), 1.0)
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p, "constant": 1.0}[cfg.lr_decay]
    return cfg.lr * warm * max(decay, 0.01)


class _Log:
    """JSONL log (+ TensorBoard when asked for and installed)."""

    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.file = (run_dir / "log.jsonl").open("a")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                print("tensorboard is not installed: logging to log.jsonl only")

    def write(self, row: dict[str, Any]) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def global_batch(cfg: TrainConfig, world: int) -> int:
    """Rows per optimizer step: the per-process micro-batch x processes x accumulation steps."""
    return cfg.batch_size * world * cfg.accumulate


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig, world: int = 1) -> None:
    # A resumed run may change how long it runs, how it reports and how its global batch is split over
    # processes and micro-batches, not what it computes.
    free = {"out", "steps", "time_budget", "log_every", "ckpt_every", "keep", "tensorboard", "device", "backend",
            "batch_size", "accumulate", "compile"}
    now = dataclasses.asdict(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # fields older runs lack
    diff = {k: (saved.get(k, defaults.get(k)), now[k]) for k in now
            if k not in free and saved.get(k, defaults.get(k)) != now[k]}
    if diff:
        raise ValueError("cannot resume: the config differs from the checkpoint's in "
                         + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in diff.items()))
    was = int(saved.get("global_batch") or saved["batch_size"] * saved.get("accumulate", 1))
    if was != global_batch(cfg, world):
        raise ValueError(f"cannot resume: the run's global batch is {was} rows per step, but batch_size "
                         f"{cfg.batch_size} x {world} process{'es' if world > 1 else ''} x accumulate "
                         f"{cfg.accumulate} = {global_batch(cfg, world)}; choose --batch-size and --accumulate "
                         f"so that their product with the number of processes is {was}")


def _resume(run_dir: Path, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            say: Callable[..., None] = print) -> tuple[dict[str, Any], Path]:
    """Load the newest *intact* checkpoint. A damaged one (truncated file, failed disk) is reported with the
    steps its fallback loses; only when none is intact does resuming stop, naming each one's damage."""
    found = checkpoints(run_dir)
    damaged: list[tuple[Path, str]] = []
    for ckpt in reversed(found):
        try:
            state = load_checkpoint(ckpt, model=net, ema=ema, optimizer=opt, restore_rng=True)
        except (ValueError, OSError) as e:  # load_checkpoint names the damage it finds; OSError: the disk
            damaged.append((ckpt, str(e)))
            continue
        for bad, why in damaged:
            lost = _step_of(bad) - int(state["step"])
            say(f"warning: {bad.name} is damaged ({why}); resuming from {ckpt.name} instead, {lost} steps lost",
                file=sys.stderr)
        return state, ckpt
    raise ValueError("--resume: no intact checkpoint in " + str(run_dir) + ":\n"
                     + "\n".join(f"  {p.name}: {why}" for p, why in damaged))


def _written_by_this_job(ckpt: Path) -> bool:
    """Whether ``ckpt`` was written by this torchrun job (an earlier attempt of it), not by another run."""
    job = run_id()
    try:
        return job is not None and read_config(ckpt).get("torchrun_run_id") == job
    except (OSError, ValueError, KeyError):
        return True  # unreadable: let the resume report the damage and fall back


def _step_of(ckpt: Path) -> int:
    return int("".join(ch for ch in ckpt.name if ch.isdigit()) or 0)


Task = Callable[[TrainConfig, ImageData, Any, torch.device], tuple[nn.Module, Callable[..., Any], str]]


def _diffusion_task(cfg: TrainConfig, data: ImageData, schedule: Any, device: torch.device) -> tuple[Any, Any, str]:
    net = build_model("diffusion", cfg.preset, channels=data.channels, image_size=data.image_size,
                      num_classes=data.num_classes, overrides=cfg.net)
    return net, DiffusionLoss(schedule, cfg.p_uncond), "diffusion"


def _classifier_task(cfg: TrainConfig, data: ImageData, schedule: Any, device: torch.device) -> tuple[Any, Any, str]:
    net = build_model("classifier", cfg.preset, channels=data.channels, image_size=data.image_size,
                      num_classes=data.num_classes, overrides=cfg.net)
    return net, ClassifierLoss(schedule, cfg.p_clean), "classifier"


def _check_teacher(teacher: Any, cfg: TrainConfig, data: ImageData) -> None:
    """A teacher makes the data's images and classes, on the config's schedule."""
    shape = (data.channels, data.image_size, data.image_size)
    if tuple(teacher.sample_shape) != shape or teacher.num_classes != data.num_classes:
        raise ValueError(f"the teacher makes {'x'.join(map(str, teacher.sample_shape))} samples of "
                         f"{teacher.num_classes} classes, but the data has {'x'.join(map(str, shape))} images of "
                         f"{data.num_classes} classes")
    taught = cast(Any, teacher).meta.get("train", {})
    if "schedule_table" not in taught and taught.get("schedule", "continuous") != cfg.schedule:
        raise ValueError(f"the teacher was trained on the {taught.get('schedule')!r} schedule, but the distillation "
                         f"config says {cfg.schedule!r}: give --schedule {taught.get('schedule')}")


def _distill_task(cfg: TrainConfig, data: ImageData, schedule: Any, device: torch.device) -> tuple[Any, Any, str]:
    from ..models import load_model
    from ..nets import GuidedStudent, UNet

    teacher = load_model(cast(str, cfg.teacher))
    if not isinstance(teacher, UNet) or isinstance(teacher, GuidedStudent) or not teacher.num_classes:
        raise ValueError(f"the teacher {cfg.teacher} is not a class-conditional CFG diffusion model (a diffguide "
                         f"U-Net trained with label dropout, with a null label)")
    _check_teacher(teacher, cfg, data)
    student = GuidedStudent.from_teacher(teacher, (cfg.w_min, cfg.w_max))
    teacher = teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)  # type: ignore[call-overload]
    return student, DistillationLoss(teacher, schedule, (cfg.w_min, cfg.w_max), cfg.distill_weighting), "student"


def _progressive_task(cfg: TrainConfig, data: ImageData, schedule: Any, device: torch.device) -> tuple[Any, Any, str]:
    """One round ``from_steps -> to_steps = from_steps / 2`` (:func:`diffguide.training.progressive.distill_progressive`
    runs the rounds)."""
    from ..models import load_model
    from ..nets import GuidedStudent
    from ..schedule import sampling_grid

    n, m = cast(int, cfg.from_steps), cast(int, cfg.to_steps)
    if n != 2 * m:
        raise ValueError(f"a training run is one round, N -> N/2 steps; {n} -> {m} is several: run them with "
                         f"diffguide distill --progressive (distill_progressive)")
    teacher = load_model(cast(str, cfg.teacher))
    if not isinstance(teacher, GuidedStudent):
        raise ValueError(f"the teacher {cfg.teacher} is not a w-conditioned student: progressive distillation "
                         f"starts from stage one's (diffguide distill)")
    if teacher.distilled_steps is not None and teacher.distilled_steps != n:
        raise ValueError(f"the teacher {cfg.teacher} was distilled for {teacher.distilled_steps} steps, not {n}")
    if (cfg.w_min, cfg.w_max) != teacher.w_range:
        raise ValueError(f"progressive rounds keep the teacher's w range {list(teacher.w_range)}, but the config "
                         f"says [{cfg.w_min}, {cfg.w_max}]")
    _check_teacher(teacher, cfg, data)
    if device.type == "mps":
        raise ValueError("progressive distillation computes its targets in float64, which MPS does not have: "
                         "use --device cpu or cuda")
    grid, coarse = sampling_grid(schedule, n), sampling_grid(schedule, m)
    if grid[::2].shape != coarse.shape or not torch.allclose(grid[::2], coarse, rtol=1e-12, atol=1e-12):
        raise ValueError(f"the {cfg.schedule} schedule's {m}-step grid is not every other point of its {n}-step "
                         f"grid: its students could not take two teacher steps at a time")
    student = GuidedStudent.from_student(teacher, m)
    teacher = teacher.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)  # type: ignore[call-overload]
    return student, ProgressiveLoss(teacher, grid, teacher.w_range), "student"


# the trainer's tasks: the network to train, its loss and the model kind it is saved as
TASKS: dict[str, Task] = {"diffusion": _diffusion_task, "classifier": _classifier_task, "distill": _distill_task,
                          "progressive": _progressive_task}


class _DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that also answers the wrapped network's attributes (``null_label``,
    ``condition``, ...), so the losses take either."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          data: ImageData | None = None, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train per ``cfg``; returns the run directory (checkpoints, ``log.jsonl``, ``config.json``).

    ``resume=True`` continues from the run directory's latest checkpoint (an error if there is none,
    or if the config changed in anything but duration and reporting). ``data`` overrides
    ``cfg.data`` (already loaded). ``on_step(step, loss)`` is called after each step.

    Under ``torchrun`` every process runs this with the same config: DistributedDataParallel over the
    ranks (:mod:`~diffguide.training.distributed`), each taking its rows of the global batch; rank 0
    alone logs, prints and writes checkpoints, all ranks resume from the same one, and the stop decisions
    (step budget, time budget, a non-finite loss on any rank) are taken together. A job that torchrun
    restarts (``--max-restarts``) resumes from its last checkpoint by itself.
    """
    rt = init_runtime(cfg.device, cfg.backend)
    say = print if rt.is_main else (lambda *a, **k: None)
    return _train(cfg, rt, say, resume=resume, progress=progress and rt.is_main, data=data, on_step=on_step)


@dataclasses.dataclass
class _Run:
    """What :func:`_build` makes: the network (and the module the loss calls: DDP-wrapped, compiled),
    its loss, optimizer, EMA, batches, the saved config and this rank's micro-batch rows."""

    cfg: TrainConfig
    rt: Runtime
    net: nn.Module
    model: nn.Module
    loss_fn: Callable[..., Any]
    opt: torch.optim.Optimizer
    ema: EMA
    batches: Batches
    config: dict[str, Any]
    micro: list[slice]
    autocast: Callable[[], Any]


def _build(cfg: TrainConfig, rt: Runtime, say: Callable[..., None], data: ImageData | None) -> _Run:
    """Data, network, loss, optimizer and EMA, the same on every rank (all checks before any work)."""
    device = rt.device
    amp = resolve_precision(cfg.precision, device)
    say(f"device {device}, precision {'bf16 autocast' if amp else 'fp32'}"
        + (" (auto: native bf16 not available)" if cfg.precision == "auto" and amp is None else ""))
    if data is None:
        data = load_data(cfg.data, image_size=cfg.image_size, channels=cfg.channels)
    G = global_batch(cfg, rt.world)
    if G > len(data):
        raise ValueError(f"the global batch of {G} rows (batch_size {cfg.batch_size} x {rt.world} "
                         f"process{'es' if rt.world > 1 else ''} x accumulate {cfg.accumulate}) exceeds the "
                         f"{len(data)} images in {cfg.data}; use a smaller batch, fewer processes or more data")
    check_batch_size(data, G)
    if rt.distributed:
        say(f"{rt.world} processes ({dist_backend()}), global batch {G} = {cfg.batch_size} per process x "
            f"{rt.world}" + (f" x {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else ""))
    schedule = get_schedule(cfg.schedule)
    torch.manual_seed(cfg.seed)  # weight init (and dropout) draw from the global generator
    net, loss_fn, kind = TASKS[cfg.task](cfg, data, schedule, device)
    # channels_last: 10-15% faster convolutions on CPU (measured); torch's stubs omit the keyword
    net = net.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            foreach=True)
    config = {**dataclasses.asdict(cfg), "model": dataclasses.asdict(cast(Any, net.config)), "kind": kind,
              "global_batch": G, "world_size": rt.world, "torchrun_run_id": run_id()}
    if isinstance(schedule, DiscreteSchedule) and schedule.name == "diffusers":  # from a file: keep the table
        config["schedule_table"] = list(schedule.lams)
    mine = rt.rows(G)  # this rank's rows of the global batch, cut into the accumulation's micro-batches
    micro = [slice(mine.start + k * cfg.batch_size, mine.start + (k + 1) * cfg.batch_size)
             for k in range(cfg.accumulate)]
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext
    return _Run(cfg, rt, net, net, loss_fn, opt, EMA(net, decay=cfg.ema_decay), Batches(data, G, seed=cfg.seed,
                hflip=cfg.hflip), config, micro, autocast)


def _restore(run: _Run, resume: bool, say: Callable[..., None]) -> tuple[int, float, bool]:
    """``(step, elapsed seconds, resumed)``: from the newest intact checkpoint when resuming (every rank
    the same one), else a fresh start in a run directory without checkpoints."""
    cfg, rt, run_dir = run.cfg, run.rt, Path(run.cfg.out)
    ckpt = latest_checkpoint(run_dir) if run_dir.exists() else None
    if not resume and ckpt is not None and restart_count() > 0 and _written_by_this_job(ckpt):
        resume = True  # torchrun restarted this job (--max-restarts): go on from its last checkpoint
        say(f"restart {restart_count()}: resuming")
    if not resume:
        if ckpt is not None:
            raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue, "
                                  "or choose another --out")
        return 0, 0.0, False
    if ckpt is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}")
    try:  # a changed config is said as such, before any weights are read (and mistaken for damage)
        saved = read_config(ckpt)
    except (OSError, ValueError, KeyError):
        saved = None  # unreadable: _resume reports the damage and falls back
    if saved is not None:
        _check_resumable(saved, cfg, rt.world)
    state, ckpt = _resume(run_dir, run.net, run.ema, run.opt, say)
    _check_resumable(state["config"], cfg, rt.world)
    step, elapsed = int(state["step"]), float(state.get("extra", {}).get("elapsed_s", 0.0))
    main_step, = rt.agree(step)
    if rt.any(step != main_step):  # e.g. a run directory that is not on a filesystem every rank shares
        found = f"rank {rt.rank} found step {step} ({ckpt}), rank 0 step {int(main_step)}" \
            if step != main_step else "another rank found another checkpoint than rank 0"
        raise ValueError(f"cannot resume: {found}; every rank must see the same run directory {run_dir} "
                         f"(a filesystem all ranks share)")
    say(f"resumed from {ckpt} at step {step}")
    return step, elapsed, True


def _step(run: _Run, step: int, lr: float) -> tuple[float, dict[str, torch.Tensor], float]:
    """One optimizer step at ``lr``: ``(this rank's loss, its stats, the gradient norm)``. Stops every rank
    together, before the update, if the loss is not finite on any of them."""
    cfg, rt, device = run.cfg, run.rt, run.rt.device
    for group in run.opt.param_groups:
        group["lr"] = lr
    with record_function("data"):
        x, c = run.batches.get(step)
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        c = c.to(device, non_blocking=True)
    run.opt.zero_grad(set_to_none=True)
    loss_value = 0.0
    stats: dict[str, torch.Tensor] = {}
    for k, rows in enumerate(run.micro):
        # the global batch's randomness, the same on every rank and micro-batch; these rows of it
        gen = torch.Generator(device).manual_seed(step_seed(cfg.seed, step))
        with record_function("forward+loss"), run.autocast():
            loss, part = run.loss_fn(run.model, x, c, gen, rows)
        value = loss.item()
        if rt.any(not math.isfinite(value)):  # agreed: every rank stops here, none waits on another
            last = latest_checkpoint(Path(cfg.out))
            what = f"loss is {value}" if not math.isfinite(value) else "the loss is not finite on another rank"
            where = f" (rank {rt.rank})" if rt.distributed else ""
            raise TrainingDiverged(f"{what}{where} at step {step}; stopped before updating the weights. "
                                   f"Last good checkpoint: {last or 'none yet'}")
        sync = rt.distributed and k < len(run.micro) - 1
        with record_function("backward"), (cast(Any, run.model).no_sync() if sync else contextlib.nullcontext()):
            (loss / len(run.micro)).backward()
        loss_value += value / len(run.micro)
        for key, v in part.items():
            stats[key] = stats.get(key, 0) + v.detach()
    with record_function("clip+optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
        run.opt.step()
    with record_function("ema"):
        run.ema.update(run.net)
    return loss_value, stats, float(grad_norm)


def _train(cfg: TrainConfig, rt: Runtime, say: Callable[..., None], *, resume: bool, progress: bool,
           data: ImageData | None, on_step: Callable[[int, float], None] | None) -> Path:
    """The loop: build, restore, then steps with logging, checkpoints and the agreed stops."""
    run_dir = Path(cfg.out)
    run = _build(cfg, rt, say, data)
    step, elapsed, resumed = _restore(run, resume, say)
    rt.barrier()  # every rank has read what it needs before rank 0 writes
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run.config, indent=2))
    say("config: " + json.dumps(dataclasses.asdict(cfg)))
    if rt.distributed:
        run.model = _DDP(run.net, device_ids=[rt.device] if rt.device.type == "cuda" else None)
    if cfg.compile:  # the checkpoints keep the plain network's weights
        run.model = cast(nn.Module, torch.compile(run.model))
    log = _Log(run_dir, cfg.tensorboard) if rt.is_main else None
    total = cfg.steps if cfg.steps is not None else None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, mininterval=2.0)

    saved_step = step if resumed else -1

    def save(s: int) -> None:
        nonlocal saved_step
        saved_step = s
        if rt.is_main:
            save_checkpoint(run_dir, s, model=run.net, ema=run.ema, optimizer=run.opt, config=run.config,
                            extra={"elapsed_s": elapsed}, keep=cfg.keep)

    run.net.train()
    stats_sum: dict[str, torch.Tensor]
    t_log, seen, loss_sum, stats_sum = time.perf_counter(), 0, 0.0, {}
    t_start = time.perf_counter() - elapsed
    try:
        while True:
            elapsed, = rt.agree(time.perf_counter() - t_start)  # rank 0's clock: one lr, one stop for all
            done_by_time = cfg.time_budget is not None and elapsed >= cfg.time_budget
            if (total is not None and step >= total) or done_by_time:
                break
            frac = elapsed / cfg.time_budget if cfg.time_budget is not None else step / (total or 1)
            lr = lr_at(cfg, step, frac)
            loss_value, stats, grad_norm = _step(run, step, lr)
            step += 1
            seen += run.batches.batch_size
            loss_sum += loss_value
            for key, v in stats.items():
                stats_sum[key] = stats_sum.get(key, 0) + v
            if on_step is not None:
                on_step(step, loss_value)
            if bar is not None:
                bar.update(1)
            if step % cfg.log_every == 0:
                now = time.perf_counter()
                mean_loss = rt.all_reduce(torch.tensor([loss_sum], dtype=torch.float64)).item() / rt.world
                row = {"step": step, "loss": mean_loss / cfg.log_every, "lr": lr,
                       "grad_norm": grad_norm, "images_per_s": seen / (now - t_log),
                       "elapsed_s": now - t_start}
                if "correct_q" in stats_sum:
                    both = rt.all_reduce(torch.stack([stats_sum["correct_q"], stats_sum["count_q"]]).float().cpu())
                    acc = (both[0] / both[1].clamp(min=1)).tolist()
                    row.update({f"acc_q{i}": a for i, a in enumerate(acc)})
                if log is not None:
                    log.write(row)
                if bar is not None:
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                t_log, seen, loss_sum, stats_sum = now, 0, 0.0, {}
            if step % cfg.ckpt_every == 0:
                elapsed, = rt.agree(time.perf_counter() - t_start)
                save(step)
        elapsed, = rt.agree(time.perf_counter() - t_start)
        if saved_step != step:
            save(step)
        rt.barrier()  # the last checkpoint is on disk before any rank returns
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    say(f"trained {step} steps in {elapsed:.0f} s; checkpoints in {run_dir}")
    return run_dir


def dist_backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_initialized() else "none"
