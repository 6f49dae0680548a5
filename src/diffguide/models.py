"""Build networks from presets/configs, export trained weights, load them back (safetensors + JSON only)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint, load_weights, read_config, save_weights
from .ema import EMA
from .nets import (
    ClassifierConfig,
    GuidedStudent,
    NoiseClassifier,
    StudentConfig,
    UNet,
    UNetConfig,
    classifier_config,
    student_config,
    unet_config,
)

__all__ = ["build_model", "model_from_config", "export_model", "load_model", "write_model_card"]

_KINDS = {"diffusion": (UNet, UNetConfig, unet_config),
          "classifier": (NoiseClassifier, ClassifierConfig, classifier_config),
          "student": (GuidedStudent, StudentConfig, student_config)}  # a guidance-distilled U-Net


def _kind(kind: str) -> tuple[Any, Any, Any]:
    if kind not in _KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind]


def build_model(kind: str, preset: str, *, channels: int, image_size: int, num_classes: int,
                overrides: dict[str, Any] | None = None) -> nn.Module:
    """A fresh ``UNet`` (``kind="diffusion"``) or ``NoiseClassifier`` (``"classifier"``) from a preset."""
    cls, _, make_config = _kind(kind)
    return cls(make_config(preset, in_channels=channels, image_size=image_size, num_classes=num_classes,
                           **(overrides or {})))


def model_from_config(kind: str, config: dict[str, Any]) -> nn.Module:
    """A network from its saved config dict (JSON lists become tuples again)."""
    cls, cfg_cls, _ = _kind(kind)
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise ValueError(f"saved {kind} config has unknown fields {unknown}")
    return cls(cfg_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))


def _resolve_checkpoint(path: Path) -> Path:
    if (path / "state.json").exists():
        return path
    ckpt = latest_checkpoint(path) if path.is_dir() else None
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected a checkpoint directory, a run directory "
                                f"holding checkpoints, or an exported .safetensors file)")
    return ckpt


def export_model(checkpoint: str | Path, out_file: str | Path, *, card: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint's EMA weights as one ``.safetensors`` file whose metadata holds the kind, the
    network config and the training config; ``card`` adds model-card fields."""
    ckpt = _resolve_checkpoint(Path(checkpoint))
    config = read_config(ckpt)
    net = model_from_config(config["kind"], config["model"])
    ema = EMA(net)
    state = load_checkpoint(ckpt, model=net, ema=ema)
    ema.copy_to(net)
    meta = {"kind": config["kind"], "model": config["model"], "train": {k: v for k, v in config.items()
                                                                      if k not in ("model", "kind")},
            "step": state["step"], **(card or {})}
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, net, meta)
    return out


def load_model(path: str | Path, *, ema: bool = True) -> nn.Module:
    """A network in eval mode from an exported ``.safetensors`` file, a checkpoint directory or a run
    directory (its latest checkpoint; EMA weights unless ``ema=False``). Its metadata is attached as
    ``net.meta``."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model not found: {p}")
    if p.is_file():
        state, meta = load_weights(p)
        if "kind" not in meta or "model" not in meta:
            raise ValueError(f"{p} has no diffguide metadata (kind, model): not a diffguide export")
        net = model_from_config(meta["kind"], meta["model"])
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{p}: weights do not fit the saved config (missing {missing}, unexpected {unexpected})")
    else:
        ckpt = _resolve_checkpoint(p)
        config = read_config(ckpt)
        net = model_from_config(config["kind"], config["model"])
        averaged = EMA(net)
        meta = load_checkpoint(ckpt, model=net, ema=averaged)
        if ema:
            averaged.copy_to(net)
        meta = {"kind": config["kind"], "model": config["model"], "train": config, "step": meta["step"]}
    net.meta = meta  # type: ignore[assignment]  # a plain dict attribute, not a Tensor/Module
    # the schedule it was trained with (network protocol; a classifier keeps it too, for its lam range)
    from .schedule import DiscreteSchedule, get_schedule

    train = meta.get("train", {})
    table = train.get("schedule_table")  # a schedule read from a file at training time, kept whole
    net.train_schedule = (DiscreteSchedule(tuple(table), "diffusers") if table  # type: ignore[assignment]
                          else get_schedule(train.get("schedule", "continuous")))
    return net.eval()


def write_model_card(run_dir: str | Path, weights: str | Path, *, command: str, wall_time_s: float) -> Path:
    """A JSON model card next to exported ``weights``: the command, steps, wall time, throughput, final
    loss, machine and the full training config (from the run directory's ``config.json`` and ``log.jsonl``)."""
    import json
    import platform
    import re
    import subprocess
    import time

    import torch

    run = Path(run_dir)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if platform.system() == "Linux" else ""
    model = re.search(r"Model name:\s*(.+)", lscpu)
    last = rows[-1] if rows else {}
    ckpt = latest_checkpoint(run)  # the final step (the log's last row may be up to log_every earlier)
    steps = json.loads((ckpt / "state.json").read_text())["step"] if ckpt is not None else last.get("step")
    card = {"weights": Path(weights).name, "command": command, "steps": steps,
            "wall_time_s": round(wall_time_s, 1), "final_loss": last.get("loss"),
            "mean_images_per_s": round(sum(r["images_per_s"] for r in rows) / len(rows), 1) if rows else None,
            "cpu": model.group(1).strip() if model else platform.processor(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "config": json.loads((run / "config.json").read_text())}
    out = Path(weights).with_suffix(".json")
    out.write_text(json.dumps(card, indent=2) + "\n")
    return out
