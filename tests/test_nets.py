"""Networks: the (z, lam, c) contract, presets, shape errors, and the properties guidance relies on."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from diffguide.nets import (
    ClassifierConfig,
    NoiseClassifier,
    UNet,
    UNetConfig,
    classifier_config,
    unet_config,
)

K = 10


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomize_(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers random weights, so that every input can reach the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return m.eval()


def inputs(B: int, C: int, S: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, C, S, S, generator=g)
    lam = torch.empty(B).uniform_(-20, 20, generator=g)
    return z, lam, torch.randint(0, K + 1, (B,), generator=g)


@pytest.fixture(scope="module")
def tiny() -> UNet:
    torch.manual_seed(0)
    return randomize_(UNet(unet_config("tiny", in_channels=1, image_size=28, num_classes=K)))


@pytest.fixture(scope="module")
def tiny_clf() -> NoiseClassifier:
    torch.manual_seed(0)
    return randomize_(NoiseClassifier(classifier_config("tiny", in_channels=3, image_size=15, num_classes=K)))


# --- presets and configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, lo, hi", [("tiny", 1, 100_000), ("small", 1_000_000, 3_000_000),
                                            ("base", 10_000_000, 100_000_000)])
@pytest.mark.parametrize("C, S", [(1, 28), (3, 32)])
def test_preset_shapes_and_sizes(preset: str, lo: int, hi: int, C: int, S: int) -> None:
    torch.manual_seed(0)
    net = UNet(unet_config(preset, in_channels=C, image_size=S, num_classes=K))
    clf = NoiseClassifier(classifier_config(preset, in_channels=C, image_size=S, num_classes=K))
    assert lo <= n_params(net) <= hi
    assert n_params(clf) < n_params(net)
    B = 1 if preset == "base" else 2
    z, lam, c = inputs(B, C, S)
    with torch.no_grad():
        eps = net(z, lam, c)
        logits = clf(z, lam)
    assert eps.shape == z.shape and eps.dtype == z.dtype
    assert logits.shape == (B, K) and torch.isfinite(logits).all()
    assert (net.num_classes, net.null_label, clf.num_classes) == (K, K, K)


@pytest.mark.parametrize("S", [7, 15, 28, 33])
def test_sizes_not_divisible_by_2_to_the_levels(S: int) -> None:
    cfg = unet_config("tiny", in_channels=2, image_size=S, num_classes=K, channels=(8, 16, 16, 16))
    net = randomize_(UNet(cfg))
    z, lam, c = inputs(2, 2, S)
    assert net(z, lam, c).shape == z.shape


def test_zero_initialised_output_and_null_row() -> None:
    net = UNet(unet_config("tiny", in_channels=1, image_size=28, num_classes=K))
    z, lam, c = inputs(3, 1, 28)
    assert torch.equal(net(z, lam, c), torch.zeros_like(z))
    assert net.label_emb.num_embeddings == K + 1  # row K is the null label
    assert net(z, lam, torch.full((3,), net.null_label)).shape == z.shape


def test_every_parameter_is_used() -> None:
    # Unused parameters break DistributedDataParallel; at init some gradients are zero (zero-init
    # branches), but none may be missing.
    for net, args in ((UNet(unet_config("tiny", in_channels=1, image_size=28, num_classes=K)), inputs(2, 1, 28)),
                      (NoiseClassifier(classifier_config("tiny", in_channels=1, image_size=28, num_classes=K)),
                       inputs(2, 1, 28)[:2])):
        net(*args).square().sum().backward()
        assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_config_json_round_trip_and_defaults() -> None:
    cfg = unet_config("small", in_channels=1, image_size=28, num_classes=K)
    back = UNetConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and isinstance(back.channels, tuple)
    bare = UNetConfig(in_channels=1, image_size=28, num_classes=K, channels=(8, 16, 32))
    assert bare.attn_levels == (2,)  # attention at the lowest resolution by default
    assert unet_config("tiny", in_channels=1, image_size=28, num_classes=K, dropout=0.2).dropout == 0.2
    assert isinstance(classifier_config("small", in_channels=1, image_size=28, num_classes=K), ClassifierConfig)


@pytest.mark.parametrize("make, kwargs, match", [
    (unet_config, dict(preset="huge"), r"'huge'.*tiny"),
    (classifier_config, dict(preset="huge"), r"'huge'.*small"),
    (unet_config, dict(preset="tiny", width=3), r"width.*valid fields.*channels"),
    (unet_config, dict(preset="tiny", channels=(8, 10)), r"channels.*groups"),
    (unet_config, dict(preset="tiny", channels=()), r"channels"),
    (unet_config, dict(preset="tiny", attn_levels=(5,)), r"attn_levels.*\[0, 1\]"),
    (unet_config, dict(preset="tiny", dropout=1.5), r"dropout"),
    (unet_config, dict(preset="tiny", heads=3), r"heads"),
    (unet_config, dict(preset="tiny", blocks_per_level=0), r"blocks_per_level"),
    (unet_config, dict(preset="tiny", image_size=0), r"image_size"),
    (classifier_config, dict(preset="tiny", num_classes=0), r"num_classes"),
])
def test_bad_configs_raise(make, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    base = dict(in_channels=1, image_size=28, num_classes=K)
    with pytest.raises(ValueError, match=match):
        make(**{**base, **kwargs})


# --- the forward contract ------------------------------------------------------------------------------


def test_output_depends_on_label_and_lam(tiny: UNet) -> None:
    z, lam, _ = inputs(1, 1, 28)
    with torch.no_grad():
        outs = [tiny(z, lam, torch.tensor([k])) for k in (0, 1, K)]
        assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
        assert not torch.allclose(tiny(z, lam + 1.0, torch.tensor([0])), outs[0])


def test_lam_embedding_is_finite_and_smooth(tiny: UNet) -> None:
    z = torch.randn(1, 1, 28, 28).expand(5, -1, -1, -1)
    c = torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        eps = tiny(z, torch.tensor([-math.inf, -30.0, 20.0, 30.0, math.inf]), c)
        assert torch.isfinite(eps).all()
        assert torch.equal(eps[0], eps[1]) and torch.equal(eps[3], eps[4])  # clamped at +-30
        lam = torch.linspace(-20, 20, 401)  # steps of 0.1
        eps = tiny(z[:1].expand(401, -1, -1, -1), lam, torch.zeros(401, dtype=torch.long))
    step = (eps[1:] - eps[:-1]).flatten(1).norm(dim=1)
    assert step.max() < 0.1 * eps.flatten(1).norm(dim=1).mean()


def test_batch_independence(tiny: UNet, tiny_clf: NoiseClassifier) -> None:
    z, lam, c = inputs(4, 1, 28)
    z2, lam2, c2 = inputs(4, 1, 28, seed=1)
    z2[0], lam2[0], c2[0] = z[0], lam[0], c[0]
    with torch.no_grad():
        torch.testing.assert_close(tiny(z, lam, c)[0], tiny(z2, lam2, c2)[0])
        torch.testing.assert_close(tiny(z[:1], lam[:1], c[:1])[0], tiny(z, lam, c)[0])
        zc, lc, _ = inputs(3, 3, 15)
        torch.testing.assert_close(tiny_clf(zc[:1], lc[:1])[0], tiny_clf(zc, lc)[0])


def test_classifier_gradient_reaches_z(tiny_clf: NoiseClassifier) -> None:
    z, lam, c = inputs(3, 3, 15)
    c = c.clamp(max=K - 1)
    z.requires_grad_(True)
    logp = torch.log_softmax(tiny_clf(z, lam), dim=1)
    (grad,) = torch.autograd.grad(logp[torch.arange(3), c].sum(), z)
    assert grad.shape == z.shape and torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("args, match", [
    (lambda z, lam, c: (z[:, :, :27], lam, c), r"z must have shape \(B, 1, 28, 28\).*\(2, 1, 27, 28\)"),
    (lambda z, lam, c: (z.repeat(1, 3, 1, 1), lam, c), r"z must have shape \(B, 1, 28, 28\)"),
    (lambda z, lam, c: (z[0], lam, c), r"z must have shape"),
    (lambda z, lam, c: (z, lam[:1], c), r"lam must have shape \(B,\) = \(2,\).*\(1,\)"),
    (lambda z, lam, c: (z, lam[:, None], c), r"lam must have shape"),
    (lambda z, lam, c: (z, lam[0], c), r"lam must have shape"),
    (lambda z, lam, c: (z, lam.long(), c), r"lam must be a floating"),
    (lambda z, lam, c: (z, lam, c[:1]), r"c must have shape \(B,\) = \(2,\)"),
    (lambda z, lam, c: (z, lam, c.float()), r"c must be an integer"),
])
def test_wrong_shapes_raise(tiny: UNet, tiny_clf: NoiseClassifier, args, match) -> None:  # type: ignore[no-untyped-def]
    z, lam, c = inputs(2, 1, 28)
    with pytest.raises(ValueError, match="UNet: " + match):
        tiny(*args(z, lam, c))
    if "c " not in match:
        zc, lc, _ = inputs(2, 3, 15)
        zc = torch.nn.functional.interpolate(zc, size=28)[:, :1]
        clf = NoiseClassifier(classifier_config("tiny", in_channels=1, image_size=28, num_classes=K))
        with pytest.raises(ValueError, match="NoiseClassifier: " + match):
            clf(*args(zc, lc, None)[:2])


def test_channels_last_and_autocast(tiny: UNet, tiny_clf: NoiseClassifier) -> None:
    z, lam, c = inputs(2, 1, 28)
    with torch.no_grad():
        ref = tiny(z, lam, c)
        net_cl = UNet(tiny.config).eval().to(memory_format=torch.channels_last)
        net_cl.load_state_dict(tiny.state_dict())
        torch.testing.assert_close(net_cl(z.contiguous(memory_format=torch.channels_last), lam, c), ref,
                                   rtol=1e-4, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = tiny(z, lam, c)
            logits = tiny_clf(torch.randn(2, 3, 15, 15), lam)
    assert low.dtype == z.dtype and logits.dtype == torch.float32
    assert (low - ref).norm() < 0.1 * ref.norm()


def test_unconditional_model() -> None:
    net = randomize_(UNet(unet_config("tiny", in_channels=1, image_size=8, num_classes=0)))
    z, lam, _ = inputs(2, 1, 8)
    assert net.null_label == 0 and net(z, lam, torch.zeros(2, dtype=torch.long)).shape == z.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half() -> None:
    net = randomize_(UNet(unet_config("tiny", in_channels=1, image_size=28, num_classes=K))).cuda()
    z, lam, c = (t.cuda() for t in inputs(2, 1, 28))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        assert net(z, lam, c).dtype == torch.float32
