"""The candidates a lossy pass tried, for the report's trade-off plot.

A candidate is one model a lossy pass or its bisection verified: a row ``{"label", "ok",
"cosine", "accuracy", "latency_ms", "chosen"}`` in ``PassReport.details["candidates"]``. Its
latency is a short median (:func:`onnxopt.timing.quick_latency`), measured only when the report
asks for it (``PassManager(measure_candidates=True)``, set by ``--html``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import first_line

logger = logging.getLogger(__name__)


def candidate_row(
    label: str,
    model: onnx.ModelProto,
    checked: Any,
    feed: dict[str, np.ndarray] | None,
    sites: list[str] | None = None,
) -> dict[str, Any]:
    """The row of a verified candidate (``checked``: its :class:`~onnxopt.verifier.Checked`);
    timed on ``feed`` unless it is None; ``sites``: the sites it was allowed (10 kept)."""
    c = checked.vs_original
    row: dict[str, Any] = {
        "label": label,
        "ok": checked.stage is not None,
        "cosine": c.cosine if c is not None and c.outputs else None,
        "accuracy": checked.accuracy,
        "latency_ms": None,
    }
    if sites is not None:
        row["sites"] = sites[:10]
    if feed is not None:
        row["latency_ms"] = latency_or_none(model, feed, label)
    return row


def input_row(verifier: Any, stage: Any, feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """The pass's input as a reference point: its error against the original and latency."""
    from onnxopt.verify import compare

    ref, out = verifier.full(verifier.first), verifier.full(stage)
    c = compare(ref, out)
    return {
        "label": "input of the pass",
        "ok": True,
        "cosine": c.cosine if c.outputs else None,
        "accuracy": verifier.accuracy(out) if verifier.feeds.labels is not None else None,
        "latency_ms": latency_or_none(stage.model, feed, "input"),
        "reference": True,
    }


def latency_or_none(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], label: str
) -> float | None:
    """:func:`onnxopt.timing.quick_latency`, or None when the model cannot be timed."""
    from onnxopt.timing import quick_latency

    try:
        return quick_latency(model, feed)
    except Exception as e:  # noqa: BLE001 - a plot point is not worth a failure
        logger.info("candidate %s not timed: %s", label, first_line(e))
        return None


def mark_chosen(tried: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bisection keeps its last passing trial: mark it ``chosen``."""
    ok = [i for i, t in enumerate(tried) if t["ok"]]
    return [{**t, "chosen": bool(ok) and i == ok[-1]} for i, t in enumerate(tried)]
