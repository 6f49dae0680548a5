"""The diffusers adapter: a tiny randomly initialised UNet2DModel (built here, nothing downloaded)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402

import diffguide as dg  # noqa: E402
from diffguide.guidance import guided  # noqa: E402
from diffguide.models import build_model  # noqa: E402
from diffguide.nets.diffusers_adapter import DiffusersUNet, load_diffusers  # noqa: E402
from diffguide.samplers import ddim  # noqa: E402

T = 100


def tiny_unet(num_class_embeds: int | None = 4) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_class_embeds).eval()


def scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.05,
                         prediction_type=prediction_type)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_adapter_feeds_the_unet_its_own_integer_timesteps(prediction_type):
    unet, sch = tiny_unet(), scheduler(prediction_type)
    net = DiffusersUNet(unet, sch.alphas_cumprod, prediction_type=prediction_type)
    assert net.sample_shape == (1, 8, 8) and net.num_classes == 3 and net.null_label == 3
    abar = sch.alphas_cumprod.double()
    t = torch.tensor([0, 1, 17, 50, 98, 99])
    lam = torch.log(abar[t]) - torch.log1p(-abar[t])
    assert torch.equal(net.timestep(lam), t.double())
    z, c = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        out = unet(z, t, class_labels=c).sample
        got = net(z, lam.float(), c)
    a, s = abar[t].sqrt().float()[:, None, None, None], (1 - abar[t]).sqrt().float()[:, None, None, None]
    want = {"epsilon": out, "v_prediction": s * z + a * out, "sample": (z - a * out) / s}[prediction_type]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    # between two timesteps the timestep is interpolated in lam
    mid = (lam[2] + torch.log(abar[18]) - torch.log1p(-abar[18])) / 2
    assert 17 < net.timestep(mid[None]).item() < 18


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_through_diffguide_is_diffusers_own_ddim_loop(prediction_type):
    unet, steps = tiny_unet(), 10
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.05,
                        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                        timestep_spacing="leading")
    ref.set_timesteps(steps)
    c, z = torch.tensor([0, 1, 2, 0]), torch.randn(4, 1, 8, 8)
    x = z.clone()
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(unet(x, t, class_labels=c).sample, t, x, eta=0.0).prev_sample
        net = DiffusersUNet(unet, ref.alphas_cumprod, prediction_type=prediction_type)
        table = net.train_schedule.table
        lams = torch.cat([table[ref.timesteps], torch.tensor([math.inf], dtype=torch.float64)])
        ours = ddim(guided(net, c, 0.0), z, lams)
    assert torch.allclose(ours, x, atol=1e-4, rtol=1e-4), (ours - x).abs().max()


def test_classifier_and_reward_guidance_of_an_adapted_unconditional_model(tmp_path):
    unet, sch = tiny_unet(None), scheduler()
    unet.save_pretrained(tmp_path / "unet")
    sch.save_pretrained(tmp_path / "scheduler")
    pipe = dg.load(tmp_path)
    assert pipe.num_classes == 0 and pipe.sample_shape == (1, 8, 8)
    clf = build_model("classifier", "tiny", channels=1, image_size=8, num_classes=3).eval()
    pipe = dg.Pipeline(pipe.net, classifier=clf)
    labels = torch.arange(6) % 3
    plain = pipe.sample(labels, 0.0, unconditional=True, sampler="ddim", steps=5)
    cg = pipe.sample(labels, 0.0, unconditional=True, cg_scale=5.0, sampler="ddim", steps=5)
    assert cg.shape == (6, 1, 8, 8) and torch.isfinite(cg).all() and not torch.equal(cg, plain)
    ink = dg.RewardGuidance(dg.guidance.ink, scale=0.5, on="x0")
    more = pipe.sample(labels, 0.0, unconditional=True, reward=ink, sampler="unipc", steps=5)
    assert ((more + 1) / 2).sum() > ((pipe.sample(labels, 0.0, unconditional=True, sampler="unipc", steps=5) + 1)
                                     / 2).sum()


def test_loading_refuses_what_it_cannot_read_safely(tmp_path):
    unet = tiny_unet()
    unet.save_pretrained(tmp_path / "pickled" / "unet", safe_serialization=False)
    scheduler().save_pretrained(tmp_path / "pickled" / "scheduler")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_diffusers(tmp_path / "pickled")
    unet.save_pretrained(tmp_path / "nosched" / "unet")
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        load_diffusers(tmp_path / "nosched")
    with pytest.raises(FileNotFoundError, match="diffguide never downloads"):
        dg.load("google/ddpm-cifar10-32")
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        DiffusersUNet(unet, scheduler().alphas_cumprod, prediction_type="flow")


@pytest.mark.parametrize("kind, b0, b1", [("linear", 1e-4, 0.02), ("scaled_linear", 0.00085, 0.012),
                                          ("squaredcos_cap_v2", 1e-4, 0.02)])
def test_a_diffusers_scheduler_config_is_read_as_diffusers_defines_it(kind, b0, b1):
    from diffguide.schedule import diffusers_schedule

    cfg = {"num_train_timesteps": 200, "beta_schedule": kind, "beta_start": b0, "beta_end": b1}
    abar = torch.sigmoid(diffusers_schedule(cfg).table)
    assert torch.allclose(abar, DDPMScheduler(**cfg).alphas_cumprod.double(), atol=2e-6)  # theirs is float32


def test_a_classifier_trains_on_an_adapted_models_schedule_and_shape(tmp_path):
    """ADM's recipe on someone else's model: a noise-aware classifier for its schedule, kept in the export."""
    from diffguide.data import ImageData
    from diffguide.models import export_model, load_model
    from diffguide.training.config import TrainConfig
    from diffguide.training.trainer import train

    sch = scheduler()
    sch.save_pretrained(tmp_path / "model" / "scheduler")
    g = torch.Generator().manual_seed(0)
    data = ImageData(images=torch.rand(32, 1, 8, 8, generator=g) * 2 - 1, labels=torch.arange(32) % 3,
                     num_classes=3, class_names=("a", "b", "c"), name="tiny")
    cfg = TrainConfig(task="classifier", out=str(tmp_path / "clf"), preset="tiny", batch_size=8, steps=3,
                      schedule=str(tmp_path / "model"), precision="fp32", device="cpu", ckpt_every=3, log_every=1)
    run = train(cfg, data=data, progress=False)
    out = export_model(run, tmp_path / "clf.safetensors")
    (tmp_path / "model" / "scheduler" / "scheduler_config.json").unlink()  # the export does not need it any more
    clf = load_model(out)
    want = torch.log(sch.alphas_cumprod.double()) - torch.log1p(-sch.alphas_cumprod.double())
    assert torch.allclose(clf.train_schedule.table, want, atol=1e-3)
    unet = DiffusersUNet(tiny_unet(None), sch.alphas_cumprod)
    x = dg.Pipeline(unet, classifier=clf).sample(torch.arange(3), 0.0, unconditional=True, cg_scale=2.0,
                                                 sampler="ddim", steps=4)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_the_cli_samples_an_adapted_unconditional_model_with_its_classifier(tmp_path):
    from click.testing import CliRunner

    from diffguide.cli import cli
    from diffguide.data import ImageData
    from diffguide.training.config import TrainConfig
    from diffguide.training.trainer import train

    tiny_unet(None).save_pretrained(tmp_path / "model" / "unet")
    scheduler().save_pretrained(tmp_path / "model" / "scheduler")
    data = ImageData(images=torch.rand(16, 1, 8, 8) * 2 - 1, labels=torch.arange(16) % 3, num_classes=3,
                     class_names=("a", "b", "c"), name="tiny")
    run = train(TrainConfig(task="classifier", out=str(tmp_path / "clf"), preset="tiny", batch_size=8, steps=2,
                            schedule=str(tmp_path / "model"), precision="fp32", device="cpu", ckpt_every=2),
                data=data, progress=False)
    base = ["sample", "--checkpoint", str(tmp_path / "model"), "--n", "6", "--steps", "3", "--w", "0"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "a")])  # no classes: one placeholder label
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, [*base, "--classifier", str(run), "--unconditional", "--cg-scale", "2",
                                   "--labels", "0-2", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "b" / "uncond_cg2.png").is_file()


def test_an_embedding_table_without_a_null_row_is_named_and_never_cfg_guided():
    alphas = scheduler().alphas_cumprod
    with pytest.raises(ValueError, match=r"num_class_embeds = K \+ 1 >= 2 .*got 1"):
        DiffusersUNet(tiny_unet(1), alphas)
    with pytest.raises(ValueError, match=r"num_class_embeds = 4 leaves no null row for 4 classes.*null_class=False"):
        DiffusersUNet(tiny_unet(4), alphas, num_classes=4)
    with pytest.raises(ValueError, match=r"num_class_embeds = 4 does not fit 2 classes \(expected 3\)"):
        DiffusersUNet(tiny_unet(4), alphas, num_classes=2)
    assert DiffusersUNet(tiny_unet(4), alphas, num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match=r"num_classes=3 was given, but the UNet is unconditional"):
        DiffusersUNet(tiny_unet(None), alphas, num_classes=3)
    bare = DiffusersUNet(tiny_unet(4), alphas, num_classes=4, null_class=False)
    assert bare.num_classes == 4
    pipe = dg.Pipeline(bare)
    labels = torch.arange(4)
    x = pipe.sample(labels, 0.0, sampler="ddim", steps=3)  # the conditional model needs no null row
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="no null class .*classifier-free guidance needs one"):
        pipe.sample(labels, 1.0, sampler="ddim", steps=3)
