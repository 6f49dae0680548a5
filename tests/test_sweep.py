"""Guidance sweeps: files and rows, per-sample seeds shared across settings, resuming (skipped
settings, an interrupted setting redoes only its missing chunk), evaluate_samples and the CLI.

A tiny random U-Net and a tiny random stand-in evaluator keep this fast; reference statistics come
from 300 real MNIST test images."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor, nn

import diffguide.api as api
import diffguide.experiments.sweep as sweep_mod
from diffguide.api import Pipeline
from diffguide.cli import cli
from diffguide.data.mnist import load_mnist
from diffguide.experiments import Setting, evaluate_samples, grid_settings, read_rows, run_sweep
from diffguide.guidance import GuidanceSpec
from diffguide.images import to_uint8
from diffguide.metrics import FeatureNet, ReferenceStats, reference_stats
from diffguide.models import build_model

METRICS = ("fid", "is_mean", "is_std", "precision", "recall", "accuracy")
N, STEPS, CHUNK = 20, 2, 10


class StandIn(nn.Module):
    """A random FeatureNet: 8-d features of the flattened image, 10-way softmax on top."""

    name = "stand-in"

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Linear(28 * 28, 8)
        self.head = nn.Linear(8, 10)

    def features(self, x: Tensor) -> Tensor:
        return torch.tanh(self.feat(x.flatten(1)))

    def probs(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).softmax(-1)


@pytest.fixture(scope="module")
def evaluator() -> StandIn:
    torch.manual_seed(1)
    net = StandIn().eval()
    assert isinstance(net, FeatureNet)
    return net


@pytest.fixture(scope="module")
def reference(evaluator: StandIn, tmp_path_factory: pytest.TempPathFactory) -> ReferenceStats:
    images = load_mnist("test")[0][:300]
    return reference_stats("mnist", "test300", evaluator, images, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    net = build_model("diffusion", "tiny", channels=1, image_size=28, num_classes=10)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the zero-initialised output/residual convs would make eps = 0 whatever the label
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return Pipeline(net.eval())


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of sample_images (which Pipeline.sample uses): size, w and seeds."""
    log: list[dict[str, Any]] = []
    real = api.sample_images

    def spy(net: nn.Module, labels: Tensor, w: float = 0.0, **kw: Any) -> Tensor:
        log.append({"n": len(labels), "w": w, "seed": kw.get("seed", 0), "first_index": kw.get("first_index", 0)})
        return real(net, labels, w, **kw)

    monkeypatch.setattr(api, "sample_images", spy)
    return log


def _sweep(pipe: Pipeline, out: Path, settings: list[Setting], evaluator: StandIn, reference: ReferenceStats,
           plot: bool = False) -> list[dict[str, Any]]:
    return run_sweep(pipe, settings, n=N, sampler="ddpm", steps=STEPS, seed=0, out=out, batch_size=CHUNK,
                     evaluator=evaluator, reference=reference, progress=False, plot=plot)


def _images(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["images"]


def test_setting_tags_and_grid() -> None:
    assert [Setting(0.5).tag, Setting(1.0).tag, Setting(-0.0).tag, Setting(0, 3).tag, Setting(0, 3, True).tag,
            Setting(0, 0, True).tag, Setting(1, 0.25).tag] == ["w0.5", "w1", "w0", "w0_cg3", "uncond_cg3", "uncond",
                                                                "w1_cg0.25"]
    assert Setting(0.1).tag != Setting(0.1000001).tag
    assert Setting(2) == Setting(2.0, 0)  # hashable, normalised
    for bad in ({"w": 1.0, "unconditional": True}, {"w": -2.0}, {"w": 0.0, "cg_scale": -1.0},
                {"w": float("nan")}):
        with pytest.raises(ValueError):
            Setting(**bad)
    tags = [s.tag for s in grid_settings([0, 1, 0], [0, 3], unconditional=True)]
    assert tags == ["w0", "w1", "w0_cg3", "uncond", "uncond_cg3"]


def test_sweep_rows_files_seeds_and_resume(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats,
                                           calls: list[dict[str, Any]], tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    rows = _sweep(pipe, out, [Setting(0), Setting(2)], evaluator, reference, plot=True)
    assert [r["tag"] for r in rows] == ["w0", "w2"]
    for r in rows:
        assert all(math.isfinite(r[m]) for m in METRICS), r
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 1 <= r["is_mean"] <= 10
        assert (r["n"], r["sampler"], r["steps"], r["seed"]) == (N, "ddpm", STEPS, 0)
    # one call per chunk, and every setting draws the same per-sample seeds
    assert calls == [{"n": CHUNK, "w": w, "seed": 0, "first_index": i} for w in (0.0, 2.0) for i in (0, CHUNK)]
    for name in ("results.jsonl", "results.csv", "results.json", "results.md", "sweep.png", "report.html",
                 "grids/w0.png", "grids/w2.png", "samples/w0.npz", "samples/w2/chunk-0000.npz",
                 "samples/w2/chunk-0001.npz"):
        assert (out / name).is_file(), name
    assert len(read_rows(out / "results.jsonl")) == 2
    assert len((out / "results.csv").read_text().splitlines()) == 3
    assert [r["tag"] for r in json.loads((out / "results.json").read_text())] == ["w0", "w2"]
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| w0 | cfg | 0 | 0 | ") and md[3].startswith("| w2 | cfg | 2 | 0 | ")
    with np.load(out / "samples/w0.npz") as f:
        assert f["images"].shape == (N, 28, 28, 1) and f["images"].dtype == np.uint8
        np.testing.assert_array_equal(f["labels"], np.arange(N) % 10)
    w0, w2 = _images(out / "samples/w0.npz"), _images(out / "samples/w2.npz")
    assert not np.array_equal(w0, w2)  # guidance matters for this net ...

    # ... and w = 0 is w = 0: in one batch, and in another sweep that runs it second
    x = pipe.sample(torch.arange(N) % 10, 0.0, sampler="ddpm", steps=STEPS, seed=0, batch_size=N)
    np.testing.assert_array_equal(w0, to_uint8(x))
    _sweep(pipe, tmp_path / "other", [Setting(2), Setting(0)], evaluator, reference)
    np.testing.assert_array_equal(_images(tmp_path / "other/samples/w0.npz"), w0)
    np.testing.assert_array_equal(_images(tmp_path / "other/samples/w2.npz"), w2)

    # finished settings are skipped
    calls.clear()
    again = _sweep(pipe, out, [Setting(0), Setting(2)], evaluator, reference)
    assert calls == [] and [r["fid"] for r in again] == [r["fid"] for r in rows]
    assert len(read_rows(out / "results.jsonl")) == 2

    # an interrupted setting (last chunk and row missing) makes only the missing chunk, with its own seeds
    (out / "samples/w2/chunk-0001.npz").unlink()
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(ln for ln in lines if json.loads(ln)["tag"] != "w2") + "\n")
    resumed = _sweep(pipe, out, [Setting(0), Setting(2)], evaluator, reference)
    assert calls == [{"n": CHUNK, "w": 2.0, "seed": 0, "first_index": CHUNK}]
    np.testing.assert_array_equal(_images(out / "samples/w2.npz"), w2)
    assert resumed[1]["fid"] == pytest.approx(rows[1]["fid"])
    assert [r["tag"] for r in read_rows(out / "results.jsonl")] == ["w0", "w2"]

    # another sampling configuration (here: the seed) never overwrites this one's samples ...
    calls.clear()
    kw: dict[str, Any] = dict(sampler="ddpm", steps=STEPS, out=out, batch_size=CHUNK, evaluator=evaluator,
                              reference=reference, progress=False, plot=False)
    with pytest.raises(ValueError, match=r"another sweep configuration \(seed: 0 there, 1 now\)"):
        run_sweep(pipe, [Setting(0)], n=N, seed=1, **kw)
    assert calls == []
    np.testing.assert_array_equal(_images(out / "samples/w0.npz"), w0)
    # ... a damaged chunk is made again ...
    (out / "samples/w0/chunk-0001.npz").write_bytes(b"PK")
    (out / "results.jsonl").write_text("")
    run_sweep(pipe, [Setting(0)], n=N, seed=0, **kw)
    assert calls == [{"n": CHUNK, "w": 0.0, "seed": 0, "first_index": CHUNK}]
    np.testing.assert_array_equal(_images(out / "samples/w0.npz"), w0)
    # ... and a smaller n reuses the chunks, scores anew, and the tables hold that n only
    calls.clear()
    small = run_sweep(pipe, [Setting(0)], n=CHUNK, seed=0, **kw)
    assert calls == [] and small[0]["n"] == CHUNK
    assert [r["n"] for r in json.loads((out / "results.json").read_text())] == [CHUNK]


def test_markdown_table_marks_the_best() -> None:
    rows = [{"tag": "w0", "method": "cfg", "w": 0.0, "cg_scale": 0.0, "n": 8, "fid": 3.0, "is_mean": 8.0,
             "is_std": 0.1, "precision": 0.7, "recall": 0.8, "accuracy": 0.9, "nfe": 50, "sample_seconds": 12.4},
            {"tag": "w0_cg3", "method": "cfg+cg", "w": 0.0, "cg_scale": 3.0, "n": 8, "fid": 1.5, "is_mean": 9.5,
             "is_std": 0.2, "precision": 0.9, "recall": 0.6, "accuracy": 1.0}]
    lines = sweep_mod.markdown_table(rows).splitlines()
    assert lines[2] == "| w0 | cfg | 0 | 0 | 8 | 0.900 | 3.00 | 8.00 ± 0.10 | 0.700 | 0.800 | 50 | 12 |"
    assert lines[3] == ("| w0_cg3 | cfg+cg | 0 | 3 | 8 | **1.000** | **1.50** | **9.50 ± 0.20** | 0.900 | 0.600 "
                        "| - | - |")
    with pytest.raises(ValueError, match="no rows"):
        sweep_mod.markdown_table([])


def test_result_files_get_the_usual_mode(tmp_path: Path) -> None:
    """Tables and samples are written with 0o666 masked by the umask (tempfile's 0600 was a bug)."""
    umask = 0o002  # not the common 0o022, so a hard-coded 0o644 fails too
    old = os.umask(umask)
    try:
        row = {"tag": "w0", "method": "cfg", "w": 0.0, "cg_scale": 0.0, "unconditional": False, "n": 2, "fid": 1.0}
        sweep_mod._append_row(tmp_path / "results.jsonl", row)
        sweep_mod._write_tables(tmp_path, [row])
        sweep_mod._save_npz(tmp_path / "samples" / "w0.npz", np.zeros((2, 28, 28, 1), np.uint8), np.arange(2), {})
    finally:
        os.umask(old)
    for name in ("results.jsonl", "results.json", "results.csv", "results.md", "samples/w0.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_bad_input(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats, tmp_path: Path) -> None:
    kw: dict[str, Any] = dict(n=N, sampler="ddpm", steps=STEPS, seed=0, out=tmp_path, evaluator=evaluator,
                              reference=reference, progress=False)
    with pytest.raises(ValueError, match="classifier"):
        run_sweep(pipe, [Setting(0, 3)], **kw)
    with pytest.raises(ValueError, match="labels"):
        run_sweep(pipe, [Setting(0)], **{**kw, "labels": [3, 10]})
    with pytest.raises(ValueError, match="n must be"):
        run_sweep(pipe, [Setting(0)], **{**kw, "n": 1})


def test_evaluate_samples(evaluator: StandIn, reference: ReferenceStats, tmp_path: Path) -> None:
    images, labels = load_mnist("test")
    np.savez(tmp_path / "real.npz", images=images[300:340].permute(0, 2, 3, 1).numpy(), labels=labels[300:340].numpy())
    m = evaluate_samples(tmp_path / "real.npz", evaluator=evaluator, reference=reference)
    assert m["n"] == 40 and all(math.isfinite(m[k]) for k in METRICS)
    np.savez(tmp_path / "nolabels.npz", images=images[300:340, 0].numpy())  # (N, H, W), no labels
    m2 = evaluate_samples(tmp_path / "nolabels.npz", evaluator=evaluator, reference=reference)
    assert "accuracy" not in m2 and m2["fid"] == pytest.approx(m["fid"])
    np.savez(tmp_path / "small.npz", images=np.zeros((8, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="1x28x28"):
        evaluate_samples(tmp_path / "small.npz")  # the default evaluator is MNIST's: refused before loading
    with pytest.raises(FileNotFoundError):
        evaluate_samples(tmp_path / "missing.npz", evaluator=evaluator, reference=reference)


def test_cli_sweep_and_evaluate(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats,
                                monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the CLI's defaults (shipped MNIST model, evaluator, test-split stats) replaced by the tiny stand-ins
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    monkeypatch.setattr(sweep_mod, "default_evaluator", lambda e, r, shape, device="cpu": (evaluator, reference))
    out = tmp_path / "cli"
    runner = CliRunner()
    res = runner.invoke(cli, ["sweep", "--w", "0,1", "--n", str(N), "--sampler", "ddim", "--steps", "2",
                              "--batch-size", str(CHUNK), "--out", str(out), "--no-plot", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [r["tag"] for r in read_rows(out / "results.jsonl")] == ["w0", "w1"]
    assert "w1" in res.output and (out / "results.csv").is_file()
    res = runner.invoke(cli, ["sweep", "--w", "0", "--cg-scale", "0,3", "--n", str(N), "--out", str(out)])
    assert res.exit_code != 0 and "classifier" in res.output
    res = runner.invoke(cli, ["evaluate", "--samples", str(out / "samples/w1.npz")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)
    assert m["n"] == N and m["fid"] == pytest.approx(read_rows(out / "results.jsonl")[1]["fid"])


def test_cli_demo_ends_with_a_quick_sweep(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    monkeypatch.setattr(sweep_mod, "default_evaluator", lambda e, r, shape, device="cpu": (evaluator, reference))
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "--out", str(out), "--steps", "2", "--sweep-w", "0,2",
                                   "--sweep-n", str(N), "--sweep-steps", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    assert [r["tag"] for r in report["sweep"]["rows"]] == ["w0", "w2"]
    assert [r["tag"] for r in read_rows(out / "sweep" / "results.jsonl")] == ["w0", "w2"]
    assert (out / "sweep" / "sweep.png").stat().st_size > 10_000 and len(report["grids"]) == 3
    res = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "quick"), "--steps", "2", "--sweep-w", ""])
    assert res.exit_code == 0 and "sweep" not in json.loads(res.output[res.output.index("{"):])


def test_sweep_any_rule_records_forwards(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats,
                                         tmp_path: Path) -> None:
    # Settings of several methods share one folder and one set of seeds; each row records its NFE.
    iv = GuidanceSpec(interval=(-1.0, 2.0))
    settings = [Setting(1.0), Setting(1.0, guidance=iv), Setting(1.0, guidance=GuidanceSpec(rule="apg")),
                Setting(-0.4, guidance=GuidanceSpec(rule="cfgpp"))]
    rows = run_sweep(pipe, settings, n=N, sampler="ddim", steps=STEPS, seed=0, out=tmp_path / "m", batch_size=CHUNK,
                     evaluator=evaluator, reference=reference, progress=False, plot=True)
    assert [r["tag"] for r in rows] == ["w1", "cfg+interval-1_2_w1", "apg-b-0.5-r15-e0_w1", "cfgpp_w-0.4"]
    inside = sum(-1.0 <= v <= 2.0 for v in pipe.net.train_schedule.grid(STEPS)[:-1].tolist())
    assert [r["nfe"] for r in rows] == [2 * STEPS, STEPS + inside, 2 * STEPS, 2 * STEPS]
    assert rows[1]["guidance"] == {"interval": [-1.0, 2.0]}
    # a cut-short sweep of these settings resumes from its chunks (their stored keys match a fresh one)
    (tmp_path / "m" / "results.jsonl").unlink()
    again = run_sweep(pipe, settings, n=N, sampler="ddim", steps=STEPS, seed=0, out=tmp_path / "m", batch_size=CHUNK,
                      evaluator=evaluator, reference=reference, progress=False, plot=False)
    assert [r["fid"] for r in again] == [r["fid"] for r in rows]
    assert all(r["sample_seconds"] == o["sample_seconds"] for r, o in zip(again, rows, strict=True))  # not resampled
    # settings that differ in any digit get different tags (finished rows are found by tag)
    assert Setting(1.0, guidance=GuidanceSpec(interval=(-0.95247, 2.54593))).tag != \
        Setting(1.0, guidance=GuidanceSpec(interval=(-0.9521, 2.5461))).tag
    with pytest.raises(ValueError, match="CFG\\+\\+ re-noises with eps_u, which the ddpm sampler cannot do"):
        run_sweep(pipe, settings[3:], n=N, sampler="ddpm", steps=STEPS, seed=0, out=tmp_path / "x",
                  evaluator=evaluator, reference=reference, progress=False, plot=False)
    assert not (tmp_path / "x" / "samples").exists()  # refused before any work
    assert "apg" in rows[2]["method"] and rows[0]["method"] == "cfg"
    with pytest.raises(ValueError, match=r"CFG\+\+ needs its lambda"):
        Setting(1.0, guidance=GuidanceSpec(rule="cfgpp"))


@pytest.mark.parametrize("args, match", [
    (["--guidance", "rescale", "--phi", "1.5"], r"rescale phi = 1.5 is invalid: expected a number in \[0, 1\]"),
    (["--guidance", "interval", "--interval", "2,1"], r"guidance interval \[2.0, 1.0\] is empty"),
    (["--interval", "nan,1"], r"guidance interval lo = nan is invalid"),
    (["--guidance", "apg", "--apg-beta", "1"], r"APG beta = 1.0 is invalid"),
    (["--guidance", "apg", "--apg-r", "0"], r"APG r = 0.0 is invalid"),
    (["--guidance", "cfgpp", "--scale", "1.5"], r"CFG\+\+ needs its lambda = 1 \+ w in \[0, 1\]"),
    (["--threshold", "1.2"], r"percentile p = 1.2 is invalid"),
    (["--sampler", "dpmpp-2m", "--steps", "2"], r"the dpmpp-2m sampler needs a grid of at least 3 steps"),
    (["--sampler", "heun", "--grid", "schedule", "--steps", "4"], r"heun sampler integrates linearly .*lam = -20"),
    (["--sampler", "unipc", "--order", "5", "--steps", "6"], r"order must be an integer in \[1, 3\], got 5"),
])
def test_cli_bad_guidance_values_are_one_line(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              args: list[str], match: str) -> None:
    import re
    import sys

    from diffguide.cli import main

    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    monkeypatch.setattr(sys, "argv", ["diffguide", "sample", "--n", "10", "--steps", "2", "--out",
                                      str(tmp_path), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(match, err), err


@pytest.mark.parametrize("args, match", [
    (["--w", "1", "--scale", "2"], "give --w or --scale, not both"),
    (["--sampler", "ddpm", "--eta", "0.5"], "--eta applies to --sampler ddim only"),
    (["--sampler", "ddim", "--v", "0.5"], "--v applies to --sampler ddpm only"),
    (["--sampler", "unipc", "--eta", "0.5"], "--eta applies to --sampler ddim only, not unipc"),
    (["--sampler", "ddim", "--skip-corrector", "1"], "--skip-corrector applies to --sampler unipc only"),
    (["--grid", "karras", "--rho", "0"], "rho must be a finite number > 0, got 0.0"),
    (["--interval", "0,1", "--interval-sigma", "0.5,1"], "give --interval or --interval-sigma, not both"),
    (["--guidance", "cfgpp"], "--guidance cfgpp needs its lambdas in [0, 1] as --scale"),
])
def test_cli_refuses_options_that_do_not_apply(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               args: list[str], match: str) -> None:
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    res = CliRunner().invoke(cli, ["sample", "--n", "10", "--steps", "2", "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and match in res.output, res.output


def test_cli_sample_with_a_rule_and_scale(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    res = CliRunner().invoke(cli, ["sample", "--n", "10", "--steps", "2", "--out", str(tmp_path), "--scale", "0.6",
                                   "--guidance", "cfgpp"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cfgpp_w-0.4.png").is_file()  # lambda 0.6 is w = -0.4
    res = CliRunner().invoke(cli, ["sample", "--n", "10", "--steps", "2", "--out", str(tmp_path), "--scale", "3",
                                   "--guidance", "apg", "--phi", "0.5", "--w-schedule", "cosine"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "apg-b-0.5-r15-e0+cosine+rescale0.5_w2.png").is_file()


@pytest.mark.parametrize("args", [["--sampler", "unipc", "--steps", "4", "--guidance", "cfgpp", "--scale", "0.6"],
                                  ["--sampler", "heun", "--steps", "3", "--w", "1"],
                                  ["--sampler", "dpmpp-2m", "--steps", "4", "--grid", "lam", "--lower-order-final",
                                   "--w", "1"]])
def test_cli_samples_with_every_solver(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       args: list[str]) -> None:
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    res = CliRunner().invoke(cli, ["sample", "--n", "10", "--out", str(tmp_path), *args])
    assert res.exit_code == 0, res.output
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_a_bf16_sweep_keeps_the_precision_metric(pipe: Pipeline, evaluator: StandIn, reference: ReferenceStats,
                                                 tmp_path: Path) -> None:
    """Sampling precision is keyed as `autocast`, so it cannot overwrite the precision/recall metric."""
    rows = run_sweep(pipe, [Setting(1.0)], n=N, sampler="ddim", steps=STEPS, precision="bf16", out=tmp_path,
                     batch_size=CHUNK, evaluator=evaluator, reference=reference, progress=False, plot=False)
    assert isinstance(rows[0]["precision"], float) and rows[0]["autocast"] == "bfloat16"
    fp32 = run_sweep(pipe, [Setting(1.0)], n=N, sampler="ddim", steps=STEPS, out=tmp_path / "fp32",
                     batch_size=CHUNK, evaluator=evaluator, reference=reference, progress=False, plot=False)
    assert "autocast" not in fp32[0]


def test_cli_sample_with_a_reward(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(api, "load", lambda *a, **k: pipe)
    base = ["sample", "--n", "10", "--steps", "2", "--w", "1", "--out", str(tmp_path)]
    for args in ([], ["--reward", "ink", "--reward-scale", "0.5"], ["--reward", "-ink", "--reward-scale", "0.5"]):
        res = CliRunner().invoke(cli, [*base, *args])
        assert res.exit_code == 0, res.output
    ink = {}
    for tag in ("w1", "w1_ink0.5", "w1_less_ink0.5"):
        assert (tmp_path / f"{tag}.png").is_file()
        with np.load(tmp_path / f"{tag}.npz") as f:
            ink[tag] = (f["images"].astype(np.float64) / 255).sum(axis=(1, 2, 3)).mean()
    assert ink["w1_less_ink0.5"] < ink["w1"] < ink["w1_ink0.5"]  # the statistic moves as asked
    for args, match in ((["--reward", "nope"], "unknown reward 'nope'"),
                        (["--reward", "ink", "--reward-scale", "-1"], "reward scale must be a finite number >= 0"),
                        (["--reward", "os:nothing_here"], "cannot load the reward 'os:nothing_here'")):
        res = CliRunner().invoke(cli, [*base, *args])
        assert res.exit_code == 2 and match in res.output, res.output
