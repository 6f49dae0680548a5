"""The mixture demo figure: a PNG of the promised size, and per-panel numbers that mean what they say
(checked against the mixture's exact posterior and the CFG/CG identity for exact models)."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import pytest
import torch

from diffguide.experiments.gmm_demo import GmmDemo, gmm_demo
from diffguide.reference import GaussianMixture

N, STEPS, WS = 240, 40, (0.0, 1.0, 3.0)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> GmmDemo:
    return gmm_demo(tmp_path_factory.mktemp("demo") / "sub" / "gmm.png", n=N, steps=STEPS, ws=WS)


def test_writes_png_of_expected_size(demo: GmmDemo) -> None:
    assert demo.path.is_file() and demo.path.stat().st_size > 10_000
    assert _png_size(demo.path) == (1800, 1050)  # 12 x 7 in at 150 dpi
    assert os.fspath(demo) == str(demo) == str(demo.path)


def test_guidance_sharpens_in_both_rows(demo: GmmDemo) -> None:
    assert demo.ws == WS
    for row in ("cfg", "cg"):
        p = demo.mean_posterior[row]
        assert len(p) == len(WS) and all(0.0 < v <= 1.0 for v in p)
        assert all(a < b for a, b in zip(p, p[1:], strict=False)), f"{row}: mean p(c|x) {p} does not rise with w"


def test_unguided_column_matches_exact_posterior(demo: GmmDemo) -> None:
    # w = 0 samples p(x|c): their mean p(c|x) must match E_{x~p(x|c)} p(c|x) from exact draws.
    gmm = GaussianMixture.example_2d()
    c = torch.arange(200_000) % gmm.num_classes
    x, _ = gmm.sample(c.numel(), c, generator=1, dtype=torch.float64)
    p = gmm.posterior(x).gather(1, c[:, None]).squeeze(1)
    se = p.std().item() / math.sqrt(N)
    for row in ("cfg", "cg"):
        assert abs(demo.mean_posterior[row][0] - p.mean().item()) < 4 * se


def test_exact_classifier_guidance_is_cfg_under_ddim(demo: GmmDemo) -> None:
    # eps*(z) - (w+1) sigma grad log p(c|z) == (1+w) eps*(z,c) - w eps*(z) for the exact mixture.
    assert max(demo.max_abs_diff) < 1e-3


def test_restores_threads_and_checks_arguments(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    gmm_demo(tmp_path / "a.png", n=30, steps=5, ws=(0.0,), sampler="ddpm")
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="sampler"):
        gmm_demo(tmp_path / "b.png", sampler="euler")
    with pytest.raises(ValueError, match="w must be"):
        gmm_demo(tmp_path / "b.png", ws=(0.0, -2.0))
    assert not (tmp_path / "b.png").exists()
