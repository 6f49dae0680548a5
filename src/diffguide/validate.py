"""Argument checks shared across the package (errors name the parameter and the bad value)."""

from __future__ import annotations

from typing import Any

__all__ = ["is_positive_int", "positive_int", "optional_positive_int", "check_int"]


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an ``int`` >= 1 (``bool`` and numpy integers are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive integer (see :func:`is_positive_int`), else a ``ValueError``
    ``"<name> must be a positive integer, got <value!r>"``."""
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def optional_positive_int(value: Any, name: str) -> int | None:
    """``value`` if it is ``None`` or a positive integer, else a ``ValueError``
    ``"<name> must be a positive integer or None, got <value!r>"``."""
    if value is not None and not is_positive_int(value):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return value


def check_int(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` if it is an ``int`` in ``[lo, hi]`` (``hi = None``: no upper bound), else a ``ValueError``
    naming ``name``, the value and the range."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi):
        return value
    want = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
    raise ValueError(f"{name} must be {want}, got {value!r}")
