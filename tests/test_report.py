"""report.html: self-contained, every image loads and every setting shows, checked in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch

from diffguide.experiments.report import write_report
from diffguide.images import save_grid

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def make_sweep(tmp_path):
    (tmp_path / "grids").mkdir()
    rows = []
    for i, w in enumerate((0.0, 1.0, 3.0)):
        save_grid(torch.rand(6, 3, 8, 8) * 2 - 1, tmp_path / "grids" / f"w{w:g}.png", nrow=3)
        rows.append({"tag": f"w{w:g}", "method": "cfg", "w": w, "cg_scale": 0.0, "n": 6, "fid": 3.0 - i,
                     "kid": 0.01 * (3 - i), "is_mean": 2.0 + i, "accuracy": 0.5 + 0.1 * i, "nfe": 20,
                     "grid": f"grids/w{w:g}.png"})
    save_grid(torch.rand(1, 3, 40, 60) * 2 - 1, tmp_path / "sweep.png", nrow=1)  # a stand-in plot
    return rows


def test_the_report_inlines_everything(tmp_path):
    rows = make_sweep(tmp_path)
    page = write_report(tmp_path, rows, title="a <test> sweep").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="grids' not in page  # nothing to fetch
    assert "a &lt;test&gt; sweep" in page and page.count("<tr>") == 4  # header + 3 settings
    assert "<td class=best>1.000</td>" in page  # the lowest FID is marked


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine (.ci/run installs it: apt-get install "
                                              "chromium)")
def test_the_report_renders_in_a_headless_browser(tmp_path):
    rows = make_sweep(tmp_path)
    path = write_report(tmp_path, rows, title="sweep")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(path), moved / "report.html")  # self-contained: it renders away from its folder too
    dom = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", (moved / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    m = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, dom[:500]
    assert m.group(1) == m.group(2) == "4"  # the plot and three grids decoded
    for r in rows:
        assert f"<td>{r['tag']}</td>" in dom
