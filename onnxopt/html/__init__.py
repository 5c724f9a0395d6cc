"""The HTML report: one self-contained page per run (:func:`render_page`, :func:`write_page`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxopt.html.page import render_page

__all__ = ["read_report", "render_page", "write_page"]


def read_report(path: str | Path) -> dict[str, Any]:
    """A saved JSON report (``--report``) as a dict; a one-line DataError when it is not one."""
    from onnxopt.errors import DataError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    except ValueError as e:
        raise DataError(f"{path}: not JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("passes"), list):
        raise DataError(f"{path}: not an onnxopt report (no 'passes' list)")
    return data


def write_page(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Render ``report`` and write it to ``path`` atomically."""
    import os
    import tempfile

    path = Path(path)
    text = render_page(report, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
