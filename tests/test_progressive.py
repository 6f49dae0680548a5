"""Guidance distillation, stage two: progressive distillation of the w-conditioned student (Meng et al. 2023,
Salimans & Ho 2022)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from diffguide.api import Pipeline
from diffguide.guidance import guided
from diffguide.models import export_model, load_model
from diffguide.nets import GuidedStudent
from diffguide.prediction import x0_from_eps
from diffguide.samplers import ddim
from diffguide.samplers.base import alpha_sigma_f
from diffguide.schedule import get_schedule, sampling_grid
from diffguide.training.config import TrainConfig, halvings
from diffguide.training.losses import two_step_target
from diffguide.training.progressive import distill_progressive, student_file
from diffguide.training.trainer import train
from test_training import tiny_data  # tests/ is on sys.path (pytest rootdir)


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory):
    """A stage-one student of a tiny CFG teacher (both briefly trained on the tiny blobs)."""
    root = tmp_path_factory.mktemp("stage_one")
    common = dict(preset="tiny", batch_size=8, lr=3e-3, warmup=2, log_every=10, precision="fp32", device="cpu")
    teacher = export_model(train(TrainConfig(out=str(root / "t"), steps=60, ckpt_every=60, seed=0, **common),
                                 data=tiny_data(), progress=False), root / "teacher.safetensors")
    cfg = TrainConfig(task="distill", teacher=str(teacher), out=str(root / "s"), steps=40, ckpt_every=40, seed=1,
                      **common)
    return export_model(train(cfg, data=tiny_data(), progress=False), root / "student.safetensors")


def pd_cfg(tmp_path, teacher, name="pd", **kw):
    base = dict(task="progressive", teacher=str(teacher), out=str(tmp_path / name), preset="tiny", batch_size=16,
                steps=12, lr=1e-3, warmup=2, ckpt_every=5, log_every=4, seed=2, precision="fp32", device="cpu",
                from_steps=8, to_steps=2)
    return TrainConfig(**{**base, **kw})


def test_a_v_student_predicts_x0_and_eps_consistently_and_copies_a_v_teacher_exactly(stage_one):
    eps_student = load_model(stage_one)
    v1 = GuidedStudent.from_student(eps_student, 4)
    torch.nn.init.normal_(v1.w_emb.mlp[-1].weight, std=0.1)
    v2 = GuidedStudent.from_student(v1, 2)
    z, lam = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.tensor([-20.0, -3.0, 0.0, 3.0, 12.0])
    c = v1.condition(torch.tensor([0, 1, 2, 0, 1]), torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    with torch.no_grad():
        v1.double()
        eps, x0 = v1(z, lam.double(), c), v1(z, lam.double(), c, predict="x0")
        assert torch.allclose(x0_from_eps(z, eps, lam.double()), x0, atol=1e-9)  # x0 = alpha z - sigma v
        assert torch.equal(v2.double()(z, lam.double(), c), eps)  # a v-teacher's student starts as it
    assert (v1.output, v1.distilled_steps, v2.distilled_steps) == ("v", 4, 2)
    assert load_model(stage_one).output == "eps" and load_model(stage_one).distilled_steps is None


def test_the_target_makes_one_ddim_step_land_where_the_teachers_two_do(stage_one):
    """Salimans & Ho's target, checked against the library's own DDIM sampler taking the teacher's two steps."""
    teacher = load_model(stage_one)
    labels, w = torch.tensor([0, 1, 2, 1]), 2.0
    cond = teacher.condition(labels, w)
    z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for lams in ((-20.0, -3.2, -1.8), (-1.0, 0.5, 2.0), (3.0, 6.0, math.inf)):
        target = two_step_target(teacher, z, torch.tensor([lams] * 4, dtype=torch.float64), cond)
        with torch.no_grad():
            two = ddim(guided(teacher, labels, w), z, list(lams), clip_x0=1.0).double()
        (a, s), (a2, s2) = alpha_sigma_f(lams[0]), alpha_sigma_f(lams[2])
        one = a2 * target + s2 * (z.double() - a * target) / s  # DDIM's step with x0 = target (x0 at +inf)
        assert torch.allclose(one, two, atol=1e-4, rtol=1e-4), (lams, (one - two).abs().max())


def test_a_rounds_student_at_half_the_steps_approaches_its_teacher_at_full_steps(tmp_path, stage_one):
    """Round one (8 -> 4) turns the eps student into a v-student; round two (4 -> 2) starts as its teacher,
    so there the claim is sharp: two student steps land nearer the teacher's four than two teacher steps."""
    cfg = pd_cfg(tmp_path, stage_one, steps=400, lr=5e-3, warmup=10, ckpt_every=400, log_every=10, ema_decay=0.9,
                 from_steps=8, to_steps=2)
    four, two = (load_model(p) for p in distill_progressive(cfg, data=tiny_data(), progress=False,
                                                             say=lambda s: None))
    sched = get_schedule("continuous")
    labels = torch.arange(48) % 3
    w = torch.rand(48, generator=torch.Generator().manual_seed(5)) * 4
    z = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(6))

    def run(net, steps):
        with torch.no_grad():
            return ddim(guided(net, labels, w), z, sampling_grid(sched, steps), clip_x0=1.0)

    goal = run(four, 4)
    err = {"student": (run(two, 2) - goal).pow(2).mean().item(), "teacher": (run(four, 2) - goal).pow(2).mean().item()}
    assert err["student"] < 0.7 * err["teacher"], err
    rows = [r for r in (tmp_path / "pd" / "round-8-to-4" / "log.jsonl").read_text().splitlines()]
    import json

    losses = [json.loads(r)["loss"] for r in rows]
    assert losses[-1] < 0.5 * losses[0], losses  # round one's loss falls too


def test_progressive_distillation_resumes_exactly_within_and_across_rounds(tmp_path, stage_one):
    full = distill_progressive(pd_cfg(tmp_path, stage_one, "full"), data=tiny_data(), progress=False,
                               say=lambda s: None)
    assert [p.name for p in full] == ["student-4.safetensors", "student-2.safetensors"]
    calls = {"n": 0}

    def crash_at(k):
        def on_step(step, loss):
            calls["n"] += 1
            if calls["n"] == k:
                raise KeyboardInterrupt
        return on_step

    # round one at its step 7 (after its checkpoint at 5); resumed, it runs steps 6..12 (calls 1..7), so call
    # 14 is round two's step 7, after its checkpoint at 5: the last run resumes within round two
    for k in (7, 14):
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            distill_progressive(pd_cfg(tmp_path, stage_one, "part"), data=tiny_data(), progress=False,
                                resume=k != 7, on_step=crash_at(k), say=lambda s: None)
    assert student_file(tmp_path / "part", 4).exists() and not student_file(tmp_path / "part", 2).exists()
    assert (tmp_path / "part" / "round-4-to-2" / "ckpt-00000005").is_dir()
    part = distill_progressive(pd_cfg(tmp_path, stage_one, "part"), data=tiny_data(), progress=False, resume=True,
                               say=lambda s: None)
    for a_file, b_file in zip(full, part, strict=True):
        a, b = load_model(a_file).state_dict(), load_model(b_file).state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), (b_file.name, k)


def test_a_progressive_student_samples_in_its_steps_with_one_forward_each(tmp_path, stage_one):
    student = GuidedStudent.from_student(load_model(stage_one), 2).eval()
    counter: dict[str, int] = {}
    pipe = Pipeline(student)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = pipe.sample(torch.tensor([0, 1, 2]), 1.5, sampler="ddim", steps=2, counter=counter)
    assert x.shape == (3, 1, 8, 8) and counter == {"forwards": 2, "evaluations": 2 * 3}  # 2 steps, 1 forward each
    with pytest.warns(UserWarning, match=r"distilled for deterministic DDIM in 2 steps"):
        pipe.sample(torch.tensor([0]), 1.0, sampler="unipc", steps=3)


def test_bad_progressive_input_is_refused_before_any_work(tmp_path, stage_one):
    assert halvings(32, 4) == [(32, 16), (16, 8), (8, 4)]
    for a, b in ((32, 5), (4, 8), (4, 4), (12, 2)):
        with pytest.raises(ValueError, match=f"to_steps = {b} is not reachable by halving from_steps = {a}"):
            TrainConfig(task="progressive", teacher="x", from_steps=a, to_steps=b)
    with pytest.raises(ValueError, match="needs from_steps and to_steps"):
        TrainConfig(task="progressive", teacher="x")
    with pytest.raises(ValueError, match="progressive distillation needs a teacher"):
        TrainConfig(task="progressive", from_steps=8, to_steps=4)
    plain = load_model(stage_one).meta["train"]["teacher"]  # the CFG teacher itself: not a student
    with pytest.raises(ValueError, match="is not a w-conditioned student"):
        distill_progressive(pd_cfg(tmp_path, plain, "bad"), data=tiny_data(), progress=False)
    with pytest.raises(ValueError, match=r"keep the teacher's w range \[0.0, 4.0\], but the config says \[0.0, 2.0\]"):
        distill_progressive(pd_cfg(tmp_path, stage_one, "bad", w_max=2.0), data=tiny_data(), progress=False)
    assert not (tmp_path / "bad").exists()  # refused before the run directory was made


def test_the_cli_distils_progressively_and_refuses_steps_without_progressive(tmp_path, stage_one, monkeypatch):
    from click.testing import CliRunner

    import diffguide.training.trainer as trainer
    from diffguide.cli import cli

    monkeypatch.setattr(trainer, "load_data", lambda *a, **k: tiny_data())
    out = tmp_path / "pd"
    args = ["distill", "--progressive", "--teacher", str(stage_one), "--from-steps", "4", "--to-steps", "1",
            "--out", str(out), "--preset", "tiny", "--batch-size", "8", "--steps", "2", "--ckpt-every", "2",
            "--precision", "fp32", "--device", "cpu", "--no-progress", "--export", str(tmp_path / "s1.safetensors")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert load_model(tmp_path / "s1.safetensors").distilled_steps == 1
    assert (out / "student-2.safetensors").is_file() and (out / "student-1.json").is_file()
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(tmp_path / "s1.safetensors"), "--w", "2",
                                   "--labels", "0-2", "--n", "3", "--sampler", "ddim", "--steps", "1",
                                   "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():  # neither --sampler nor --steps: DDIM at its own step, no warning
        warnings.simplefilter("error")
        res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(tmp_path / "s1.safetensors"), "--w", "2",
                                       "--labels", "0-2", "--n", "3", "--out", str(tmp_path / "own")])
    assert res.exit_code == 0, res.output
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "own" / "w2.npz")["images"]),
                       torch.from_numpy(np.load(tmp_path / "s" / "w2.npz")["images"]))
    res = CliRunner().invoke(cli, ["distill", "--teacher", str(stage_one), "--from-steps", "4", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "options of --progressive" in res.output
    res = CliRunner().invoke(cli, args[:-2] + ["--to-steps", "3"])
    assert res.exit_code != 0 and "not reachable by halving" in str(res.exception)


def test_the_shipped_progressive_students_load_by_name_and_default_to_their_own_ddim_steps():
    import diffguide as dg

    for name, steps in (("mnist-student-8", 8), ("mnist-student-4", 4)):
        pipe = dg.load(name)
        assert isinstance(pipe.net, GuidedStudent) and (pipe.net.output, pipe.net.distilled_steps) == ("v", steps)
        counter: dict[str, int] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the default is what it learnt: no warning
            x = pipe.sample(torch.tensor([2, 5]), 1.0, counter=counter)
        assert x.shape == (2, 1, 28, 28) and counter == {"forwards": steps, "evaluations": 2 * steps}
        assert torch.equal(x, pipe.sample(torch.tensor([2, 5]), 1.0, sampler="ddim", steps=steps))
