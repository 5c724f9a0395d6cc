"""Number formats of the reports: the HTML page and the terminal tables (onnxopt.cli.render)."""

from __future__ import annotations

from typing import Any


def count(n: Any) -> str:
    """1.23M-style count; "-" for a missing value."""
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def size(n: Any) -> str:
    """1.23 MB-style size (powers of 1024); "-" for a missing value."""
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def num(v: Any, digits: int = 4) -> str:
    """A float with ``digits`` significant digits; "-" for a missing value."""
    if isinstance(v, str):
        return v
    if not isinstance(v, (int, float)):
        return "-"
    return f"{v:.{digits}g}"


def cosine(v: Any) -> str:
    return f"{v:.6f}" if isinstance(v, (int, float)) else "-"


def pct(v: Any) -> str:
    """A 0..1 share as a percentage."""
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "-"


def ms(v: Any) -> str:
    return f"{v:.3f} ms" if isinstance(v, (int, float)) else "-"


def change(before: dict[str, Any], after: dict[str, Any], key: str, f=count) -> str:
    """ "a → b" (or "a" when unchanged)."""
    a, b = before.get(key), after.get(key)
    if a == b or b is None:
        return f(a)
    return f"{f(a)} → {f(b)}"
