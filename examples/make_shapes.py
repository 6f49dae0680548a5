"""Write a small coloured image folder to try diffguide on your own images:

    python examples/make_shapes.py out/shapes [--n 300] [--size 32]

Three classes, one sub-folder each (``square/``, ``disc/``, ``cross/``): a shape of a random colour, size
and place on a dark background, as 8-bit RGB PNGs. Any folder laid out like this (one sub-folder of
images per class) is a diffguide data set: ``diffguide train --data FOLDER``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def shape_image(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r = rng.uniform(0.18, 0.32) * size
    cy, cx = rng.uniform(r + 1, size - r - 1, 2)
    if kind == "square":
        mask = (abs(yy - cy) <= r * 0.8) & (abs(xx - cx) <= r * 0.8)
    elif kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    else:  # cross
        mask = ((abs(yy - cy) <= r) & (abs(xx - cx) <= r / 3)) | ((abs(xx - cx) <= r) & (abs(yy - cy) <= r / 3))
    img = np.zeros((size, size, 3), np.float64) + rng.uniform(0, 40, 3)
    img[mask] = rng.uniform(80, 255, 3)
    return img.clip(0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--n", type=int, default=300, help="images per class")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    for kind in ("square", "disc", "cross"):
        (a.folder / kind).mkdir(parents=True, exist_ok=True)
        for i in range(a.n):
            Image.fromarray(shape_image(kind, a.size, rng)).save(a.folder / kind / f"{i:04d}.png")
    print(f"{3 * a.n} images in {a.folder}/{{square,disc,cross}}/")


if __name__ == "__main__":
    main()
