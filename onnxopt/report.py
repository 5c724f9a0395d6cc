"""PassReport / PipelineReport: what each pass did, as JSON and as a rich table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from onnxopt.model import ModelSummary


@dataclass
class Metrics:
    """Errors of a stage against a reference (previous stage or the original)."""

    max_abs: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    top1: float | None = None
    accuracy: float | None = None


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


# --------------------------------------------------------------------------------------------
# Rendering


def fmt_int(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{int(n)}"


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit, div in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def _delta(before: dict[str, Any], after: dict[str, Any], key: str, fmt=fmt_int) -> str:
    b, a = before.get(key), after.get(key)
    if b is None or a is None:
        return "-"
    if a == b:
        return fmt(a)
    return f"{fmt(b)}→{fmt(a)}"


def _err(m: Metrics) -> str:
    parts = []
    if m.max_abs is not None:
        parts.append(f"{m.max_abs:.2g}")
    if m.cosine is not None and m.cosine < 0.999999:
        parts.append(f"cos {m.cosine:.4f}")
    if m.accuracy is not None:
        parts.append(f"acc {m.accuracy:.2f}%")
    return " ".join(parts) if parts else "-"


STATUS_STYLE = {
    "kept": "green",
    "unchanged": "dim",
    "rolled back": "red",
    "error": "red",
    "skipped": "yellow",
}


def render(report: PipelineReport, console: Any = None, *, notes: bool = True,
           verbose: bool = False) -> None:
    """Print the report as a rich table (and the notes below it)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title="onnxopt pipeline", title_justify="left", show_lines=False)

    for col, just in (("pass", "left"), ("kind", "left"), ("status", "left"),
                      ("rewrites", "right"), ("nodes", "right"), ("params", "right"),
                      ("MACs", "right"), ("size", "right"), ("err vs orig", "right"),
                      ("time", "right")):
        table.add_column(col, justify=just, no_wrap=col in ("pass", "status", "kind"))  # type: ignore[arg-type]
    quiet = [p.name for p in report.passes if p.status == "unchanged" and p.exact]
    for p in report.passes:
        if p.status == "unchanged" and p.exact and not verbose:
            continue
        style = STATUS_STYLE.get(p.status, "")
        table.add_row(
            escape(p.name),
            "exact" if p.exact else "lossy",
            f"[{style}]{p.status}[/]" if style else p.status,
            str(p.rewrites) if p.rewrites else "-",
            _delta(p.before, p.after, "nodes"),
            _delta(p.before, p.after, "params"),
            _delta(p.before, p.after, "flops"),
            _delta(p.before, p.after, "bytes", fmt_bytes),
            _err(p.vs_original) if p.status == "kept" else "-",
            f"{p.seconds:.2f}s",
        )
    if table.row_count:
        console.print(table)
    if quiet and not verbose:
        console.print(f"[dim]nothing to do for: {escape(', '.join(quiet))}[/]")
    o, f = report.original, report.final
    line = (
        f"nodes {_delta(o, f, 'nodes')}  params {_delta(o, f, 'params')}  "
        f"MACs {_delta(o, f, 'flops')}  size {_delta(o, f, 'bytes', fmt_bytes)}  "
        f"max abs err {report.final_vs_original.max_abs or 0:.3g}"
    )
    if report.final_vs_original.cosine is not None:
        line += f"  cosine {report.final_vs_original.cosine:.5f}"
    if report.accuracy_original is not None and report.accuracy_final is not None:
        line += f"  accuracy {report.accuracy_original:.2f}% → {report.accuracy_final:.2f}%"
    console.print(f"[bold]total[/] {line}  ({report.seconds:.1f}s, feeds: {report.feeds})")
    if notes:
        for p in report.passes:
            if p.reason:
                console.print(f"  [red]{escape(p.name)}[/]: {escape(p.reason)}")
            if p.status == "unchanged" and p.exact:
                continue  # why an exact pass found nothing to do is in the JSON report
            for n in p.notes[:8]:
                text = n if n.startswith(f"{p.name}:") else f"{p.name}: {n}"
                console.print(f"  [dim]{escape(text)}[/]")
            if len(p.notes) > 8:
                console.print(f"  [dim]{escape(p.name)}: … {len(p.notes) - 8} more notes in the JSON"
                              " report[/]")
        for n in report.notes:
            console.print(f"  [yellow]note[/]: {escape(n)}")
