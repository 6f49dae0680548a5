"""The sampling API: the same seed gives the same samples, bit for bit in fp32, whatever the batch
size and however the network forwards are chunked (random `tiny` nets, real oneDNN kernels), with
and without classifier guidance, through `sample_images` and through `Pipeline` (channels_last)."""

from __future__ import annotations

import copy

import pytest
import torch

from diffguide.api import CPU_MAX_BATCH, Pipeline, default_max_batch, sample_images
from diffguide.models import build_model


def _randomised(kind: str) -> torch.nn.Module:
    net = build_model(kind, "tiny", channels=1, image_size=28, num_classes=10)
    with torch.no_grad():  # zero-initialised output/residual convs would make eps = 0 whatever the input
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape))
    return net.eval()


@pytest.fixture(scope="module")
def nets() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return _randomised("diffusion"), _randomised("classifier")


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m", "unipc", "heun", "euler"])
@pytest.mark.parametrize("via", ["sample_images", "pipeline_cg"])
def test_same_seed_same_samples_whatever_the_batching(nets, sampler, via):
    net, clf = nets
    labels = torch.arange(10).repeat(3)[:26]
    if via == "sample_images":
        def sample(lab, **kw):
            return sample_images(net, lab, 1.5, sampler=sampler, steps=3, **kw)
    else:
        pipe = Pipeline(copy.deepcopy(net), copy.deepcopy(clf))

        def sample(lab, **kw):
            return pipe.sample(lab, 1.5, cg_scale=2.0, sampler=sampler, steps=3, **kw)
    whole = sample(labels, seed=7, batch_size=26, max_batch=None)
    for batch_size, max_batch in ((5, None), (26, 7), (9, 4), (1, "auto")):
        again = sample(labels, seed=7, batch_size=batch_size, max_batch=max_batch)
        assert torch.equal(again, whole), (batch_size, max_batch)
    # a sub-range with first_index draws the same per-sample noise as the full run
    assert torch.equal(sample(labels[20:], seed=7, batch_size=3, first_index=20), whole[20:])
    # and a different seed does not
    assert not torch.equal(sample(labels[:4], seed=8), whole[:4])


def test_default_max_batch_chunks_cpu_forwards_only():
    assert default_max_batch(torch.device("cpu")) == CPU_MAX_BATCH
    assert default_max_batch(torch.device("cuda")) is None


def test_bad_max_batch_is_named(nets):
    with pytest.raises(ValueError, match="max_batch must be a positive integer or None, got 0"):
        sample_images(nets[0], [0, 1], max_batch=0, steps=2)


def test_pipeline_leaves_the_callers_modules_alone(nets):
    net, clf = nets
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pipe = Pipeline(net, clf)
    assert net.training and pipe.net is not net and not pipe.net.training  # the caller's module is not switched
    conv = next(p for p in net.parameters() if p.ndim == 4)
    assert conv.is_contiguous()  # ... nor converted to channels_last
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.eval()


class UserNet(torch.nn.Module):
    """A user's own eps-model with no diffguide attributes: eps = z * 0.1 + label embedding (vector data)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(4, 3)  # 3 classes + null

    def forward(self, z, lam, c):
        return 0.1 * z + self.emb(c) * torch.sigmoid(lam)[:, None]


def test_any_network_through_the_protocol():
    from diffguide.nets import Network
    from diffguide.schedule import get_schedule

    raw = UserNet().eval()
    with pytest.raises(ValueError, match=r"does not implement diffguide's network protocol: missing sample_shape"):
        sample_images(raw, [0, 1], steps=2)
    net = Network(raw, sample_shape=(3,), num_classes=3, schedule="linear")
    x = Pipeline(net).sample([0, 1, 2, 1], scale=3.0, steps=4)
    assert x.shape == (4, 3) and torch.isfinite(x).all()
    # the pipeline took the network's own schedule and null label: the same as sampling by hand with them
    from diffguide.guidance import guided
    from diffguide.noise import PerSampleNoise, sample_seeds
    from diffguide.samplers import ddim

    c = torch.tensor([0, 1, 2, 1])
    noise = PerSampleNoise(sample_seeds(0, 4), (3,))
    ref = ddim(guided(raw, c, 2.0, null=torch.full_like(c, 3)), noise(), get_schedule("linear").grid(4), noise=noise,
               clip_x0=1.0)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    # an embedding-conditioned network: the null condition is its learned null embedding, whatever the batch
    null = torch.randn(2, 5)
    emb_net = Network(lambda z, lam, e: z * 0 + e.sum((1, 2))[:, None], sample_shape=(1,), null=null)
    torch.testing.assert_close(emb_net.null_condition(torch.zeros(3, 2, 5)), null.expand(3, 2, 5))
    out = guided(emb_net, torch.ones(3, 2, 5), 1.0)(torch.zeros(3, 1), torch.zeros(3)).eps
    torch.testing.assert_close(out, (2 * 10.0 - null.sum()).expand(3, 1))


def test_per_sample_cg_scale_and_device_mismatch(nets):
    net, clf = nets
    labels = torch.arange(6) % 10
    s = torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 2.0])
    whole = sample_images(net, labels, 0.5, classifier=clf, cg_scale=s, steps=2, batch_size=6)
    split = sample_images(net, labels, 0.5, classifier=clf, cg_scale=s, steps=2, batch_size=4)  # sliced per batch
    assert torch.equal(whole, split)
    one = sample_images(net, labels[1:2], 0.5, classifier=clf, cg_scale=1.0, steps=2, first_index=1)
    assert torch.equal(one, whole[1:2])
    with pytest.raises(ValueError, match="the network's weights are on cpu but device='meta': move it there"):
        sample_images(net, labels, steps=2, device="meta")
