"""A folder of images with one sub-folder per class (``root/<class name>/**/<image>``), read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = ["read_image_folder", "image_extensions"]

_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC
_EXIF_ORIENTATION = 0x0112


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of the formats this Pillow can open."""
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _image_files(folder: Path, exts: frozenset[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in exts and p.is_file() and not _is_hidden(p, folder))


def _is_gray(im: Image.Image) -> bool:
    """Grayscale by mode; a palette image is grayscale when every palette entry has R = G = B."""
    if im.mode == "P":
        pal = im.getpalette()
        return pal is not None and all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return im.mode in _GRAY_MODES


def _convert(im: Image.Image, mode: str) -> Image.Image:
    """To ``"L"`` or ``"RGB"``; alpha is dropped, 16-bit integer gray is scaled to 8 bits."""
    if im.mode.startswith("I"):  # 16-bit PNG / TIFF gray: Pillow's convert would clip, not scale
        a = np.asarray(im, dtype=np.float64) / 257.0
        im = Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


def _resize_crop(im: Image.Image, s: int) -> Image.Image:
    """Shorter side to ``s`` (bicubic), then the central ``s x s`` square."""
    w, h = im.size
    if (w, h) == (s, s):
        return im
    if min(w, h) != s:
        nw, nh = (s, max(s, round(h * s / w))) if w <= h else (max(s, round(w * s / h)), s)
        im = im.resize((nw, nh), _BICUBIC)
        w, h = nw, nh
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def read_image_folder(root: Path, *, image_size: int | None = None,
                      channels: int | None = None) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """Read ``root/<class>/**/<image>`` as ``(images, labels, class_names)``: uint8
    ``(N, C, S, S)``, int64 ``(N,)`` and the sorted sub-folder names (label ``k`` is
    ``class_names[k]``). Images are EXIF-rotated, converted to ``channels`` (inferred when
    ``None``: 1 if all are grayscale, 3 if all colour), and resized / center-cropped to
    ``image_size`` (default: their common size, which must be square). See ``load_data``."""
    root = Path(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"no class folders in {root}; expected one sub-folder of images per class "
                         f"(e.g. {root / 'cat' / '1.png'}, {root / 'dog' / '2.jpg'})")
    exts = image_extensions()
    files: list[Path] = []
    labels: list[int] = []
    for k, d in enumerate(classes):
        found = _image_files(d, exts)
        if not found:
            raise ValueError(f"class folder {d} holds no image files (looked for {', '.join(sorted(exts)[:8])}, "
                             f"... including sub-folders)")
        files += found
        labels += [k] * len(found)

    # Pass 1: headers only (mode, oriented size), to settle channels and size before decoding.
    grays: list[Path] = []
    colours: list[tuple[Path, str]] = []
    sizes: dict[tuple[int, int], Path] = {}
    for f in files:
        try:
            with Image.open(f) as im:
                w, h = im.size
                if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                    w, h = h, w
                if _is_gray(im):
                    grays.append(f)
                else:
                    colours.append((f, im.mode))
        except Exception as e:  # Pillow raises many types for a bad file; name the file
            raise ValueError(f"cannot read image {f}: {e}") from e
        sizes.setdefault((w, h), f)

    if channels is None:
        if grays and colours:
            g, (c, mode) = grays[0], colours[0]
            raise ValueError(
                f"{root} mixes grayscale and colour images ({len(grays)} grayscale, e.g. {g}; "
                f"{len(colours)} colour, e.g. {c} in mode {mode}); pass channels=1 or channels=3"
            )
        channels = 1 if grays else 3
    mode = "L" if channels == 1 else "RGB"

    if image_size is None:
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise ValueError(
                f"images in {root} differ in size ({len(sizes)} sizes, e.g. {f1} is {s1[0]}x{s1[1]} and "
                f"{f2} is {s2[0]}x{s2[1]}, width x height); pass image_size to resize and center-crop"
            )
        (w, h), f = next(iter(sizes.items()))
        if w != h:
            raise ValueError(f"images in {root} are not square (e.g. {f} is {w}x{h}, width x height); pass "
                             "image_size to resize the shorter side and center-crop")
        image_size = w

    # Pass 2: decode into one preallocated array.
    out = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im.load()
                pic = _resize_crop(_convert(ImageOps.exif_transpose(im), mode), image_size)
                out[i] = np.asarray(pic).reshape(image_size, image_size, channels)
        except Exception as e:
            raise ValueError(f"cannot read image {f}: {e}") from e
    images = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64), tuple(d.name for d in classes)
