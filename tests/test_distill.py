"""Guidance distillation, stage one: the w-conditioned student (Meng et al. 2023)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffguide.api import Pipeline
from diffguide.checkpoint import save_weights
from diffguide.guidance import guided
from diffguide.models import build_model, export_model, load_model
from diffguide.nets import GuidedStudent
from diffguide.samplers import ddim, unipc
from diffguide.training.config import TrainConfig
from diffguide.training.trainer import train
from test_training import tiny_data  # tests/ is on sys.path (pytest rootdir)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    cfg = TrainConfig(out=str(root / "run"), preset="tiny", batch_size=8, steps=30, lr=3e-3, warmup=2,
                      ckpt_every=30, log_every=10, seed=0, precision="fp32", device="cpu")
    return export_model(train(cfg, data=tiny_data(), progress=False), root / "teacher.safetensors")


def distill_cfg(tmp_path, teacher_file, name="d", **kw):
    base = dict(task="distill", teacher=str(teacher_file), out=str(tmp_path / name), preset="tiny", batch_size=8,
                steps=40, lr=3e-3, warmup=2, ckpt_every=20, log_every=10, seed=1, precision="fp32", device="cpu",
                w_min=0.0, w_max=4.0)
    return TrainConfig(**{**base, **kw})


def lam_grid(steps):
    return torch.cat([torch.linspace(-8.0, 8.0, steps), torch.tensor([math.inf])])


def test_at_initialisation_the_student_is_the_teachers_conditional_prediction(teacher_file):
    teacher = load_model(teacher_file)
    student = GuidedStudent.from_teacher(teacher, (0.0, 4.0)).eval()
    z, lam, c = torch.randn(5, 1, 8, 8), torch.linspace(-5, 5, 5), torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        for w in (0.0, 1.0, 4.0):
            assert torch.equal(student(z, lam, student.condition(c, w)), teacher(z, lam, c))
        torch.nn.init.normal_(student.w_emb.mlp[-1].weight, std=0.1)  # once trained, the w branch is used
        a, b = student(z, lam, student.condition(c, 0.0)), student(z, lam, student.condition(c, 3.0))
    assert (a - b).abs().max() > 1e-3


def test_distillation_learns_the_teachers_guided_prediction(tmp_path, teacher_file):
    run = train(distill_cfg(tmp_path, teacher_file, steps=150), data=tiny_data(), progress=False)
    rows = [r for r in (run / "log.jsonl").read_text().splitlines() if r.strip()]
    import json

    losses = [json.loads(r)["loss"] for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses
    teacher, student = load_model(teacher_file), load_model(run)
    assert isinstance(student, GuidedStudent) and student.w_range == (0.0, 4.0)
    fresh = GuidedStudent.from_teacher(teacher, (0.0, 4.0)).eval()
    g = torch.Generator().manual_seed(123)  # held-out (z, lam, w)
    x, c = tiny_data(seed=7).images[:32], tiny_data(seed=7).labels[:32]
    lam = torch.rand(32, generator=g) * 10 - 5
    w = torch.rand(32, generator=g) * 4
    z = torch.sigmoid(lam).sqrt()[:, None, None, None] * x + torch.sigmoid(-lam).sqrt()[:, None, None, None] * \
        torch.randn(x.shape, generator=g)
    with torch.no_grad():
        e_c, e_u = teacher(z, lam, c), teacher(z, lam, torch.full_like(c, 3))
        target = e_c + w[:, None, None, None] * (e_c - e_u)
        err = lambda net: (net(z, lam, net.condition(c, w)) - target).pow(2).mean().item()  # noqa: E731
        assert err(student) < 0.5 * err(fresh)


def test_a_student_samples_with_one_forward_per_step_and_refuses_cfg_on_top(teacher_file):
    student = GuidedStudent.from_teacher(load_model(teacher_file), (0.0, 4.0)).eval()
    c = torch.tensor([0, 1, 2, 1])
    for sampler in (ddim, unipc):
        model = guided(student, c, 2.0)
        with torch.no_grad():
            sampler(model, torch.randn(4, 1, 8, 8), lam_grid(6))
        assert model.engine.forwards == 6 and model.engine.evaluations == 6
    with pytest.raises(ValueError, match="outside the student's trained range \\[0, 4\\]"):
        guided(student, c, 5.0)
    with pytest.raises(ValueError, match="classifier-free guidance on top of it \\(interval, rule='apg'\\)"):
        guided(student, c, 1.0, rule="apg", interval=(-1.0, 1.0))
    x = Pipeline(student).sample(c, 1.0, sampler="ddim", steps=4)
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()


def test_distillation_resumes_exactly(tmp_path, teacher_file):
    full = train(distill_cfg(tmp_path, teacher_file, "full"), data=tiny_data(), progress=False)

    def crash(step, loss):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(distill_cfg(tmp_path, teacher_file, "part"), data=tiny_data(), progress=False, on_step=crash)
    part = train(distill_cfg(tmp_path, teacher_file, "part"), data=tiny_data(), progress=False, resume=True)
    for (k, a), b in zip(load_model(full).state_dict().items(), load_model(part).state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_bad_distillation_input_is_refused_before_any_work(tmp_path, teacher_file):
    with pytest.raises(ValueError, match="needs a teacher"):
        TrainConfig(task="distill")
    with pytest.raises(ValueError, match=r"the w range \[3, 1\] is invalid"):
        TrainConfig(task="distill", teacher="x", w_min=3, w_max=1)
    with pytest.raises(ValueError, match=r"the w range \[-2, 1\] is invalid"):
        TrainConfig(task="distill", teacher="x", w_min=-2, w_max=1)
    clf_cfg = TrainConfig(task="classifier", out=str(tmp_path / "clf"), preset="tiny", batch_size=8, steps=2,
                          ckpt_every=2, precision="fp32", device="cpu")
    clf = export_model(train(clf_cfg, data=tiny_data(), progress=False), tmp_path / "clf.safetensors")
    with pytest.raises(ValueError, match="is not a class-conditional CFG diffusion model"):
        train(distill_cfg(tmp_path, clf, "bad"), data=tiny_data(), progress=False)
    uncond = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=0)  # no null label to guide from
    save_weights(tmp_path / "uncond.safetensors", uncond,
                 {"kind": "diffusion", "model": dataclasses.asdict(uncond.config), "train": {}})
    with pytest.raises(ValueError, match="is not a class-conditional CFG diffusion model"):
        train(distill_cfg(tmp_path, tmp_path / "uncond.safetensors", "bad"), data=tiny_data(), progress=False)
    assert not (tmp_path / "bad").exists()  # refused before the run directory was made


def test_the_cli_distils_and_samples_a_student(tmp_path, teacher_file, monkeypatch):
    from click.testing import CliRunner

    import diffguide.training.trainer as trainer
    from diffguide.cli import cli

    monkeypatch.setattr(trainer, "load_data", lambda *a, **k: tiny_data())
    run = tmp_path / "student"
    res = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher_file), "--w-range", "0,3", "--out", str(run),
                                   "--preset", "tiny", "--batch-size", "8", "--steps", "2", "--ckpt-every", "2",
                                   "--precision", "fp32", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--w", "0,3", "--labels", "0-2", "--n", "3",
                                   "--steps", "3", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s" / "w3.png").is_file()
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--w", "4", "--labels", "0-2", "--n", "3",
                                   "--steps", "3", "--out", str(tmp_path / "s")])
    assert res.exit_code != 0 and "outside the student's trained range [0, 3]" in str(res.exception)
    res = CliRunner().invoke(cli, ["distill", "--teacher", str(teacher_file), "--w-range", "1", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "expected w_min,w_max" in res.output


def test_the_shipped_student_loads_by_name_and_samples_with_one_forward_per_step():
    import diffguide as dg

    pipe = dg.load("mnist-student")
    assert isinstance(pipe.net, GuidedStudent) and pipe.net.w_range == (0.0, 4.0) and pipe.net.output == "eps"
    assert pipe.net.meta["step"] == 3000 and pipe.classifier is not None
    counter: dict[str, int] = {}
    x = pipe.sample(torch.tensor([1, 8]), 2.0, sampler="ddim", steps=3, counter=counter)
    assert x.shape == (2, 1, 28, 28) and counter == {"forwards": 3, "evaluations": 3 * 2}
    with pytest.raises(ValueError, match="outside the student's trained range"):
        pipe.sample(torch.tensor([1]), 4.5, sampler="ddim", steps=3)
