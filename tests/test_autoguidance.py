"""Autoguidance (Karras et al. 2024): guide away from a second network under the same condition."""

from __future__ import annotations

import math

import pytest
import torch

from diffguide.api import Pipeline
from diffguide.guidance import guided
from diffguide.models import build_model
from diffguide.nets import Network
from diffguide.samplers import ddim, unipc


def lam_grid(steps: int) -> torch.Tensor:
    return torch.cat([torch.linspace(-8.0, 8.0, steps, dtype=torch.float64),
                      torch.tensor([math.inf], dtype=torch.float64)])


def at_null(net):
    """The same network, always at its null condition: as a guide, autoguidance becomes CFG."""
    return Network(lambda z, lam, c: net(z, lam, net.null_condition(c)), sample_shape=tuple(net.sample_shape),
                   num_classes=int(net.num_classes), schedule=net.train_schedule)


@pytest.mark.parametrize("sampler", [ddim, unipc])
def test_autoguidance_by_the_null_conditioned_network_is_cfg(gmm, sampler):
    c = torch.arange(60) % gmm.num_classes
    z = torch.randn(60, 2, dtype=torch.float64)
    cfg = sampler(guided(gmm, c, 2.5), z, lam_grid(12))
    auto = sampler(guided(gmm, c, 2.5, guide=at_null(gmm)), z, lam_grid(12))
    assert (auto - cfg).abs().max() < 1e-12


def test_two_networks_run_two_batched_forwards_per_step(gmm):
    c = torch.arange(40) % gmm.num_classes
    model = guided(gmm, c, 1.0, guide=at_null(gmm))
    ddim(model, torch.randn(40, 2, dtype=torch.float64), lam_grid(9))
    assert model.engine.forwards == 2 * 9  # one forward per network and step, each over the whole batch
    assert model.engine.evaluations == 2 * 9
    cfg = guided(gmm, c, 1.0)
    ddim(cfg, torch.randn(40, 2, dtype=torch.float64), lam_grid(9))
    assert cfg.engine.forwards == 9  # CFG's pair: one forward


def test_a_guide_that_does_not_match_is_refused(gmm):
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    other_size = build_model("diffusion", "tiny", channels=1, image_size=16, num_classes=3).eval()
    other_classes = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=5).eval()
    with pytest.raises(ValueError, match="the guide makes 1x16x16 samples but the network makes 1x8x8"):
        Pipeline(net, guide=other_size)
    with pytest.raises(ValueError, match="the guide has 5 classes but the network has 3"):
        guided(net, torch.zeros(2, dtype=torch.long), 1.0, guide=other_classes)
    with pytest.raises(ValueError, match="autoguidance .* not with null="):
        guided(net, torch.zeros(2, dtype=torch.long), 1.0, guide=net, null=torch.zeros(2, dtype=torch.long))


def test_a_pipeline_with_a_guide_samples_autoguided():
    torch.manual_seed(0)
    net = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape))
    labels = torch.arange(24) % 3
    cfg = Pipeline(net).sample(labels, 1.5, steps=4, sampler="dpmpp-2m")
    auto = Pipeline(net, guide=at_null(net)).sample(labels, 1.5, steps=4, sampler="dpmpp-2m")
    assert torch.allclose(auto, cfg, atol=1e-5)  # two forwards of 24 rows vs one of 48: float rounding only
    weaker = build_model("diffusion", "tiny", channels=1, image_size=8, num_classes=3).eval()
    other = Pipeline(net, guide=weaker).sample(labels, 1.5, steps=4, sampler="dpmpp-2m")
    assert (other - cfg).abs().max() > 1e-3


def test_the_shipped_mnist_guide_loads_by_name_and_guides_with_one_forward_per_network():
    import diffguide as dg

    pipe = dg.load("mnist", guide="mnist")
    main, guide = (sum(p.numel() for p in m.parameters()) for m in (pipe.net, pipe.guide))
    assert guide < main / 10 and pipe.guide.meta["step"] == 1250  # the tiny preset, 1/4 of the 5000 steps
    counter: dict[str, int] = {}
    labels = torch.tensor([3, 7])
    x = pipe.sample(labels, 1.0, sampler="ddim", steps=3, counter=counter)
    assert counter["forwards"] == 2 * 3  # per step: the main network and the guide, each one batched forward
    assert not torch.equal(x, dg.load("mnist").sample(labels, 1.0, sampler="ddim", steps=3))  # not CFG
