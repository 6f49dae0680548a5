"""Checkpoints: weights in safetensors, everything else in JSON, written atomically. Never pickle.

A training checkpoint is a directory ``<run_dir>/ckpt-<step:08d>/`` holding

- ``model.safetensors``: the live weights (``model.state_dict()``, DDP/compile wrappers removed);
- ``ema.safetensors``: the averaged weights under the model's own key names (optional);
- ``optimizer.safetensors``: every tensor of ``optimizer.state_dict()``, keyed by its path
  (``state.<param id>.<name>``, e.g. ``state.0.exp_avg``) (optional);
- ``state.json``: the step, the config (a plain JSON dict), the caller's ``extra`` metadata, the
  non-tensor part of the optimizer state, the lr-scheduler state, the EMA counters and the RNG
  states (torch CPU and CUDA, numpy, python ``random``), plus the list of files above.

Torch state dicts (optimizer, scheduler, RNG) go through a tagged JSON codec so they round-trip
exactly: tuples, non-string dict keys and tensors are tagged (``{"__tuple__": [...]}``,
``{"__items__": [[k, v], ...]}``, ``{"__tensor__": "<key in optimizer.safetensors>"}`` or
``{"__tensor_b64__": "<base64 of a one-tensor safetensors blob>"}``). ``config`` and ``extra``
are plain JSON (tuples come back as lists).

A checkpoint is written into a hidden sibling directory (each file fsynced, see
:mod:`diffguide.fileio`), then renamed into place with ``os.replace``: a crash leaves the earlier
checkpoints intact and nothing that :func:`latest_checkpoint` would pick. One process per run
directory writes (rank 0 under DDP).

A shipped model is one ``.safetensors`` file (:func:`save_weights`) whose header holds its JSON
metadata (e.g. the model config) under the key ``"diffguide"``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor, nn

from .fileio import atomic_path, atomic_write_text, fsync_dir
from .validate import optional_positive_int

__all__ = [
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_config",
    "save_checkpoint",
    "save_weights",
    "unwrap_module",
]

FORMAT = "diffguide-checkpoint"
VERSION = 1
STATE, MODEL, EMA_FILE, OPTIMIZER = "state.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors"
_CKPT_RE = re.compile(r"ckpt-(\d+)")
_TAGS = ("__tensor__", "__tensor_b64__", "__tuple__", "__items__")
_MAX_LISTED = 20
StrPath = str | os.PathLike[str]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)  # torch.compile
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = module.module
        if not isinstance(inner, nn.Module):
            return module
        module = inner


# ---------------------------------------------------------------- public API


def save_checkpoint(
    run_dir: StrPath,
    step: int,
    *,
    model: nn.Module,
    ema: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    keep: int | None = 3,
) -> Path:
    """Write ``<run_dir>/ckpt-<step:08d>/`` atomically and return its path.

    ``ema`` is a :class:`diffguide.ema.EMA` or any averaged ``nn.Module`` (e.g.
    ``torch.optim.swa_utils.AveragedModel``); ``scheduler`` anything with ``state_dict()``.
    ``config`` (``dataclasses.asdict(cfg)``) and ``extra`` must be JSON-serialisable. After the new
    checkpoint is in place, all but the newest ``keep`` are deleted (``None`` keeps all); a
    checkpoint already at this step is replaced. RNG states are always recorded.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}")
    optional_positive_int(keep, "keep")
    # Everything is gathered and JSON-encoded before anything touches the disk.
    state: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "step": step,
        "config": _plain_json(config, "config"), "extra": _plain_json(extra or {}, "extra"),
        "torch_version": torch.__version__, "files": [MODEL],
    }
    files: dict[str, dict[str, Tensor]] = {MODEL: _tensor_state(unwrap_module(model), "model")}
    if ema is not None:
        weights, state["ema"] = _ema_state(ema)
        files[EMA_FILE] = weights
        state["files"].append(EMA_FILE)
    if optimizer is not None:
        files[OPTIMIZER] = {}
        state["optimizer"] = _encode(optimizer.state_dict(), files[OPTIMIZER], "")
        state["files"].append(OPTIMIZER)
    if scheduler is not None:
        state["scheduler"] = _encode(scheduler.state_dict(), None, "scheduler")
    state["rng"] = _encode(_get_rng(), None, "rng")
    text = json.dumps(state, indent=1)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"ckpt-{step:08d}"
    tmp = run_dir / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    old = run_dir / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        for name, tensors in files.items():
            _write_safetensors(tmp / name, tensors)
        atomic_write_text(tmp / STATE, text)  # last: a directory without state.json is never a checkpoint
        if final.exists():  # re-saving a step: move the old one aside, never into a half state
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        raise
    if keep is not None:
        older = [p for p in _checkpoints(run_dir) if p != final]
        for p in older[: max(0, len(older) - (keep - 1))]:
            trash = run_dir / f".{p.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(p, trash)  # atomic: a half-deleted directory is never listed
    for p in run_dir.glob(".ckpt-*"):  # leftovers of this and of earlier (crashed) saves
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: StrPath) -> Path | None:
    """The checkpoint directory with the highest step in ``run_dir``; ``None`` if there is none
    (or ``run_dir`` does not exist). Unfinished writes are never returned."""
    ckpts = _checkpoints(Path(run_dir))
    return ckpts[-1] if ckpts else None


def checkpoints(run_dir: StrPath) -> list[Path]:
    """Every finished checkpoint directory in ``run_dir``, oldest step first (unfinished writes excluded)."""
    return _checkpoints(Path(run_dir))


def read_config(path: StrPath) -> dict[str, Any]:
    """The config dict stored in a checkpoint directory (reads ``state.json`` only)."""
    return _read_state(Path(path))["config"]


def load_checkpoint(
    path: StrPath,
    *,
    model: nn.Module | None = None,
    ema: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint directory into whichever objects are given; return its ``state.json``.

    Weights are checked strictly (missing / unexpected keys, shapes) and a mismatch raises a
    ``ValueError`` listing them. ``ema`` may be an ``EMA`` or a plain ``nn.Module`` (which then
    receives the averaged weights, e.g. for sampling). ``restore_rng`` resets the global torch,
    CUDA, numpy and python RNGs to their state at saving time. Useful keys of the result:
    ``step``, ``config``, ``extra``.
    """
    path = Path(path)
    state = _read_state(path)
    if model is not None:
        _load_into(unwrap_module(model), _read_safetensors(path / MODEL, map_location), path / MODEL)
    if ema is not None:
        if "ema" not in state:
            raise ValueError(f"{path}: checkpoint holds no EMA weights ({EMA_FILE})")
        weights = _read_safetensors(path / EMA_FILE, map_location)
        if isinstance(ema, nn.Module):
            _load_into(unwrap_module(ema), weights, path / EMA_FILE)
        else:
            _check_keys(ema.module.state_dict(), weights, path / EMA_FILE)
            ema.load_state_dict({**state["ema"], "shadow": weights})
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"{path}: checkpoint holds no optimizer state ({OPTIMIZER})")
        osd = _decode(state["optimizer"], _read_safetensors(path / OPTIMIZER, "cpu"), path / OPTIMIZER)
        _load_state(optimizer, osd, path / OPTIMIZER, "optimizer")
    if scheduler is not None:
        if "scheduler" not in state:
            raise ValueError(f"{path}: checkpoint holds no lr-scheduler state")
        _load_state(scheduler, _decode(state["scheduler"], None, path / STATE), path / STATE, "scheduler")
    if restore_rng:
        _set_rng(_decode(state["rng"], None, path / STATE))
    return state


def save_weights(
    path: StrPath, module_or_state_dict: nn.Module | Mapping[str, Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write one ``.safetensors`` file (atomically) with ``metadata`` as JSON in its header."""
    path = Path(path)
    if isinstance(module_or_state_dict, nn.Module):
        tensors = _tensor_state(unwrap_module(module_or_state_dict), "module")
    else:
        tensors = dict(module_or_state_dict)
    header = {"diffguide": json.dumps(_plain_json(metadata or {}, "metadata"))}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_safetensors(path, tensors, header)
    return path


def load_weights(
    path: StrPath, model: nn.Module | None = None, *, map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a ``.safetensors`` file; loads it strictly into ``model`` if
    given. Files not written by :func:`save_weights` give their raw string header as metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a .safetensors file (use load_checkpoint)")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = json.loads(header["diffguide"]) if "diffguide" in header else dict(header)
    except Exception as e:
        raise ValueError(f"{path}: corrupt or unreadable safetensors file ({e})") from e
    if model is not None:
        _load_into(unwrap_module(model), tensors, path)
    return tensors, metadata


# ---------------------------------------------------------------- layout and files


def _checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints in ``run_dir``, oldest step first."""
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := _CKPT_RE.fullmatch(p.name)) and (p / STATE).is_file()]
    return [p for _, p in sorted(found)]


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is not a checkpoint directory (a file; for a .safetensors file "
                         "use load_weights)")
    if not (path / STATE).is_file():
        hint = "; it holds checkpoints: use latest_checkpoint()" if _checkpoints(path) else ""
        raise ValueError(f"{path} is not a checkpoint: missing {STATE}{hint}")
    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / STATE}: corrupt checkpoint state ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path / STATE}: not a {FORMAT} state file")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{path / STATE}: format version {state['version']} is newer than this "
                         f"diffguide reads ({VERSION})")
    missing = [name for name in state.get("files", [MODEL]) if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return state


def _write_safetensors(file: Path, tensors: Mapping[str, Tensor], header: dict[str, str] | None = None
                       ) -> None:
    """Write ``tensors`` to ``file`` atomically, with the usual permissions (see :mod:`diffguide.fileio`)."""
    tensors = _own_storage(tensors, file)
    with atomic_path(file) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt", **(header or {})})


def _read_safetensors(file: Path, device: str | torch.device) -> dict[str, Tensor]:
    try:
        return safetensors.torch.load_file(str(file), device=str(device))
    except Exception as e:
        raise ValueError(f"{file}: corrupt or unreadable safetensors file ({e})") from e


# ---------------------------------------------------------------- tensors and modules


def _tensor_state(module: nn.Module, what: str) -> dict[str, Tensor]:
    sd = module.state_dict()
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"{what} state_dict has non-tensor entries (extra state), not storable in "
                        f"safetensors: {', '.join(bad)}")
    return sd


def _own_storage(tensors: Mapping[str, Tensor], where: Path) -> dict[str, Tensor]:
    """CPU, contiguous tensors that each own their storage: safetensors refuses shared storage
    (tied weights, views) and non-contiguous tensors."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for k, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: entry {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or not t.is_contiguous() or t.numel() * t.element_size() != storage.nbytes():
            t = t.clone(memory_format=torch.contiguous_format)
        else:
            seen.add(ptr)
        out[k] = t
    return out


def _check_keys(expected: Mapping[str, Any], got: Mapping[str, Tensor], source: Path) -> None:
    """Raise a ValueError listing missing / unexpected keys and shape mismatches."""
    expected = {k: v for k, v in expected.items() if isinstance(v, Tensor)}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    shapes = [f"{k} (file {tuple(got[k].shape)}, model {tuple(v.shape)})"
              for k, v in expected.items() if k in got and got[k].shape != v.shape]
    if missing or unexpected or shapes:
        lines = [f"{source}: weights do not match the model:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:_MAX_LISTED])}{more}")
        raise ValueError("\n".join(lines))


def _load_into(module: nn.Module, tensors: Mapping[str, Tensor], source: Path) -> None:
    _check_keys(module.state_dict(), tensors, source)
    module.load_state_dict(tensors, strict=True)


def _load_state(obj: Any, sd: Any, source: Path, what: str) -> None:
    try:
        obj.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise ValueError(f"{source}: saved {what} state does not fit the given {what} "
                         f"({type(e).__name__}: {e})") from e


def _ema_state(ema: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if isinstance(ema, nn.Module):
        return _tensor_state(unwrap_module(ema), "ema"), {"kind": "module"}
    sd = ema.state_dict()
    if not isinstance(sd, dict) or "shadow" not in sd:
        raise TypeError(f"ema must be an nn.Module or a diffguide EMA, got {type(ema).__name__}")
    return sd["shadow"], _plain_json({k: v for k, v in sd.items() if k != "shadow"}, "ema")


# ---------------------------------------------------------------- JSON


def _plain_json(obj: Any, what: str) -> Any:
    """``obj`` after a JSON round trip (so the caller sees what will be read back)."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable (plain dicts, lists, str, numbers): {e}"
                        ) from e


def _encode(obj: Any, tensors: dict[str, Tensor] | None, path: str) -> Any:
    """Tagged JSON for torch state dicts; tensors go to ``tensors[path]`` or inline (base64)."""
    if isinstance(obj, Tensor):
        if tensors is None:
            blob = safetensors.torch.save(_own_storage({"t": obj}, Path(path)))
            return {"__tensor_b64__": base64.b64encode(blob).decode("ascii")}
        if path in tensors:
            raise ValueError(f"two tensors would share the key {path!r}")
        tensors[path] = obj
        return {"__tensor__": path}
    if isinstance(obj, np.generic):
        return _encode(obj.item(), tensors, path)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj

    def sub(k: object) -> str:
        return f"{path}.{k}" if path else str(k)

    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, sub(i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, sub(i)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, tensors, sub(k)) for k, v in obj.items()}
        return {"__items__": [[_encode(k, None, path), _encode(v, tensors, sub(k))] for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {path!r} in a checkpoint "
                    "(JSON and safetensors only, no pickle)")


def _decode(obj: Any, tensors: Mapping[str, Tensor] | None, source: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1 and next(iter(obj)) in _TAGS:
        ((tag, v),) = obj.items()
        if tag == "__tensor__":
            if tensors is None or v not in tensors:
                raise ValueError(f"{source}: missing tensor {v!r}")
            return tensors[v]
        if tag == "__tensor_b64__":
            return safetensors.torch.load(base64.b64decode(v))["t"]
        if tag == "__tuple__":
            return tuple(_decode(x, tensors, source) for x in v)
        return {_decode(k, None, source): _decode(x, tensors, source) for k, x in v}
    return {k: _decode(v, tensors, source) for k, v in obj.items()}


# ---------------------------------------------------------------- RNG


def _get_rng() -> dict[str, Any]:
    # the legacy global numpy RNG is what we save: (name, keys, pos, has_gauss, cached_gaussian)
    np_state = cast(tuple, np.random.get_state(legacy=True))  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng(rng: Mapping[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():  # devices beyond those saved keep their state
        for i, s in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    name, keys, *rest = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    random.setstate(rng["python"])
