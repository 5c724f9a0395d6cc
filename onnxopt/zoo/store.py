"""Where the zoo's framework groups (scikit-learn, Keras, PP-OCR) keep what they build.

Each group has its own folder under :func:`onnxopt.zoo.zoo_dir`, named after a short hash of
the group's builder version and the versions of the packages that shape its files, so that a
package upgrade or a builder change rebuilds the group instead of reusing stale files. Every
file is built under the zoo's file lock and written atomically, so parallel callers (pytest
workers, benchmark processes) build it once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
from collections.abc import Callable
from pathlib import Path

from onnxopt.zoo import _atomic, _lock, zoo_dir


def version(package: str) -> str:
    """The installed version of ``package`` ("none" when it is not installed)."""
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "none"


def group_dir(group: str, builder: int, packages: tuple[str, ...]) -> Path:
    """``zoo_dir()/<group>-<hash>``: the hash covers ``builder`` and the package versions."""
    key = json.dumps([builder, {p: version(p) for p in packages}], sort_keys=True)
    d = zoo_dir() / f"{group}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    d.mkdir(parents=True, exist_ok=True)
    return d


def cached(path: Path, write: Callable[[Path], None]) -> Path:
    """``path`` if it exists, else ``write(tmp)`` under the zoo lock and move it into place."""
    if path.exists():
        return path
    with _lock(f"{path.parent.name}-{path.name}"):
        if not path.exists():
            _atomic(path, write)
    return path


def cached_many(paths: list[Path], write: Callable[[dict[Path, Path]], None]) -> list[Path]:
    """Like :func:`cached` for files made together: ``write({final: tmp})`` fills every tmp."""
    if all(p.exists() for p in paths):
        return paths
    with _lock(f"{paths[0].parent.name}-{paths[0].name}"):
        if all(p.exists() for p in paths):
            return paths
        tmps = {p: p.with_name(f".{p.stem}.{os.getpid()}.tmp{p.suffix}") for p in paths}
        try:
            write(tmps)
            for p, t in tmps.items():
                os.chmod(t, 0o644)
                os.replace(t, p)
        finally:
            for t in tmps.values():
                if t.exists():
                    t.unlink()
    return paths
