"""What a search writes to its folder, each file atomically:

- ``front.json``: the Pareto front (quality, latency, size) of the fully verified trials, the
  chosen model, the settings and the original's figures;
- ``trials.json``: every trial, its steps, cheap and full results, or its error;
- ``front.html``: one self-contained page, the plot as inline SVG (latency against quality,
  every trial, the front joined, the choice ringed) and the front as a table;
- ``reports/<trial>.json``: for every point on the front, each step's outcome (its pass
  report, notes, where it ran) and the evaluations;
- ``best.onnx``: the chosen model.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from onnxopt.search.scheduler import Node, SearchResult, TrialState


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write through a temporary file in the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _dump(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, default=str)


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k != "ts"}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    return obj


def _steps(node: Node) -> list[Node]:
    out = []
    n: Node | None = node
    while n is not None and n.step is not None:
        out.append(n)
        n = n.parent
    return out[::-1]


def trial_record(ts: TrialState) -> dict[str, Any]:
    return {
        **ts.trial.to_json(),
        "status": ts.status,
        "error": ts.error or None,
        "promoted": ts.promoted,
        "digest": ts.leaf.digest or None,
        "cheap": ts.cheap,
        "full": ts.full,
    }


def report(ts: TrialState) -> dict[str, Any]:
    """Everything known about one trial: its steps as they ran, and its evaluations."""
    steps = []
    for n in _steps(ts.leaf):
        o = dict(n.outcome)
        steps.append({"step": n.step.to_json(), "label": n.step.label(), "cached": n.cached, **o})
    return {**trial_record(ts), "steps": steps}


def write_results(
    result: SearchResult, out: Path, info: dict[str, Any], best_path: Path | None = None
) -> dict[str, Path]:
    """Write every output of ``result`` under ``out``; returns {what: path}."""
    out.mkdir(parents=True, exist_ok=True)
    by_id = {ts.trial.id: ts for ts in result.trials}
    chosen = result.chosen["id"] if result.chosen else None
    paths = {"front": out / "front.json", "trials": out / "trials.json", "html": out / "front.html"}
    doc = {
        **info,
        "executor": result.executor,
        "seconds": result.seconds,
        "computed": result.computed,
        "chosen": chosen,
        "front": [{**p, "report": f"reports/{p['id']}.json"} for p in result.front],
    }
    write_atomic(paths["front"], _dump(doc))
    write_atomic(paths["trials"], _dump([trial_record(ts) for ts in result.trials]))
    for p in result.front:
        write_atomic(out / "reports" / f"{p['id']}.json", _dump(report(by_id[p["id"]])))
    write_atomic(paths["html"], page(result, info))
    if chosen is not None:
        leaf = by_id[chosen].leaf
        target = best_path or out / "best.onnx"
        write_atomic(target, Path(leaf.path).read_bytes())
        paths["best"] = target
    return paths


# ------------------------------------------------------------------------------------------
# The HTML page


W, H, PAD = 720, 420, 60


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def svg(result: SearchResult, info: dict[str, Any]) -> str:
    """Latency (x) against quality (y): cheap results grey, full ones blue, the front orange
    and joined, the chosen model ringed in red; the budget as a dashed line."""
    cheap = [
        {"id": ts.trial.id, "label": ts.trial.label(), **ts.cheap}
        for ts in result.trials
        if ts.cheap and ts.cheap.get("status") == "ok" and ts.cheap.get("quality") is not None
    ]
    full = [{"id": ts.trial.id, **ts.full} for ts in result.trials if ts.point()]
    full = [p for p in full if p.get("quality") is not None]
    pts = cheap + full
    if not pts:
        return "<p>No trial finished.</p>"
    xs = [p["latency_ms"] for p in pts]
    ys = [p["quality"] for p in pts]
    floor = info.get("quality_floor")
    if floor is not None:
        ys.append(floor)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or 0.5
    y0, y1 = y0 - pad, y1 + pad
    log = max(xs) > 20 * min(xs) > 0  # latencies over decades: a log axis
    x0, x1 = (min(xs) / 1.2, max(xs) * 1.2) if log else (0.0, max(xs) * 1.08)
    f = math.log10 if log else float

    def sx(x: float) -> float:
        return PAD + (f(x) - f(x0)) / (f(x1) - f(x0)) * (W - 2 * PAD)

    def sy(y: float) -> float:
        return H - PAD - (y - y0) / (y1 - y0) * (H - 2 * PAD)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-size="11">']
    parts += _axes(x0, x1, y0, y1, sx, sy, info, log)
    if floor is not None:
        parts.append(
            f'<line x1="{PAD}" x2="{W - PAD}" y1="{sy(floor):.1f}" y2="{sy(floor):.1f}" '
            'stroke="#c00" stroke-dasharray="4 3"/>'
            f'<text x="{W - PAD}" y="{sy(floor) - 4:.1f}" text-anchor="end" fill="#c00">budget</text>'
        )
    front = sorted(result.front, key=lambda p: p["latency_ms"])
    if len(front) > 1:
        line = " ".join(
            f"{sx(p['latency_ms']):.1f},{sy(p['quality']):.1f}"
            for p in front
            if p.get("quality") is not None
        )
        parts.append(f'<polyline points="{line}" fill="none" stroke="#e80" stroke-width="1.5"/>')
    parts += _points(cheap, full, {p["id"] for p in result.front}, sx, sy)
    c = result.chosen
    if c is not None and c.get("quality") is not None:
        parts.append(
            f'<circle cx="{sx(c["latency_ms"]):.1f}" cy="{sy(c["quality"]):.1f}" r="10" '
            'fill="none" stroke="#c00" stroke-width="2"/>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _points(cheap, full, front_ids, sx, sy) -> list[str]:  # noqa: ANN001 - local helpers
    """Cheap results small and grey, full ones blue, the front's orange; a tooltip each."""
    out = []
    for p, colour, r in [(p, "#bbb", 3) for p in cheap] + [
        (p, "#e80" if p["id"] in front_ids else "#36c", 5) for p in full
    ]:
        tip = html.escape(
            f"{p['id']} {p.get('label', '')}: {p['quality']:.2f}, {p['latency_ms']:.4g} ms, "
            f"{p['size_mb']:.3g} MB"
        )
        out.append(
            f'<circle cx="{sx(p["latency_ms"]):.1f}" cy="{sy(p["quality"]):.1f}" r="{r}" '
            f'fill="{colour}"><title>{tip}</title></circle>'
        )
    return out


def _axes(x0, x1, y0, y1, sx, sy, info, log=False) -> list[str]:  # noqa: ANN001 - local helpers
    out = [
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#000"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#000"/>',
    ]
    xt = [x0 * (x1 / x0) ** (i / 4) for i in range(5)] if log else _ticks(x0, x1)
    for x in xt:
        out.append(f'<text x="{sx(x):.1f}" y="{H - PAD + 16}" text-anchor="middle">{x:.3g}</text>')
    for y in _ticks(y0, y1):
        out.append(f'<text x="{PAD - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    out.append(
        f'<text x="{W / 2}" y="{H - 18}" text-anchor="middle">latency (ms, median, batch 1'
        f"{', log scale' if log else ''})</text>"
    )
    out.append(
        f'<text x="16" y="{H / 2}" text-anchor="middle" transform="rotate(-90 16 {H / 2})">'
        f"{html.escape(info.get('metric_name', 'quality'))}</text>"
    )
    return out


def page(result: SearchResult, info: dict[str, Any]) -> str:
    """The whole page: summary, plot, legend, the front as a table linking each report."""
    rows = []
    chosen = result.chosen["id"] if result.chosen else None
    for p in sorted(result.front, key=lambda p: p["latency_ms"]):
        mark = " (chosen)" if p["id"] == chosen else ""
        q = "-" if p.get("quality") is None else f"{p['quality']:.2f}"
        rows.append(
            f"<tr><td><a href='reports/{p['id']}.json'>{p['id']}</a>{mark}</td>"
            f"<td>{html.escape(p['label'])}</td><td>{q}</td><td>{p['latency_ms']:.4g}</td>"
            f"<td>{p.get('speedup') or 0:.2f}x</td><td>{p['size_mb']:.3g}</td>"
            f"<td>{'yes' if p.get('feasible') else html.escape(p.get('why') or 'no')}</td>"
            f"<td>{html.escape(str(p.get('node', '')))}</td></tr>"
        )
    head = (
        "<tr><th>trial</th><th>passes</th><th>"
        + html.escape(info.get("metric_name", "quality"))
        + "</th><th>ms</th><th>speed-up</th><th>MB</th><th>within budget</th><th>node</th></tr>"
    )
    title = html.escape(f"onnxopt search: {info.get('model', '')}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(info.get('summary', ''))}</p>"
        f"{svg(result, info)}<p>grey: cheap trials (accuracy on a subset, a short bench); "
        "blue: verified in full (every run, timed in interleaved rounds with the original); "
        "orange, joined: the Pareto front; red ring: the chosen model. Hover a point for its "
        f"trial.</p><h2>Pareto front</h2><table>{head}{''.join(rows)}</table>"
        "</body></html>\n"
    )
