"""Reference sets of the user's own: image folders, .npz images, statistics files, and the CLI around them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import Tensor, nn

from diffguide.cli import cli
from diffguide.images import save_samples
from diffguide.metrics import sample_metrics
from diffguide.metrics.reference_stats import content_hash, load_reference, save_stats


class Pool(nn.Module):
    """A fixed FeatureNet for colour images: 4x4 average-pooled pixels (48-d)."""

    name = "pool4"
    feature_dim = 48

    def features(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1)

    def probs(self, x: Tensor) -> Tensor:
        raise NotImplementedError


def colour_folder(root, n=24, size=16, seed=0):
    """Classes = colours: red, green and blue squares at random places on black."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n // 3):
            img = np.zeros((size, size, 3), np.uint8)
            r, c = rng.integers(0, size - 6, 2)
            img[r:r + 6, c:c + 6, k] = 255
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_a_folder_reference_is_cached_by_content_and_scores_itself_at_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "data")
    stats = load_reference(folder, Pool().eval())
    from diffguide.data import load_data

    data = load_data(folder)
    m = sample_metrics(Pool().eval(), data.images, stats)
    assert abs(m["fid"]) < 1e-6 and m["precision"] == 1.0 and m["recall"] == 1.0
    shifted = sample_metrics(Pool().eval(), (data.images + 0.3).clamp(-1, 1), stats)
    assert shifted["fid"] > 0.01 and shifted["kid"] > m["kid"]
    cached = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(cached) == 1 and content_hash(data.images) in cached[0].name
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(folder / "red" / "0.png")  # the data changes
    load_reference(folder, Pool().eval())
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2  # ... and so does the key


def test_statistics_files_round_trip_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))
    stats = load_reference(colour_folder(tmp_path / "data"), Pool().eval())
    path = save_stats(tmp_path / "stats.npz", stats)
    again = load_reference(path, Pool().eval())
    assert np.array_equal(again.mu, stats.mu) and np.array_equal(again.features, stats.features)
    np.savez(tmp_path / "mu_sigma.npz", mu=stats.mu, sigma=stats.sigma)  # no features: FID only
    bare = load_reference(tmp_path / "mu_sigma.npz", Pool().eval())
    m = sample_metrics(Pool().eval(), torch.zeros(8, 3, 16, 16), bare)
    assert "fid" in m and "precision" not in m and "kid" not in m

    class Other(Pool):
        feature_dim = 2048
        name = "other"

    with pytest.raises(ValueError, match="statistics of 48-d features, but other gives 2048-d features"):
        load_reference(path, Other().eval())
    with pytest.raises(FileNotFoundError, match="reference not found: .*nowhere"):
        load_reference(tmp_path / "nowhere", Pool().eval())


def test_the_cli_evaluates_colour_samples_against_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))
    import diffguide.experiments.sweep as sweep

    monkeypatch.setattr(sweep, "feature_net", lambda kind, shape, device="cpu": Pool().eval())
    folder = colour_folder(tmp_path / "data")
    from diffguide.data import load_data

    data = load_data(folder)
    save_samples(tmp_path / "s.npz", data.images, data.labels)
    res = CliRunner().invoke(cli, ["evaluate", "--samples", str(tmp_path / "s.npz"), "--reference", str(folder)])
    assert res.exit_code == 0, res.output
    assert '"fid"' in res.output and '"kid"' in res.output
    res = CliRunner().invoke(cli, ["reference-stats", str(folder), "--out", str(tmp_path / "ref.npz")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", "--samples", str(tmp_path / "s.npz"), "--reference",
                                   str(tmp_path / "ref.npz")])
    assert res.exit_code == 0 and '"fid"' in res.output, res.output
    res = CliRunner().invoke(cli, ["evaluate", "--samples", str(tmp_path / "s.npz")])
    assert res.exit_code != 0 and "need --reference" in str(res.exception), res.output


def test_a_user_classifier_gives_accuracy_beside_any_features():
    from diffguide.experiments.sweep import WithClassifier
    from diffguide.metrics import extract
    from diffguide.models import build_model

    clf = build_model("classifier", "tiny", channels=3, image_size=16, num_classes=3).eval()
    net = WithClassifier(Pool().eval(), clf)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    probs = extract(net, x, output="probs")  # in eval mode: extract accepts it
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1)
    assert net.feature_dim == 48 and extract(net, x).shape == (5, 48)


def test_a_file_that_is_not_an_npz_is_named_and_never_unpickled(tmp_path):
    from diffguide.images import load_samples

    bad = tmp_path / "samples.npz"
    bad.write_bytes(b"\x80\x04not a zip")  # numpy would suggest allow_pickle=True for this
    with pytest.raises(ValueError, match=r"samples.npz is not an .npz file"):
        load_samples(bad)
    with pytest.raises(ValueError, match=r"samples.npz is not an .npz file"):
        load_reference(bad, Pool().eval())


def test_a_reference_of_another_shape_is_refused_unless_resized(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))
    folder = colour_folder(tmp_path / "data", size=16)
    with pytest.raises(ValueError, match=r"holds 3x16x16 images but the samples are 3x8x8.*resize-reference"):
        load_reference(folder, Pool().eval(), sample_shape=(3, 8, 8))
    with pytest.raises(ValueError, match=r"holds 3x16x16 images but the samples are 1x16x16"):
        load_reference(folder, Pool().eval(), sample_shape=(1, 16, 16))
    small = load_reference(folder, Pool().eval(), sample_shape=(3, 8, 8), image_size=8)
    assert small.image_shape == (3, 8, 8)
    path = save_stats(tmp_path / "s8.npz", small)  # the shape travels with the statistics ...
    assert load_reference(path, Pool().eval(), sample_shape=(3, 8, 8)).image_shape == (3, 8, 8)
    with pytest.raises(ValueError, match=r"s8.npz holds 3x8x8 images but the samples are 3x16x16"):
        load_reference(path, Pool().eval(), sample_shape=(3, 16, 16))  # ... and is checked on use
    with pytest.raises(ValueError, match=r"reference mnist:test holds 1x28x28 images but the samples are 3x16x16"):
        load_reference("mnist:test", Pool().eval(), sample_shape=(3, 16, 16))

    import diffguide.experiments.sweep as sweep

    monkeypatch.setattr(sweep, "feature_net", lambda kind, shape, device="cpu": Pool().eval())
    save_samples(tmp_path / "x8.npz", torch.zeros(6, 3, 8, 8), torch.arange(6) % 3)
    args = ["evaluate", "--samples", str(tmp_path / "x8.npz"), "--reference", str(folder)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "but the samples are 3x8x8" in str(res.exception), res.output
    res = CliRunner().invoke(cli, [*args, "--resize-reference"])
    assert res.exit_code == 0 and '"fid"' in res.output, res.output
