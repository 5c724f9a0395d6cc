"""The report page: one self-contained HTML file (styles, data and plots inline; no script, no
network). It renders a ``PipelineReport`` as JSON data (``PipelineReport.to_dict()``), so the
same page comes from a run (``--html``) or from a saved report (``onnxopt report RUN.json``).

Sections: a summary, the pipeline (one row per pass), per-layer error, the per-op profile, the
trade-offs a lossy pass measured, and the regions the passes changed; the last four appear
when the report's ``analysis`` (or a pass's ``details["candidates"]``) has their data. The report
itself is embedded as ``<script type="application/json" id="onnxopt-report">``.
"""

from __future__ import annotations

import json
import math
import re
from html import escape
from typing import Any

from onnxopt import phases
from onnxopt.html import fmt
from onnxopt.html import sections as sec

CSS = """
:root{--fg:#1f2328;--muted:#57606a;--line:#d8dee4;--bg:#fff;--soft:#f6f8fa;--ok:#1a7f37;
--bad:#cf222e;--warn:#9a6700;--accent:#3b6fb6}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{padding:22px 32px 14px;border-bottom:1px solid var(--line);background:var(--soft)}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:18px 0 8px}
main{padding:0 32px 40px;max-width:1500px}
nav a{margin-right:14px;color:var(--accent);text-decoration:none}
.sub{color:var(--muted)}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:14px 0 0}
.card{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
min-width:150px}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:17px;font-weight:600}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.hl td{background:#fff4e5}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.kept{background:#dafbe1;color:var(--ok)}.rolled-back,.error{background:#ffebe9;color:var(--bad)}
.unchanged{background:#eaeef2;color:var(--muted)}.skipped{background:#fff8c5;color:var(--warn)}
.why{color:var(--bad);min-width:260px;max-width:420px}
.dropped{color:var(--warn);min-width:260px;max-width:420px;font-size:12px}
details{margin:2px 0}summary{cursor:pointer;color:var(--muted)}
.notes li{color:var(--muted)}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.scroll{overflow-x:auto;max-width:100%}
.plot,.graph{display:block;max-width:100%;height:auto;margin:8px 0}
.empty{color:var(--muted);font-style:italic}
code{background:var(--soft);padding:0 4px;border-radius:4px}
"""


def render_page(report: dict[str, Any], title: str = "") -> str:
    """The whole page for a report dict (``PipelineReport.to_dict()`` or its JSON)."""
    analysis = report.get("analysis") or {}
    name = title or analysis.get("title") or "onnxopt report"
    parts = [
        sec.layers_section(analysis.get("layers")),
        sec.profile_section(analysis.get("profile")),
        sec.tradeoff_section(report.get("passes", [])),
        sec.graph_section(analysis.get("graph")),
        sec.details_section(report.get("passes", [])),
    ]
    nav = ['<a href="#pipeline">pipeline</a>'] + [
        f'<a href="#{i}">{label}</a>' for i, label, body in parts if body
    ]
    body = [_header(report, name, nav), "<main>", _pipeline(report)]
    body += [body_html for _, _, body_html in parts if body_html]
    errors = analysis.get("errors") or {}
    if errors:
        body.append(
            '<p class="empty">not computed: '
            + "; ".join(f"{escape(k)}: {escape(str(v))}" for k, v in errors.items())
            + "</p>"
        )
    body.append("</main>")
    data = json.dumps(_finite(report), separators=(",", ":")).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(name)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + f'\n<script type="application/json" id="onnxopt-report">{data}</script>\n'
        "</body></html>\n"
    )


_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s/;,:()]+/)+([^\s/;,:()]+/[^\s/;,:()]+)")


def short_paths(text: str) -> str:
    """Absolute paths in ``text`` cut to their last two parts (the JSON keeps them whole)."""
    return _ABS_PATH.sub(r"…/\1", text)


def _finite(obj: Any) -> Any:
    """JSON has no inf/nan: they become strings, as in ``PipelineReport.to_json``."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _header(report: dict[str, Any], name: str, nav: list[str]) -> str:
    o, f = report.get("original") or {}, report.get("final") or {}
    passes = report.get("passes", [])
    status = [p.get("status") for p in passes]
    cards = [
        ("nodes", fmt.change(o, f, "nodes")),
        ("parameters", fmt.change(o, f, "params")),
        ("MACs", fmt.change(o, f, "flops")),
        ("size", fmt.change(o, f, "bytes", fmt.size)),
        (
            "passes",
            f"{status.count('kept')} kept, {status.count('rolled back')} rolled back"
            + (f", {status.count('error')} failed" if "error" in status else ""),
        ),
    ]
    fvo = report.get("final_vs_original") or {}
    if report.get("accuracy_final") is not None:
        cards.append(
            (
                "accuracy",
                f"{fmt.num(report.get('accuracy_original'))} % → "
                f"{fmt.num(report.get('accuracy_final'))} %",
            )
        )
    if fvo.get("cosine") is not None:
        cards.append(("cosine vs original", fmt.cosine(fvo["cosine"])))
    prof = (report.get("analysis") or {}).get("profile") or {}
    if prof.get("before") and prof.get("after"):
        cards.append(
            (
                "kernel time / run",
                f"{fmt.ms(prof['before']['total_ms'])} → {fmt.ms(prof['after']['total_ms'])}",
            )
        )
    feeds = str(report.get("feeds", ""))
    sub = (
        f"inputs: {escape(short_paths(feeds))} · budget: "
        f"{escape(str(report.get('budget', '')))} · target: {escape(str(report.get('target', '')))}"
        f" · {fmt.num(report.get('seconds'), 3)} s"
    )
    if report.get("time_breakdown"):  # where the seconds went (onnxopt.phases)
        sub += f" ({escape(phases.line(report['time_breakdown'], report.get('time_calls')))})"
    return (
        f"<header><h1>{escape(name)}</h1><div class=sub>{sub}</div>"
        '<div class="cards" id="summary">'
        + "".join(
            f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div>'
            "</div>"
            for k, v in cards
        )
        + f'</div><nav style="margin-top:12px">{"".join(nav)}</nav></header>'
    )


PIPELINE_COLUMNS = (
    "pass",
    "kind",
    "status",
    "rewrites",
    "nodes",
    "params",
    "MACs",
    "size",
    "cosine",
    "max abs err",
    "accuracy %",
    "time",
)


def _pipeline(report: dict[str, Any]) -> str:
    passes = report.get("passes", [])
    busy = [p for p in passes if p.get("status") != "unchanged"]
    idle = [p for p in passes if p.get("status") == "unchanged"]
    head = "".join(f"<th>{c}</th>" for c in PIPELINE_COLUMNS)
    notes = report.get("notes") or []
    extra = (
        '<ul class="notes">'
        + "".join(f"<li>{escape(short_paths(n))}</li>" for n in notes)
        + "</ul>"
        if notes
        else ""
    )
    idle_html = ""
    if idle:
        idle_html = (
            f"<details><summary>{len(idle)} passes changed nothing: "
            + escape(", ".join(p.get("name", "") for p in idle))
            + '</summary><div class="scroll"><table id="pipeline-unchanged"><thead><tr>'
            f"{head}</tr></thead><tbody>{''.join(_pass_row(p) for p in idle)}</tbody></table>"
            "</div></details>"
        )
    return (
        '<section id="pipeline"><h2>Pipeline</h2>'
        '<p class="sub">Every pass was checked in onnxruntime against the previous stage and the '
        "original; a pass that broke its tolerance was rolled back. Cosine, max abs error and "
        "accuracy are the stage's, against the original.</p>"
        '<div class="scroll"><table id="pipeline-table"><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(_pass_row(p) for p in busy)}</tbody></table></div>"
        f"{idle_html}{extra}</section>"
    )


def _pass_row(p: dict[str, Any]) -> str:
    """One pass as a table row."""
    b, a, vo = p.get("before") or {}, p.get("after") or {}, p.get("vs_original") or {}
    status = p.get("status", "")
    why = p.get("reason") or ""
    notes = p.get("notes") or []
    cell = f'<span class="badge {status.replace(" ", "-")}">{escape(status)}</span>'
    if why:
        cell += f'<div class="why">{escape(why)}</div>'
    dropped = p.get("dropped_sites") or []
    if dropped:
        cell += f'<div class="dropped">bisection dropped {_dropped(dropped)}</div>'
    if notes:
        cell += (
            f"<details><summary>{len(notes)} note{'s' * (len(notes) != 1)}</summary>"
            '<ul class="notes">'
            + "".join(f"<li>{escape(short_paths(n))}</li>" for n in notes)
            + "</ul></details>"
        )
    return (
        f'<tr class="pass" data-pass="{escape(p.get("name", ""))}">'
        f"<td>{escape(p.get('name', ''))}</td>"
        f"<td>{'exact' if p.get('exact') else 'lossy'}</td><td>{cell}</td>"
        f'<td class="n">{p.get("rewrites", 0)}</td>'
        f'<td class="n">{fmt.change(b, a, "nodes")}</td>'
        f'<td class="n">{fmt.change(b, a, "params")}</td>'
        f'<td class="n">{fmt.change(b, a, "flops")}</td>'
        f'<td class="n">{fmt.change(b, a, "bytes", fmt.size)}</td>'
        f'<td class="n">{fmt.cosine(vo.get("cosine"))}</td>'
        f'<td class="n">{fmt.num(vo.get("max_abs"), 3)}</td>'
        f'<td class="n">{fmt.num(vo.get("accuracy"))}</td>'
        f'<td class="n">{p.get("seconds", 0):.2f} s</td></tr>'
    )


def _dropped(sites: list[str]) -> str:
    if not sites:
        return ""
    shown = ", ".join(escape(s) for s in sites[:8])
    more = f" and {len(sites) - 8} more" if len(sites) > 8 else ""
    return f"{len(sites)} site{'s' * (len(sites) != 1)}: {shown}{more}"
