"""The sampling API: the same seed gives the same samples, bit for bit in fp32, whatever the batch
size and however the network forwards are chunked (a random `tiny` U-Net, real oneDNN kernels)."""

from __future__ import annotations

import pytest
import torch

from diffguide.api import CPU_MAX_BATCH, default_max_batch, sample_images
from diffguide.models import build_model


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model("diffusion", "tiny", channels=1, image_size=28, num_classes=10)
    with torch.no_grad():  # zero-initialised output/residual convs would make eps = 0 whatever the input
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape))
    return net.eval()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_same_seed_same_samples_whatever_the_batching(net, sampler):
    labels = torch.arange(10).repeat(3)[:26]
    kw = dict(sampler=sampler, steps=3, seed=7)
    whole = sample_images(net, labels, 1.5, batch_size=26, max_batch=None, **kw)
    for batch_size, max_batch in ((5, None), (26, 7), (9, 4), (1, "auto")):
        again = sample_images(net, labels, 1.5, batch_size=batch_size, max_batch=max_batch, **kw)
        assert torch.equal(again, whole), (batch_size, max_batch)
    # a sub-range with first_index draws the same per-sample noise as the full run
    tail = sample_images(net, labels[20:], 1.5, batch_size=3, first_index=20, **kw)
    assert torch.equal(tail, whole[20:])
    # and a different seed does not
    assert not torch.equal(sample_images(net, labels[:4], 1.5, sampler=sampler, steps=3, seed=8), whole[:4])


def test_default_max_batch_chunks_cpu_forwards_only():
    assert default_max_batch(torch.device("cpu")) == CPU_MAX_BATCH
    assert default_max_batch(torch.device("cuda")) is None


def test_bad_max_batch_is_named(net):
    with pytest.raises(ValueError, match="max_batch must be a positive integer or None, got 0"):
        sample_images(net, [0, 1], max_batch=0, steps=2)
