"""The label check shared by the data readers."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_labels"]


def check_labels(labels: Tensor, num_classes: int, source: str) -> None:
    """Raise a ``ValueError`` naming ``source`` and the first offending label unless every label
    lies in ``[0, num_classes)``."""
    bad = ((labels < 0) | (labels >= num_classes)).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(
            f"{source}: label {int(labels[i])} at index {i} is out of range; labels must be integers in "
            f"[0, {num_classes}) ({bad.numel()} out of range)"
        )
