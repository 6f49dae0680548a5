"""Data loading (MNIST, image folders, npz), its errors, and the (seed, step) batch stream."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffguide.data import Batches, ImageData, check_batch_size, load_data


def _toy(n: int = 103, size: int = 4, seed: int = 0) -> ImageData:
    """``n`` random (left-right asymmetric) images whose label is their index."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 2 - 1
    return ImageData(x, torch.arange(n), n, tuple(map(str, range(n))), "toy")


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw)
    return path


def _rgb(h: int, w: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


# ---------------------------------------------------------------- MNIST

def test_mnist_shapes_range_classes() -> None:
    d = load_data("mnist:test")
    assert d.name == "mnist:test" and len(d) == 10_000
    assert d.images.shape == (10_000, 1, 28, 28) and d.images.dtype == torch.float32
    assert d.channels == 1 and d.image_size == 28
    assert d.images.min() == -1 and d.images.max() == 1
    assert d.labels.dtype == torch.int64 and set(d.labels.tolist()) == set(range(10))
    assert d.num_classes == 10 and d.class_names == tuple("0123456789")
    train = load_data("mnist")
    assert train.name == "mnist:train" and len(train) == 60_000


def test_mnist_channels_and_resize() -> None:
    d = load_data("mnist:test", image_size=32, channels=3)
    assert d.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(d.images[:, 0], d.images[:, 2])
    assert d.images.min() >= -1 and d.images.max() <= 1


# ---------------------------------------------------------------- Batches

def test_batches_deterministic_and_order_free() -> None:
    d = _toy()
    a, b = Batches(d, 10, seed=3), Batches(d, 10, seed=3)
    steps = [25, 3, 25, 0, 999, 4]
    got_a = {s: a.get(s) for s in steps}
    got_b = {s: b.get(s) for s in reversed(steps)}  # another order: no hidden state
    for s in steps:
        assert torch.equal(got_a[s][0], got_b[s][0]) and torch.equal(got_a[s][1], got_b[s][1])
    x, c = a.get(7)
    assert x.shape == (10, 1, 4, 4) and c.shape == (10,)
    assert torch.equal(x, d.images[c])  # images stay paired with their labels
    assert not torch.equal(Batches(d, 10, seed=4).get(0)[1], a.get(0)[1])


def test_batches_epochs_cover_each_image_once() -> None:
    d = _toy(103)
    b = Batches(d, 10, seed=1)
    assert b.steps_per_epoch == 10
    orders = []
    for e in range(3):
        c = torch.cat([b.get(e * 10 + i)[1] for i in range(10)])
        assert c.unique().numel() == 100  # each image at most once; 3 dropped per epoch
        orders.append(c)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def test_batches_cache_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    d, calls = _toy(), []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: calls.append(1) or randperm(*a, **k))
    b = Batches(d, 10)
    for s in range(25):
        b.get(s)
    assert len(calls) == 3  # epochs 0, 1, 2


def test_hflip_rate_and_off() -> None:
    d = _toy(200, size=5)
    flipped_ref = d.images.flip(-1)
    on, off = Batches(d, 100, seed=0, hflip=True), Batches(d, 100, seed=0)
    n = flips = 0
    for s in range(20):
        x, c = on.get(s)
        is_flip = (x == flipped_ref[c]).flatten(1).all(1)
        is_same = (x == d.images[c]).flatten(1).all(1)
        assert bool((is_flip ^ is_same).all())
        flips += int(is_flip.sum())
        n += len(c)
        assert torch.equal(x, on.get(s)[0])  # a pure function of (seed, step)
        x_off, c_off = off.get(s)
        assert torch.equal(x_off, d.images[c_off])
    assert abs(flips - n / 2) < 5 * math.sqrt(n / 4)  # Binomial(n, 1/2), 5 sigma


def test_batch_size_checks() -> None:
    d = _toy(7)
    with pytest.raises(ValueError, match=r"batch_size 8 exceeds the 7 images in toy"):
        check_batch_size(d, 8)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the 7"):
        Batches(d, 8)
    with pytest.raises(ValueError, match="positive integer"):
        check_batch_size(d, 0)
    with pytest.raises(ValueError, match="step must be a non-negative integer"):
        Batches(d, 2).get(-1)


# ---------------------------------------------------------------- image folders

def test_folder_rgb_png_and_jpeg(tmp_path: Path) -> None:
    _save(tmp_path / "dog" / "a.png", _rgb(8, 8, (255, 0, 0)))
    _save(tmp_path / "dog" / "sub" / "b.jpg", _rgb(8, 8, (0, 0, 255)), quality=95)
    _save(tmp_path / "cat" / "c.png", _rgb(8, 8, (0, 255, 0)))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (tmp_path / ".cache").mkdir()  # hidden: not a class
    d = load_data(str(tmp_path))
    assert d.class_names == ("cat", "dog") and d.num_classes == 2
    assert d.labels.tolist() == [0, 1, 1]
    assert d.images.shape == (3, 3, 8, 8) and d.name == str(tmp_path)
    assert torch.equal(d.images[0, :, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))  # exact PNG green
    assert torch.allclose(d.images[2, :, 4, 4], torch.tensor([-1.0, -1.0, 1.0]), atol=0.05)  # JPEG blue


def test_folder_grayscale_and_channels(tmp_path: Path) -> None:
    for k in range(3):
        _save(tmp_path / f"class{k}" / "x.png", np.full((6, 6), 51 * k, np.uint8), "L")
    d = load_data(str(tmp_path))
    assert d.images.shape == (3, 1, 6, 6)
    assert torch.allclose(d.images[:, 0, 0, 0], torch.tensor([0, 51, 102]) / 127.5 - 1)
    assert load_data(str(tmp_path), channels=3).images.shape == (3, 3, 6, 6)


def test_folder_resize_and_center_crop(tmp_path: Path) -> None:
    # 20 wide x 10 high: red | green (10 columns) | blue; the center crop keeps the green.
    a = np.concatenate([_rgb(10, 5, (255, 0, 0)), _rgb(10, 10, (0, 255, 0)), _rgb(10, 5, (0, 0, 255))], 1)
    _save(tmp_path / "k" / "wide.png", a)
    with pytest.raises(ValueError, match=r"not square .*wide\.png is 20x10.*image_size"):
        load_data(str(tmp_path))
    d = load_data(str(tmp_path), image_size=10)
    assert d.images.shape == (1, 3, 10, 10)
    assert torch.equal(d.images[0], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 10, 10))
    # Downscale by 2 (40 x 20 -> 20 x 10) then crop: the interior is green up to interpolation.
    _save(tmp_path / "k" / "wide.png", np.repeat(np.repeat(a, 2, 0), 2, 1))
    d = load_data(str(tmp_path), image_size=10)
    assert d.images.shape == (1, 3, 10, 10)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None]
    assert (d.images[0, :, :, 2:8] - green).abs().max() < 0.02
    # Tall images crop vertically; upscaling works too.
    _save(tmp_path / "k" / "wide.png", np.ascontiguousarray(a.transpose(1, 0, 2)))
    d = load_data(str(tmp_path), image_size=16)
    assert d.images.shape == (1, 3, 16, 16)
    assert (d.images[0, :, 4:12, :] - green).abs().max() < 0.02


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no class folders in"):
        load_data(str(tmp_path))
    _save(tmp_path / "a" / "gray.png", np.zeros((4, 4), np.uint8), "L")
    _save(tmp_path / "a" / "colour.png", _rgb(4, 4, (1, 2, 3)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*empty holds no image files"):
        load_data(str(tmp_path))
    (tmp_path / "empty").rmdir()
    with pytest.raises(ValueError, match=r"mixes grayscale and colour.*gray\.png.*colour\.png.*channels"):
        load_data(str(tmp_path))
    assert load_data(str(tmp_path), channels=1).images.shape == (2, 1, 4, 4)
    _save(tmp_path / "a" / "big.png", np.zeros((6, 6), np.uint8), "L")
    with pytest.raises(ValueError, match=r"differ in size.*image_size"):
        load_data(str(tmp_path), channels=3)
    assert load_data(str(tmp_path), channels=3, image_size=4).images.shape == (3, 3, 4, 4)


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_folder_corrupt_image_named(tmp_path: Path, content: str) -> None:
    good = _save(tmp_path / "a" / "good.png", np.arange(64 * 64, dtype=np.uint8).reshape(64, 64), "L")
    data = good.read_bytes()
    bad = tmp_path / "a" / "bad.png"
    bad.write_bytes(b"this is not a png" if content == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png"):
        load_data(str(tmp_path))


# ---------------------------------------------------------------- npz

@pytest.mark.parametrize("layout", ["NHW", "NHWC1", "NHWC3", "NCHW1", "NCHW3"])
@pytest.mark.parametrize("scale", ["uint8", "float01", "float11"])
def test_npz_round_trip(tmp_path: Path, layout: str, scale: str) -> None:
    C = 3 if layout.endswith("3") else 1
    u8 = torch.randint(0, 256, (6, C, 5, 5), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    u8[0].fill_(0)
    u8[1].fill_(255)
    expected = u8.float() / 127.5 - 1
    a = u8.numpy()
    if layout == "NHW":
        a = a[:, 0]
    elif layout.startswith("NHWC"):
        a = a.transpose(0, 2, 3, 1)
    a = {"uint8": a, "float01": a / np.float32(255), "float11": a / np.float32(127.5) - 1}[scale]
    labels = np.array([0, 1, 2, 2, 1, 0])
    np.savez(tmp_path / "d.npz", images=a, labels=labels, class_names=np.array(["x", "y", "z"]))
    d = load_data(str(tmp_path / "d.npz"))
    assert d.images.shape == (6, C, 5, 5) and d.class_names == ("x", "y", "z")
    assert torch.allclose(d.images, expected, atol=1e-6)
    assert d.labels.tolist() == labels.tolist()


def test_npz_defaults_resize_and_channels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 6, 8), np.uint8), labels=np.array([0.0, 3.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="not square.*image_size"):
        load_data(str(tmp_path / "d.npz"))
    d = load_data(str(tmp_path / "d.npz"), image_size=3, channels=3)
    assert d.images.shape == (4, 3, 3, 3) and d.num_classes == 4 and d.class_names == ("0", "1", "2", "3")
    assert torch.allclose(d.images, torch.full_like(d.images, -1.0), atol=1e-6)


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_errors(tmp_path: Path) -> None:
    x = np.zeros((3, 4, 4), np.uint8)
    y = np.array([0, 1, 1])
    cases = [
        ({"labels": y}, r"d\.npz has no array 'images'"),
        ({"images": x}, r"d\.npz has no array 'labels'"),
        ({"images": x, "labels": y[:2]}, r"3 images but 2 labels"),
        ({"images": x, "labels": np.array([0, -1, 1])}, r"label -1 at index 1 is out of range"),
        ({"images": x, "labels": y, "class_names": np.array(["a"])}, r"label 1 at index 1 .*\[0, 1\)"),
        ({"images": x, "labels": np.array([0, 2.5, 1])}, r"labels must be integers; label .*2\.5.* index 1"),
        ({"images": np.linspace(0, 255, 48).reshape(3, 4, 4), "labels": y}, r"\[0, 1\] or \[-1, 1\].*\[0, 255\]"),
        ({"images": x.astype(np.int16) - 3, "labels": y}, r"integer images must lie in \[0, 255\].*-3"),
        ({"images": np.zeros((3, 4, 4, 2)), "labels": y}, r"shape \(3, 4, 4, 2\).*C = 1 or 3"),
        ({"images": x, "labels": y, "class_names": np.array([1, 2])}, r"class_names must be a 1-D string"),
    ]
    for arrays, message in cases:
        path = _npz(tmp_path / "d.npz", **arrays)
        with pytest.raises(ValueError, match=message):
            load_data(path)


# ---------------------------------------------------------------- specs and ImageData

def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such"):
        load_data(str(tmp_path / "no_such"))
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        load_data("missing.npz")
    with pytest.raises(ValueError, match="unknown data spec 'cifar10'"):
        load_data("cifar10")
    with pytest.raises(ValueError, match="unknown MNIST split in 'mnist:val'"):
        load_data("mnist:val")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"a\.txt is a file but not a \.npz"):
        load_data(str(tmp_path / "a.txt"))
    with pytest.raises(ValueError, match="channels must be 1, 3"):
        load_data("mnist", channels=2)


def test_image_data_validates() -> None:
    x = torch.zeros(2, 1, 3, 3)
    with pytest.raises(ValueError, match=r"bad: label 5 at index 1 is out of range.*\[0, 2\)"):
        ImageData(x, torch.tensor([0, 5]), 2, ("a", "b"), "bad")
    with pytest.raises(ValueError, match=r"\[-1, 1\].*\[0, 2\]"):
        ImageData(x + 2 * (torch.arange(18).view(2, 1, 3, 3) == 0), torch.tensor([0, 1]), 2, ("a", "b"), "bad")
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageData(x, torch.tensor([0, 1, 1]), 2, ("a", "b"), "bad")
    with pytest.raises(ValueError, match="square"):
        ImageData(torch.zeros(2, 1, 3, 4), torch.tensor([0, 1]), 2, ("a", "b"), "bad")
    d = ImageData(x, torch.tensor([0, 1]), 2, ["a", "b"], "ok")  # type: ignore[arg-type]
    assert d.class_names == ("a", "b") and "n=2" in repr(d)


def test_folder_exif_palette_and_16bit(tmp_path: Path) -> None:
    # EXIF orientation 6 (rotate 90 degrees to display): a 6 x 3 file is a 3 x 6 picture.
    a = _rgb(3, 6, (0, 255, 0))
    a[:, 0] = (255, 0, 0)  # left column red -> top row after rotation
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    (tmp_path / "rot").mkdir()
    im.save(tmp_path / "rot" / "r.png", exif=exif)
    with pytest.raises(ValueError, match=r"r\.png is 3x6"):
        load_data(str(tmp_path))
    d = load_data(str(tmp_path), image_size=3)
    assert torch.equal(d.images[0], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 3, 3))
    # A palette image with a gray palette and a 16-bit gray PNG both count as grayscale.
    p = Image.fromarray(np.full((3, 3), 7, np.uint8), "L").convert("P")
    p.putpalette([v for i in range(256) for v in (i, i, i)])
    p.save(tmp_path / "rot" / "r.png")
    Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(tmp_path / "rot" / "s.png")
    d = load_data(str(tmp_path))
    assert d.images.shape == (2, 1, 3, 3)
    assert torch.allclose(d.images[:, 0, 0, 0], torch.tensor([7 / 127.5 - 1, 1.0]))
