"""PassReport / PipelineReport: what each pass did, as data and JSON (the CLI renders it: onnxopt.cli.render)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from onnxopt.summary import ModelSummary


@dataclass
class Metrics:
    """Errors of a stage against a reference (previous stage or the original)."""

    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    top1: float | None = None
    accuracy: float | None = None
    #: the task metric's score (``--metric``)
    metric: float | None = None


@dataclass
class PassReport:
    name: str
    exact: bool
    status: str = "pending"  # kept | rolled back | unchanged | error | skipped
    rewrites: int = 0
    notes: list[str] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    vs_previous: Metrics = field(default_factory=Metrics)
    vs_original: Metrics = field(default_factory=Metrics)
    dropped_sites: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: the process's peak resident memory while the pass (or its batch) ran, verified
    peak_rss_mb: float | None = None

    @property
    def kept(self) -> bool:
        return self.status == "kept"


@dataclass
class PipelineReport:
    passes: list[PassReport] = field(default_factory=list)
    original: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    feeds: str = ""
    budget: str = ""
    target: str = "onnx"
    seconds: float = 0.0
    accuracy_original: float | None = None
    accuracy_final: float | None = None
    final_vs_original: Metrics = field(default_factory=Metrics)
    notes: list[str] = field(default_factory=list)
    #: the output accuracy and top-1 were read from
    metric_output: str | None = None
    #: how many verification runs exact and lossy passes were checked on
    verified_on: dict[str, int] = field(default_factory=dict)
    #: what the HTML page shows beyond the passes (``onnxopt.analysis.analyze``): per-layer
    #: error, per-op profiles, changed regions; empty unless ``--html`` asked for it
    analysis: dict[str, Any] = field(default_factory=dict)
    #: the process's peak resident memory up to the end of the run
    peak_rss_mb: float | None = None
    #: the task metric (``--metric``) and its score on the original and the final model
    metric: str | None = None
    metric_original: float | None = None
    metric_final: float | None = None
    #: seconds per phase of the run (:mod:`onnxopt.phases`): checking outputs, the task
    #: metric, timing, calibration... and ``other``
    time_breakdown: dict[str, float] = field(default_factory=dict)
    #: how often each phase was entered (a model check, a metric call, a timed comparison)
    time_calls: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> list[PassReport]:
        return [p for p in self.passes if p.status in ("rolled back", "error")]

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def _clean(obj: Any) -> Any:
    """Make floats JSON-safe (inf/nan -> strings)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    return obj


def summary_dict(s: ModelSummary) -> dict[str, Any]:
    return {"nodes": s.nodes, "params": s.params, "flops": s.flops, "bytes": s.bytes}


class ProgressSink(Protocol):
    """How the manager tells a UI what it is doing (the CLI implements it with rich)."""

    def start(self, total: int) -> None: ...
    def pass_started(self, name: str, index: int) -> None: ...
    def update(self, what: str, done: int, total: int) -> None: ...
    def pass_done(self, report: PassReport) -> None: ...
    def stop(self) -> None: ...
