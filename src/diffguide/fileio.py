"""Atomic file writes (the one place they live).

A file is written to a fresh temporary file in its own directory (so the rename is atomic), fsynced
and renamed onto its name with ``os.replace``, then the directory is fsynced: readers see the old
file or the new one, never a half-written one, and a crash leaves at most a hidden
``.<name>.<random>.tmp<suffix>`` file. The file gets the usual permissions of a new file,
``0o666`` masked by the process umask, whichever mode the writer created it with
(``tempfile.mkstemp`` and safetensors make files 0600).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["open_npz", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_dir"]

StrPath = str | os.PathLike[str]


@contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """A new empty temporary file beside ``path`` to write (by name, e.g. ``save_file(t, tmp)``);
    on a clean exit it is put in place as described in the module docstring; on an exception it
    is removed and ``path`` is untouched. The directory must exist. The temporary name ends with
    ``path``'s suffix, so writers that go by the suffix (``np.savez``, Pillow) write that file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies: the usual mode
    try:
        mode = os.stat(tmp).st_mode & 0o777
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # a writer that created the file anew may have made it 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: StrPath, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: StrPath, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically, encoded as is (no newline translation); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def fsync_dir(path: StrPath) -> None:
    """Flush a directory's entries (after creating, renaming or removing files in it) to disk."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_npz(path: str | os.PathLike[str]) -> Any:
    """``np.load`` of an ``.npz`` archive, never unpickling: a file that is not an ``.npz`` at all gets an
    error that says so (numpy's own advice, to pass ``allow_pickle=True``, must not be followed for a
    file one did not write)."""
    import zipfile

    import numpy as np

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not an .npz file (a zip archive of numpy arrays)")
    return np.load(path, allow_pickle=False)
