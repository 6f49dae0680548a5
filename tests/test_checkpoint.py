"""Checkpoints (safetensors + JSON, atomic) and the EMA: round trips and closed forms."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffguide import checkpoint as ckpt
from diffguide.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    read_config,
    save_checkpoint,
    save_weights,
)
from diffguide.ema import EMA

CONFIG = {"model": {"channels": [8, 16], "dropout": 0.1}, "lr": 1e-3, "name": "tiny"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # tiny ops: threads only add contention on a busy machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(8, 1, 4, 4, generator=g), torch.randn(8, 3, generator=g)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, ema: EMA | None = None,
          sched: torch.optim.lr_scheduler.LRScheduler | None = None) -> None:
    for i in steps:
        x, y = batch(i)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
        if ema is not None:
            ema.update(model)


def assert_same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def optimizers() -> list[dict]:
    kinds = [{}, {"foreach": True}, {"foreach": False}]
    try:
        torch.optim.AdamW(nn.Linear(1, 1).parameters(), fused=True)
        kinds.append({"fused": True})
    except (RuntimeError, ValueError, TypeError):
        pass
    return kinds


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", optimizers(), ids=lambda k: ",".join(k) or "default")
def test_resume_is_bit_identical(tmp_path: Path, kind: dict) -> None:
    def make() -> tuple[nn.Module, torch.optim.Optimizer, EMA, torch.optim.lr_scheduler.LRScheduler]:
        model = tiny_net()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1, **kind)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        return model, opt, EMA(model, decay=0.9), sched

    model, opt, ema, sched = make()
    train(model, opt, range(3), ema, sched)
    path = save_checkpoint(tmp_path, 3, model=model, ema=ema, optimizer=opt, scheduler=sched, config=CONFIG)
    assert path == tmp_path / "ckpt-00000003"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"])

    model2, opt2, ema2, sched2 = make()
    train(model2, opt2, range(10, 11))  # perturb: loading must overwrite everything
    state = load_checkpoint(path, model=model2, ema=ema2, optimizer=opt2, scheduler=sched2)
    assert state["step"] == 3 and state["config"] == CONFIG
    assert_same(model, model2)
    assert_same(ema.module, ema2.module)
    assert ema2.num_updates == ema.num_updates == 3
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    assert sched2.state_dict() == sched.state_dict()

    train(model, opt, range(3, 7), ema, sched)
    train(model2, opt2, range(3, 7), ema2, sched2)
    assert_same(model, model2)
    assert_same(ema.module, ema2.module)


def test_optimizer_state_codec_exact() -> None:
    """Odd state (old torch's float ``step``, tuples, int keys, inf) survives the JSON codec."""
    sd = {"state": {0: {"step": 7.0, "exp_avg": torch.arange(3.0)}, 2: {"step": torch.tensor(2.0)}},
          "param_groups": [{"params": [0, 2], "betas": (0.9, 0.999), "lr": torch.tensor(0.1),
                            "max_norm": math.inf, "fused": None, "foreach": True}]}
    tensors: dict[str, torch.Tensor] = {}
    text = json.dumps(ckpt._encode(sd, tensors, ""))
    assert set(tensors) == {"state.0.exp_avg", "state.2.step", "param_groups.0.lr"}
    back = ckpt._decode(json.loads(text), tensors, Path("x"))
    assert back["state"][0]["step"] == 7.0 and isinstance(back["state"][0]["step"], float)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["param_groups"][0]["max_norm"] == math.inf
    assert list(back["state"]) == [0, 2]
    inline = ckpt._decode(json.loads(json.dumps(ckpt._encode(sd, None, "s"))), None, Path("x"))
    assert torch.equal(inline["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])
    with pytest.raises(TypeError, match="no pickle"):
        ckpt._encode({"f": object()}, None, "s")


def test_rng_restored(tmp_path: Path) -> None:  # the legacy global numpy RNG is the point here
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    torch.randn(5)  # move the generators somewhere non-trivial
    path = save_checkpoint(tmp_path, 0, model=tiny_net(), config={})
    expected = (torch.randn(4), np.random.standard_normal(4), np.random.standard_normal(), random.random())  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    load_checkpoint(path, restore_rng=True)
    got = (torch.randn(4), np.random.standard_normal(4), np.random.standard_normal(), random.random())  # noqa: NPY002
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2] and got[3] == expected[3]


def test_config_extra_and_read_config(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 5, model=tiny_net(), config=CONFIG, extra={"card": {"license": "MIT"}})
    assert read_config(path) == CONFIG
    assert load_checkpoint(path)["extra"] == {"card": {"license": "MIT"}}
    with pytest.raises(TypeError, match="config must be JSON"):
        save_checkpoint(tmp_path, 6, model=tiny_net(), config={"p": Path("x")})
    assert latest_checkpoint(tmp_path) == path  # the refused save wrote nothing


# ---------------------------------------------------------------- layout, atomicity, retention


def test_keep_last_n_and_latest(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "nope") is None
    assert latest_checkpoint(tmp_path) is None
    model = tiny_net()
    for step in (1, 2, 3, 10, 200):
        save_checkpoint(tmp_path, step, model=model, config={}, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000010", "ckpt-00000200"]
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000200"
    save_checkpoint(tmp_path, 200, model=model, config={"again": True}, keep=2)  # same step: replaced
    assert read_config(latest_checkpoint(tmp_path)) == {"again": True}
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000010", "ckpt-00000200"]


@pytest.mark.parametrize("where", ["replace", "writer"])
def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    model = tiny_net()
    opt = torch.optim.AdamW(model.parameters())
    train(model, opt, range(1))
    first = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, config={}, keep=1)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    if where == "replace":
        monkeypatch.setattr(ckpt.os, "replace", boom)
    else:  # the model file is written, then the optimizer file fails
        real = ckpt._write_safetensors
        monkeypatch.setattr(ckpt, "_write_safetensors",
                            lambda f, t, h=None: boom() if f.name == "optimizer.safetensors" else real(f, t, h))
    with pytest.raises(OSError, match="disk on fire"):
        save_checkpoint(tmp_path, 2, model=model, optimizer=opt, config={}, keep=1)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == first
    assert os.listdir(tmp_path) == ["ckpt-00000001"]
    load_checkpoint(first, model=tiny_net(), optimizer=torch.optim.AdamW(tiny_net().parameters()))


def test_leftover_partial_directory_is_ignored_and_cleaned(tmp_path: Path) -> None:
    """A hard kill (no cleanup) leaves a hidden temp dir: never picked, removed on the next save."""
    first = save_checkpoint(tmp_path, 1, model=tiny_net(), config={})
    (tmp_path / ".ckpt-00000002.tmp-dead").mkdir()
    (tmp_path / ".ckpt-00000002.tmp-dead" / "model.safetensors").write_bytes(b"half")
    (tmp_path / "ckpt-00000003").mkdir()  # e.g. a manual copy that never finished: no state.json
    assert latest_checkpoint(tmp_path) == first
    save_checkpoint(tmp_path, 4, model=tiny_net(), config={})
    assert not (tmp_path / ".ckpt-00000002.tmp-dead").exists()


# ---------------------------------------------------------------- errors


def test_bad_paths_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        load_checkpoint(tmp_path / "missing-dir")
    with pytest.raises(ValueError, match=r"missing state\.json; it holds checkpoints"):
        save_checkpoint(tmp_path, 1, model=tiny_net(), config={})
        load_checkpoint(tmp_path)
    path = tmp_path / "ckpt-00000001"
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt"):
        load_checkpoint(path, model=tiny_net())
    (path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"incomplete checkpoint, missing model\.safetensors"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"state\.json: corrupt"):
        read_config(path)
    with pytest.raises(ValueError, match="no optimizer state"):
        p = save_checkpoint(tmp_path, 2, model=tiny_net(), config={})
        load_checkpoint(p, optimizer=torch.optim.SGD(tiny_net().parameters(), lr=0.1))
    with pytest.raises(FileNotFoundError, match=r"w\.safetensors"):
        load_weights(tmp_path / "w.safetensors")


def test_mismatched_model_lists_keys_and_shapes(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 1, model=tiny_net(), config={})
    other = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 5), nn.Linear(5, 2))
    with pytest.raises(ValueError) as info:
        load_checkpoint(path, model=other)
    msg = str(info.value)
    assert "missing keys (2): 5.bias, 5.weight" in msg
    assert "shape mismatches (2): 4.weight (file (3, 64), model (5, 64)), 4.bias (file (3,), model (5,))" in msg
    assert "unexpected" not in msg
    opt = torch.optim.AdamW(tiny_net().parameters())
    train(tiny_net(), opt, range(1))
    p2 = save_checkpoint(tmp_path, 2, model=tiny_net(), optimizer=opt, config={})
    with pytest.raises(ValueError, match="optimizer state does not fit"):
        load_checkpoint(p2, optimizer=torch.optim.AdamW(nn.Linear(2, 2).parameters()))


# ---------------------------------------------------------------- single-file weights


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.emb.weight  # tied: one storage, two keys
        self.register_buffer("t", torch.arange(12.0).reshape(3, 4).t())  # non-contiguous


def test_weights_file_round_trip(tmp_path: Path) -> None:
    model = Tied()
    meta = {"config": {"K": 10, "channels": [32, 64]}, "card": {"dataset": "mnist"}}
    f = save_weights(tmp_path / "net.safetensors", model, meta)
    assert os.listdir(tmp_path) == ["net.safetensors"]
    sd, meta2 = load_weights(f)
    assert meta2 == meta
    assert sd.keys() == model.state_dict().keys() and torch.equal(sd["t"], model.t)
    fresh = Tied()
    fresh.emb.weight.data.zero_()
    load_weights(f, fresh)
    assert_same(model, fresh)
    assert fresh.out.weight is fresh.emb.weight
    (tmp_path / "bad.safetensors").write_bytes(b"garbage" * 3)
    with pytest.raises(ValueError, match=r"bad\.safetensors: corrupt"):
        load_weights(tmp_path / "bad.safetensors")


# ---------------------------------------------------------------- EMA


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_closed_form(warmup: bool) -> None:
    """Live weights held at ``p``: ``shadow_n = p + (shadow_0 - p) * prod_{k<n} d_k``."""
    model = tiny_net().double()
    s0 = {k: v.clone() for k, v in model.state_dict().items()}
    ema, d = EMA(model, decay=0.9, warmup=warmup), 0.9
    assert all(v.dtype == torch.float32 for v in ema.module.state_dict().values())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    ds = [min(d, (1 + k) / (10 + k)) if warmup else d for k in range(100)]
    if warmup:  # d_k = (1 + k) / (10 + k) until it reaches decay (k = 80)
        assert ds[:3] == [pytest.approx(0.1), pytest.approx(2 / 11), pytest.approx(0.25)]
        assert ds[79] < d and ds[80] == d
    factor = 1.0
    for k in range(100):
        assert ema.current_decay() == pytest.approx(ds[k])
        ema.update(model)
        factor *= ds[k]
        if k in (0, 2, 10, 99):
            for name, v in ema.module.state_dict().items():
                torch.testing.assert_close(v.double(), 0.5 + (s0[name] - 0.5) * factor, rtol=0, atol=1e-6)
    assert ema.num_updates == 100


def test_ema_tied_weights_updated_once_and_copy_to() -> None:
    model = Tied()
    w0 = model.emb.weight.detach().clone()
    ema = EMA(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.emb.weight.zero_()
    ema.update(model)
    torch.testing.assert_close(ema.module.emb.weight, 0.5 * w0)  # not 0.25: one update per tensor
    ema.copy_to(model)
    assert torch.equal(model.out.weight, ema.module.emb.weight)
    assert ema.averaged_model() is ema.module and not ema.module.training


def test_ema_state_dict_round_trip() -> None:
    model = tiny_net()
    ema = EMA(model, decay=0.99)
    for _ in range(3):
        ema.update(tiny_net(seed=len(str(ema.num_updates))))
    other = EMA(tiny_net(seed=5), decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.warmup, other.num_updates) == (0.99, True, 3)
    assert_same(ema.module, other.module)
    with pytest.raises(ValueError, match="does not match the EMA"):
        ema.update(nn.Linear(2, 2))


class Compiled(nn.Module):
    """Stand-in for ``torch.compile``'s ``OptimizedModule`` (same ``_orig_mod`` layout; importing
    dynamo takes seconds)."""

    def __init__(self, mod: nn.Module) -> None:
        super().__init__()
        self._orig_mod = mod


def test_wrappers_unwrapped_and_integer_buffers(tmp_path: Path) -> None:
    """DataParallel / compile wrappers are removed: keys never carry ``module.``/``_orig_mod.``;
    integer buffers (BatchNorm's ``num_batches_tracked``) are copied by the EMA, not averaged."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(nn.DataParallel(model), decay=0.9)
    model(torch.randn(8, 3))  # train-mode forward: running stats move, num_batches_tracked = 1
    ema.update(Compiled(model))
    assert int(ema.module[1].num_batches_tracked) == 1
    path = save_checkpoint(tmp_path, 1, model=nn.DataParallel(model), ema=ema, config={})
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    load_checkpoint(path, model=Compiled(fresh))
    assert_same(model, fresh)
    _, _ = load_weights(save_weights(tmp_path / "w.safetensors", Compiled(model)), fresh)
