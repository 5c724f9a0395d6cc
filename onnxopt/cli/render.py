"""A pipeline report as rich tables: one row per pass, the totals, and the notes."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from onnxopt import phases
from onnxopt.html.fmt import count as fmt_int  # one number format for terminal and page
from onnxopt.html.fmt import size as fmt_bytes
from onnxopt.report import Metrics, PassReport, PipelineReport

STATUS_STYLE = {
    "kept": "green",
    "unchanged": "dim",
    "rolled back": "red",
    "error": "red",
    "skipped": "yellow",
}

COLUMNS = (
    ("pass", "left"),
    ("kind", "left"),
    ("status", "left"),
    ("rewrites", "right"),
    ("nodes", "right"),
    ("params", "right"),
    ("MACs", "right"),
    ("size", "right"),
    ("err vs orig", "right"),
    ("time", "right"),
    ("peak RSS", "right"),
)

#: notes printed per pass; the rest are in the JSON report
MAX_NOTES = 8


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
    if m.metric is not None:
        parts.append(f"metric {m.metric:.4g}")
    return " ".join(parts) if parts else "-"


def _row(p: PassReport) -> list[str]:
    style = STATUS_STYLE.get(p.status, "")
    return [
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
        fmt_bytes(p.peak_rss_mb * 2**20) if p.peak_rss_mb is not None else "-",
    ]


def pass_table(report: PipelineReport, verbose: bool = False) -> Table:
    """One row per pass; exact passes that found nothing to do only with ``verbose``."""
    table = Table(title="onnxopt pipeline", title_justify="left", show_lines=False)
    for col, just in COLUMNS:
        table.add_column(col, justify=just, no_wrap=col in ("pass", "status", "kind"))  # type: ignore[arg-type]
    for p in report.passes:
        if verbose or not (p.status == "unchanged" and p.exact):
            table.add_row(*_row(p))
    return table


def total_line(report: PipelineReport) -> str:
    """The whole pipeline in one line: sizes before → after, error and accuracy."""
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
    if report.metric_original is not None and report.metric_final is not None:
        line += f"  {report.metric} {report.metric_original:.4g} → {report.metric_final:.4g}"
    peak = f", peak RSS {fmt_bytes(report.peak_rss_mb * 2**20)}" if report.peak_rss_mb else ""
    return f"[bold]total[/] {line}  ({report.seconds:.1f}s{peak}, feeds: {report.feeds})"


def note_lines(report: PipelineReport) -> list[str]:
    """Why passes failed, what they noted (the first few each), and the pipeline's notes."""
    out: list[str] = []
    for p in report.passes:
        if p.reason:
            out.append(f"  [red]{escape(p.name)}[/]: {escape(p.reason)}")
        if p.status == "unchanged" and p.exact:
            continue  # why an exact pass found nothing to do is in the JSON report
        for n in p.notes[:MAX_NOTES]:
            text = n if n.startswith(f"{p.name}:") else f"{p.name}: {n}"
            out.append(f"  [dim]{escape(text)}[/]")
        if len(p.notes) > MAX_NOTES:
            out.append(
                f"  [dim]{escape(p.name)}: … {len(p.notes) - MAX_NOTES} more notes in "
                "the JSON report[/]"
            )
    out += [f"  [yellow]note[/]: {escape(n)}" for n in report.notes]
    return out


def render(
    report: PipelineReport,
    console: Console | None = None,
    *,
    notes: bool = True,
    verbose: bool = False,
) -> None:
    """Print the report: the pass table, the totals and (with ``notes``) the notes."""
    console = console or Console()
    table = pass_table(report, verbose)
    if table.row_count:
        console.print(table)
    quiet = [p.name for p in report.passes if p.status == "unchanged" and p.exact]
    if quiet and not verbose:
        console.print(f"[dim]nothing to do for: {escape(', '.join(quiet))}[/]")
    console.print(total_line(report))
    if report.time_breakdown:
        console.print(
            f"[dim]time: {escape(phases.line(report.time_breakdown, report.time_calls))}[/]"
        )
    if notes:
        for line in note_lines(report):
            console.print(line)
