"""Options and helpers shared by CLI commands (the CLI owns all terminal output)."""

from __future__ import annotations

from pathlib import Path

import onnx
from rich.console import Console

from onnxopt.data import Feeds, get_feeds, parse_int_range, parse_shape_overrides
from onnxopt.model import load_model, save_model
from onnxopt.verify import Budget


def _console(stderr: bool) -> Console:
    probe = Console(stderr=stderr)
    # piped output: rich would wrap tables at 80 columns; reports read better wider
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 160)


console = _console(False)
err_console = _console(True)


def feeds_for(
    model: onnx.ModelProto,
    data: Path | None,
    shape: list[str] | None = None,
    int_range: str | None = None,
    batch: int | None = None,
    runs: int = 4,
    limit: int | None = None,
) -> Feeds:
    """Feeds from ``--data`` or synthesized from ``--shape`` / ``--int-range``."""
    return get_feeds(
        model,
        data,
        shapes=parse_shape_overrides(shape),
        int_range=parse_int_range(int_range),
        batch=batch,
        runs=runs,
        limit=limit,
    )


def budget_from(
    min_cosine: float | None = None,
    max_abs_err: float | None = None,
    min_top1_agreement: float | None = None,
    max_accuracy_drop: float | None = None,
) -> Budget:
    """A Budget from CLI options; cosine defaults to 0.99 when nothing else is set."""
    if min_cosine is None and max_abs_err is None and min_top1_agreement is None and (
        max_accuracy_drop is None
    ):
        min_cosine = 0.99
    return Budget(
        min_cosine=min_cosine,
        max_abs_err=max_abs_err,
        min_top1_agreement=min_top1_agreement,
        max_accuracy_drop=max_accuracy_drop,
    )


def read_model(path: Path) -> onnx.ModelProto:
    return load_model(path)


def write_model(model: onnx.ModelProto, out: Path, source: Path | None) -> Path:
    """Atomic write; refuses to overwrite the input."""
    return save_model(model, out, source=source)
