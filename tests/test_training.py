"""Training: label dropout, overfitting one batch, exact resume, time budgets, CLI end to end."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffguide.checkpoint import latest_checkpoint, load_checkpoint
from diffguide.data import ImageData
from diffguide.images import to_uint8
from diffguide.models import build_model, load_model
from diffguide.schedule import ContinuousSchedule
from diffguide.training.config import TrainConfig, load_config, parse_duration
from diffguide.training.losses import DiffusionLoss, drop_labels, noise_quartile
from diffguide.training.trainer import TrainingDiverged, lr_at, train


def tiny_data(n=64, size=8, seed=0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    # class-dependent blobs so that the label matters
    x = torch.rand(n, 1, size, size, generator=g) * 0.2 - 1
    for k in range(3):
        x[labels == k, :, k * 2:k * 2 + 3, 2:6] = 0.8
    return ImageData(images=x, labels=labels, num_classes=3, class_names=("a", "b", "c"), name="tiny")


def test_label_drop_rate_is_p_uncond():
    n, p = 200_000, 0.1
    c = torch.randint(0, 10, (n,))
    out = drop_labels(c, p, 10, torch.Generator().manual_seed(0))
    rate = (out == 10).double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n), rate
    kept = out != 10
    assert torch.equal(out[kept], c[kept])  # kept labels are untouched
    assert torch.equal(drop_labels(c, 0.0, 10, torch.Generator()), c)


def test_noise_quartiles_are_equally_likely():
    s = ContinuousSchedule()
    q = noise_quartile(s, s.sample_lam(40_000, generator=torch.Generator().manual_seed(1)))
    frac = torch.bincount(q, minlength=4).double() / q.numel()
    assert (frac - 0.25).abs().max() < 4 * math.sqrt(0.25 * 0.75 / q.numel()), frac


def test_tiny_overfits_one_batch():
    torch.manual_seed(0)
    data = tiny_data(n=16)
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3)
    loss_fn = DiffusionLoss(ContinuousSchedule(lam_min=-4, lam_max=4), p_uncond=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        # the same batch and the same noise every step: memorisable
        loss, _ = loss_fn(net, data.images, data.labels, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def _cfg(tmp_path, name, **kw):
    base = dict(out=str(tmp_path / name), preset="tiny", batch_size=8, steps=12, lr=2e-3, warmup=3,
                ckpt_every=6, log_every=4, seed=3, precision="fp32", device="cpu")
    return TrainConfig(**{**base, **kw})


def test_resume_equals_uninterrupted(tmp_path):
    data = tiny_data()
    full = train(_cfg(tmp_path, "full"), data=data, progress=False)

    def crash(step, loss):
        if step == 8:  # after the step-6 checkpoint: steps 7-8 are lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "part"), data=data, progress=False, on_step=crash)
    assert latest_checkpoint(tmp_path / "part").name == "ckpt-00000006"
    resumed = train(_cfg(tmp_path, "part"), data=data, progress=False, resume=True)
    sa = load_checkpoint(latest_checkpoint(full))
    sb = load_checkpoint(latest_checkpoint(resumed))
    assert sa["step"] == sb["step"] == 12
    na, nb = load_model(full, ema=False), load_model(resumed, ema=False)
    for (k, va), vb in zip(na.state_dict().items(), nb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    ea, eb = load_model(full), load_model(resumed)
    for (k, va), vb in zip(ea.state_dict().items(), eb.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_refuses_changed_config_and_fresh_run_refuses_existing(tmp_path):
    data = tiny_data()
    train(_cfg(tmp_path, "r", steps=6), data=data, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(_cfg(tmp_path, "r", lr=1e-2), data=data, progress=False, resume=True)
    with pytest.raises(ValueError, match="cannot resume: the config differs .* preset"):  # not "damaged"
        train(_cfg(tmp_path, "r", preset="small"), data=data, progress=False, resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_cfg(tmp_path, "r"), data=data, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(_cfg(tmp_path, "empty"), data=data, progress=False, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = tiny_data()

    def poison(step, loss):
        if step == 7:  # after step 7 completes, corrupt the weights: step 8's loss is NaN
            with torch.no_grad():
                for p in net_ref[0].parameters():
                    p.fill_(float("nan"))

    net_ref = []
    import diffguide.training.trainer as T
    orig = T.build_model

    def capture(*a, **k):
        net_ref.append(orig(*a, **k))
        return net_ref[-1]

    T.build_model = capture
    try:
        with pytest.raises(TrainingDiverged, match="at step 7.*ckpt-00000006"):
            train(_cfg(tmp_path, "nan"), data=data, progress=False, on_step=poison)
    finally:
        T.build_model = orig
    ck = latest_checkpoint(tmp_path / "nan")
    assert ck.name == "ckpt-00000006"
    assert all(torch.isfinite(v).all() for v in load_model(ck).state_dict().values())


def test_time_budget_parsing_and_lr_schedule():
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400
    for bad in ("3x", "m30", "", "1h 30m"):
        with pytest.raises(ValueError, match="cannot read the duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="too short"):
        load_config(time_budget="2s")
    cfg = TrainConfig(lr=1.0, warmup=10, lr_decay="cosine")
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 100, 0.5) == pytest.approx(0.5)
    assert lr_at(cfg, 100, 1.0) == pytest.approx(0.01)  # floor


def test_time_budget_stops_and_saves(tmp_path):
    data = tiny_data()
    cfg = _cfg(tmp_path, "budget", steps=None, time_budget=10.0, ckpt_every=10_000)
    run = train(cfg, data=data, progress=False)
    state = load_checkpoint(latest_checkpoint(run))
    assert state["step"] > 0 and state["extra"]["elapsed_s"] >= 10.0


def test_config_file_and_errors(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "tiny"\nbatch_size = 4\n[net]\nemb_dim = 16\n')
    cfg = load_config(f, steps=5)
    assert cfg.preset == "tiny" and cfg.batch_size == 4 and cfg.net == {"emb_dim": 16} and cfg.steps == 5
    f.write_text("batch_sise = 4\n")
    with pytest.raises(ValueError, match=r"unknown config keys \['batch_sise'\]"):
        load_config(f)
    f.write_text("batch_size = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ValueError, match="batch_size = 0 is invalid"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="p_uncond = 1.5 is invalid"):
        TrainConfig(p_uncond=1.5)


def test_classifier_training_logs_quartile_accuracy(tmp_path):
    data = tiny_data()
    run = train(_cfg(tmp_path, "clf", task="classifier", steps=8), data=data, progress=False)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {"acc_q0", "acc_q1", "acc_q2", "acc_q3"} <= set(rows[-1])
    assert load_model(run).meta["kind"] == "classifier"


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "diffguide.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_cli_train_and_sample_end_to_end(tmp_path):
    data = tiny_data(n=32, size=8)
    import numpy as np
    np.savez(tmp_path / "d.npz", images=to_uint8(data.images)[..., 0], labels=data.labels.numpy())
    r = _cli("train", "--data", "d.npz", "--preset", "tiny", "--steps", "4", "--batch-size", "8",
             "--log-every", "3", "--out", "run", "--no-progress", "--export", "tiny.safetensors", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tiny.safetensors").exists()
    card = json.loads((tmp_path / "tiny.json").read_text())  # the final step, not the last log row's (3)
    assert card["steps"] == 4 and card["config"]["steps"] == 4 and "tiny.safetensors" in card["command"]
    r = _cli("sample", "--checkpoint", "tiny.safetensors", "--w", "0,2", "--labels", "0-2", "--n", "6",
             "--steps", "3", "--out", "s", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for tag in ("w0", "w2"):
        with np.load(tmp_path / "s" / f"{tag}.npz") as f:
            assert f["images"].shape == (6, 8, 8, 1) and f["labels"].tolist() == [0, 0, 1, 1, 2, 2]
        assert (tmp_path / "s" / f"{tag}.png").stat().st_size > 0
    # errors are one clear line, exit code 2, no traceback
    r = _cli("sample", "--checkpoint", "tiny.safetensors", "--w", "nan", "--labels", "0-2", "--n", "3",
             cwd=tmp_path)
    assert r.returncode == 2 and "w = nan is invalid" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--time-budget", "3x", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read the duration '3x'" in r.stderr
    r = _cli("sample", "--checkpoint", "missing.safetensors", cwd=tmp_path)
    assert r.returncode == 2 and "missing.safetensors" in r.stderr
    r = _cli("train", "--data", "nope/", "--steps", "1", "--out", "x", cwd=tmp_path)
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_exported_weights_round_trip_bit_exact(tmp_path):
    data = tiny_data()
    run = train(_cfg(tmp_path, "exp", steps=3), data=data, progress=False)
    from diffguide.models import export_model
    f = export_model(run, tmp_path / "m.safetensors", card={"note": "x"})
    a, b = load_model(run), load_model(f)
    assert b.meta["note"] == "x" and b.meta["kind"] == "diffusion"
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert Path(f).stat().st_size > 0


def test_classifier_guidance_rejects_mismatched_networks():
    from diffguide.api import sample_images
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    wrong_size = build_model("classifier", "tiny", channels=1, image_size=16, num_classes=3).eval()
    wrong_classes = build_model("classifier", "tiny", channels=1, image_size=8, num_classes=5).eval()
    with pytest.raises(ValueError, match="classifier expects 1x16x16 samples but the model makes 1x8x8"):
        sample_images(net, [0, 1], classifier=wrong_size, cg_scale=1.0, steps=2)
    with pytest.raises(ValueError, match="classifier has 5 classes but the network has 3"):
        sample_images(net, [0, 1], classifier=wrong_classes, cg_scale=1.0, steps=2)
    ok = build_model("classifier", "tiny", channels=1, image_size=8, num_classes=3).eval()
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="cg_scale = .* is invalid"):
            sample_images(net, [0, 1], classifier=ok, cg_scale=bad, steps=2)
    with pytest.raises(ValueError, match=r"mean-shift form of classifier guidance needs a sampler that takes it"):
        sample_images(net, [0, 1], classifier=ok, cg_scale=1.0, cg_form="mean", sampler="ddim", steps=2)
    x = sample_images(net, [0, 1, 2], classifier=ok, cg_scale=2.0, sampler="ddpm", steps=3)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
    data = tiny_data()
    full = train(_cfg(tmp_path, "full", steps=18), data=data, progress=False)
    def crash(step, loss):
        if step == 13:  # just after the step-12 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "hurt", steps=18), data=data, progress=False, on_step=crash)
    run = tmp_path / "hurt"
    newest = latest_checkpoint(run)
    assert newest.name == "ckpt-00000012"
    victim = max(newest.glob("*.safetensors"), key=lambda f: f.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a truncated write
    resumed = train(_cfg(tmp_path, "hurt", steps=18), data=data, progress=False, resume=True)
    err = capsys.readouterr().err
    assert "ckpt-00000012 is damaged" in err and "resuming from ckpt-00000006 instead, 6 steps lost" in err
    for (k, va), vb in zip(load_model(full).state_dict().items(), load_model(resumed).state_dict().values(),
                           strict=True):
        assert torch.equal(va, vb), k  # the redone steps are the same steps: the result is the uninterrupted one
    for ck in (run / "ckpt-00000012", run / "ckpt-00000018", run / "ckpt-00000006"):
        if ck.exists():
            for f in ck.glob("*.safetensors"):
                f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"no intact checkpoint in .*\n  ckpt-00000018: .*corrupt"):
        train(_cfg(tmp_path, "hurt", steps=24), data=data, progress=False, resume=True)
