"""Training configuration: one frozen dataclass, filled from CLI options and an optional TOML file."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..validate import is_positive_int

__all__ = ["TrainConfig", "load_config", "parse_duration", "halvings", "MIN_TIME_BUDGET_S"]

MIN_TIME_BUDGET_S = 10.0  # below this not even one step and a checkpoint fit reliably


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved with every checkpoint.

    ``task``: ``"diffusion"`` (eps-MSE with label dropout, CFG paper Alg. 1), ``"classifier"``
    (noise-aware classifier, cross-entropy on noisy inputs), ``"distill"`` (guidance distillation of
    the CFG model ``teacher`` into a w-conditioned student over ``[w_min, w_max]``, Meng et al. 2023;
    ``preset`` and ``net`` are then the teacher's) or ``"progressive"`` (progressive distillation of such a
    student, Salimans & Ho 2022 as Meng et al. 2023 apply it: ``from_steps`` DDIM steps halved round by
    round down to ``to_steps``; ``steps`` is then each round's). ``steps`` caps the step count;
    ``time_budget`` (seconds) stops on wall-clock time instead, and then warm-up and learning-rate
    decay follow the budget. ``batch_size`` is per process and per micro-batch: a step's global batch
    is ``batch_size x processes x accumulate`` (gradient accumulation over ``accumulate`` micro-batches),
    and a run is defined by its global batch, not by how it is split. ``backend``: the
    ``torch.distributed`` backend under torchrun (``auto``: NCCL on GPUs, gloo on CPU). ``compile``:
    ``torch.compile`` the network for training (worth it on GPUs; it gave nothing on CPU). ``precision``:
    ``"auto"`` picks bf16 autocast on CUDA with bf16 and on CPUs with native bf16
    (``avx512_bf16``/``amx_bf16``), fp32 elsewhere.
    """

    task: Literal["diffusion", "classifier", "distill", "progressive"] = "diffusion"
    out: str = "runs/mnist"
    data: str = "mnist"
    image_size: int | None = None
    channels: int | None = None
    hflip: bool = False
    preset: str = "small"
    net: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    schedule: str = "continuous"
    p_uncond: float = 0.1
    p_clean: float = 0.0
    batch_size: int = 128
    accumulate: int = 1
    steps: int | None = 10_000
    time_budget: float | None = None
    lr: float = 1e-3
    lr_decay: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 1000
    keep: int = 3
    tensorboard: bool = False
    teacher: str | None = None
    w_min: float = 0.0
    w_max: float = 4.0
    distill_weighting: Literal["snr", "truncated-snr"] = "snr"
    from_steps: int | None = None
    to_steps: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"config {name} = {getattr(self, name)!r} is invalid: expected {want}")

        if self.task not in ("diffusion", "classifier", "distill", "progressive"):
            raise bad("task", "'diffusion', 'classifier', 'distill' or 'progressive'")
        if self.task != "progressive" and (self.from_steps is not None or self.to_steps is not None):
            raise ValueError(f"from_steps and to_steps are for task 'progressive' (progressive distillation), not "
                             f"{self.task!r}")
        if self.task == "progressive":
            if not self.teacher:
                raise ValueError("progressive distillation needs a teacher: the w-conditioned student of stage one "
                                 "(teacher = PATH)")
            halvings(self.from_steps, self.to_steps)
        if self.task in ("distill", "progressive"):
            if not self.teacher:
                raise ValueError("distillation needs a teacher: the CFG-trained model to distil (teacher = PATH)")
            lo, hi = self.w_min, self.w_max
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (lo, hi)) or lo < -1 or lo > hi:
                raise ValueError(f"the w range [{lo}, {hi}] is invalid: expected -1 <= w_min <= w_max")
            if self.distill_weighting not in ("snr", "truncated-snr"):
                raise bad("distill_weighting", "'snr' or 'truncated-snr'")
        for name in ("batch_size", "accumulate", "log_every", "ckpt_every", "keep"):
            if not is_positive_int(getattr(self, name)):
                raise bad(name, "a positive integer")
        if self.steps is not None and not is_positive_int(self.steps):
            raise bad("steps", "a positive integer or None")
        if self.steps is None and self.time_budget is None:
            raise ValueError("give a step count (steps) or a wall-clock budget (time_budget), or both")
        if self.time_budget is not None and not (math.isfinite(self.time_budget)
                                                 and self.time_budget >= MIN_TIME_BUDGET_S):
            raise ValueError(f"time budget {self.time_budget!r} s is too short: one step and a checkpoint need "
                             f"at least {MIN_TIME_BUDGET_S:g} s")
        for name, lo, hi in (("p_uncond", 0, 1), ("p_clean", 0, 1), ("ema_decay", 0, 1)):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and lo <= v <= hi):
                raise bad(name, f"a number in [{lo}, {hi}]")
        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise bad(name, "a finite number > 0")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise bad("warmup", "an integer >= 0")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise bad("weight_decay", "a number >= 0")
        if self.lr_decay not in ("cosine", "linear", "constant"):
            raise bad("lr_decay", "'cosine', 'linear' or 'constant'")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise bad("precision", "'auto', 'fp32' or 'bf16'")
        if self.backend not in ("auto", "gloo", "nccl"):
            raise bad("backend", "'auto', 'gloo' or 'nccl'")
        if self.device != "auto" and not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise bad("device", "'auto', 'cpu', 'cuda' or 'cuda:N'")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def halvings(from_steps: Any, to_steps: Any) -> list[tuple[int, int]]:
    """The rounds ``(N, N/2)`` that take ``from_steps`` DDIM steps to ``to_steps`` by halving."""
    if not (is_positive_int(from_steps) and is_positive_int(to_steps)):
        raise ValueError(f"progressive distillation needs from_steps and to_steps, positive integers, got "
                         f"{from_steps!r} and {to_steps!r}")
    rounds, n = [], from_steps
    while n > to_steps and n % 2 == 0:
        rounds.append((n, n // 2))
        n //= 2
    if n != to_steps or not rounds:
        raise ValueError(f"to_steps = {to_steps} is not reachable by halving from_steps = {from_steps} (each round "
                         f"halves the step count: e.g. 32 -> 16 -> 8 -> 4)")
    return rounds


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"30m"``, ``"1.5h"`` or ``"1h30m"``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise ValueError(f"cannot read the duration {text!r}: expected e.g. '90s', '30m', '1.5h' or '1h30m'")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def load_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from an optional TOML file (keys = field names, a ``[net]`` table for
    preset overrides) updated by ``overrides`` (options given on the command line; ``None`` = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        try:
            values = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config file {p} is not valid TOML: {e}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
    if "time_budget" in values:
        values["time_budget"] = parse_duration(values["time_budget"])
    return TrainConfig(**values)
