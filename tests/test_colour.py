"""Colour images end to end: train on an RGB folder, sample, and sweep against that folder as reference."""

from __future__ import annotations

from click.testing import CliRunner
from PIL import Image

from diffguide.cli import cli
from test_reference import Pool, colour_folder  # tests/ is on sys.path (pytest rootdir)


def test_train_sample_and_sweep_on_a_colour_folder(tmp_path, monkeypatch):
    import diffguide.experiments.sweep as sweep

    monkeypatch.setenv("DIFFGUIDE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sweep, "feature_net", lambda kind, shape, device="cpu": Pool().eval())  # Inception's stand-in
    data = colour_folder(tmp_path / "data", n=24, size=16)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--data", str(data), "--preset", "tiny", "--hflip", "--steps", "4",
                                   "--batch-size", "8", "--ckpt-every", "4", "--precision", "fp32", "--device", "cpu",
                                   "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["sample", "--checkpoint", str(run), "--w", "1", "--labels", "0-2", "--n", "6",
                                   "--steps", "3", "--out", str(tmp_path / "samples")])
    assert res.exit_code == 0, res.output
    with Image.open(tmp_path / "samples" / "w1.png") as grid:
        assert grid.mode == "RGB"
    res = CliRunner().invoke(cli, ["sweep", "--checkpoint", str(run), "--w", "0,1", "--n", "12", "--steps", "3",
                                   "--reference", str(data), "--out", str(tmp_path / "sweep"), "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("results.csv", "report.html", "grids/w0.png", "grids/w1.png"):
        assert (tmp_path / "sweep" / name).is_file(), name
    assert "kid" in (tmp_path / "sweep" / "results.csv").read_text().splitlines()[0]
