"""Atomic writes (diffguide.fileio): the usual file mode (0o666 masked by the umask, also where the
writer creates files 0600), all or nothing, no temporary files left behind."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from diffguide.checkpoint import save_checkpoint, save_weights
from diffguide.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from diffguide.images import save_samples


@pytest.fixture(params=[0o022, 0o002, 0o027])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_usual_mode(umask: int, tmp_path: Path) -> None:
    usual = 0o666 & ~umask
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.md", "| x |\n")
    with atomic_path(tmp_path / "c.safetensors") as tmp:  # safetensors creates its file 0600
        safetensors.torch.save_file({"t": torch.zeros(2)}, str(tmp))
    with atomic_path(tmp_path / "d.npz") as tmp:  # np.savez goes by the suffix: the temp name keeps it
        np.savez(tmp, a=np.arange(3))
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == dict.fromkeys(["a.bin", "b.md", "c.safetensors",
                                                                           "d.npz"], usual)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01" and (tmp_path / "b.md").read_text() == "| x |\n"
    with np.load(tmp_path / "d.npz") as f:
        np.testing.assert_array_equal(f["a"], np.arange(3))


def test_package_writers_give_the_usual_mode(umask: int, tmp_path: Path) -> None:
    usual = 0o666 & ~umask
    ckpt = save_checkpoint(tmp_path / "run", 1, model=nn.Linear(2, 2), config={})
    files = [*ckpt.iterdir(), save_weights(tmp_path / "w.safetensors", nn.Linear(2, 2)),
             save_samples(tmp_path / "s.npz", torch.zeros(2, 1, 4, 4), torch.arange(2))]
    assert {p.name: mode(p) for p in files} == {p.name: usual for p in files}


def test_replace_is_all_or_nothing(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "r.json", "old\n")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("mid-write")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["r.json"]
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["r.json"]
