"""The report page's data sections: per-layer error, per-op profile, trade-offs, changed
regions. Each returns ``(anchor, label, html)``; the html is "" when the report has no data for
it."""

from __future__ import annotations

from html import escape
from typing import Any

from onnxopt.html import fmt
from onnxopt.html.graphview import draw, shorten
from onnxopt.html.svg import BLUE, GREEN, GREY, ORANGE, RED, Point, grouped_bars, line_plot, scatter

#: SQNR at or above this is float noise: drawn on one line with identical tensors, this
#: line sitting 10 dB above the highest SQNR below it
NOISE_DB = 100.0
Section = tuple[str, str, str]


def layers_section(layers: dict[str, Any] | None) -> Section:
    """SQNR of every tensor both models compute, along the original's depth."""
    if not layers or not layers.get("rows"):
        return "layers", "per-layer error", ""
    rows = layers["rows"]
    scored = [r for r in rows if r.get("error") is not None and r.get("cosine") is not None]
    jump, first = layers.get("jump"), layers.get("first_over")
    by_prov = sum(r.get("match") == "provenance" for r in rows)
    parts = [
        '<section id="layers"><h2>Per-layer error</h2>',
        f'<p class="sub">{len(rows)} tensors exist in both models ({by_prov} matched through '
        f"provenance), compared on {layers.get('runs')} runs in {layers.get('chunks')} chunks; "
        f"{len(scored)} have float values of the same shape. SQNR = 10·log10(Σa²/Σ(a−b)²) "
        f"against the original (higher is closer).</p>",
    ]
    if jump is not None:
        parts.append(f'<p id="jump">The error jumps at {_where(rows[jump])}.</p>')
    if first is not None:
        parts.append(
            f'<p id="first-over">First tensor over the threshold {layers.get("threshold"):g}: '
            f"{_where(rows[first])}.</p>"
        )
    if scored:
        parts.append(_layer_plot(rows, scored, jump, first))
    parts.append(_layer_table(rows, jump, first))
    not_compared = [r for r in rows if r.get("note") and r.get("cosine") is None]
    if not_compared:
        parts.append(
            f"<details><summary>{len(not_compared)} tensors not compared</summary><ul "
            'class="notes">'
            + "".join(
                f"<li>{escape(r['tensor'])}: {escape(r['note'])}</li>" for r in not_compared[:50]
            )
            + "</ul></details>"
        )
    return "layers", "per-layer error", "".join(parts) + "</section>"


def _where(r: dict[str, Any]) -> str:
    sq = "identical" if r.get("sqnr_db") is None else f"SQNR {r['sqnr_db']:.1f} dB"
    return (
        f"<code>{escape(r['tensor'])}</code> ({escape(r['op'])} "
        f"<code>{escape(r['node'])}</code>, depth {r['depth']}): {sq}, cosine "
        f"{fmt.cosine(r.get('cosine'))}, error {fmt.num(r.get('error'), 3)}"
    )


def _layer_plot(rows: list[dict], scored: list[dict], jump: int | None, first: int | None) -> str:
    lossy = [r["sqnr_db"] for r in scored if r["sqnr_db"] is not None and r["sqnr_db"] < NOISE_DB]
    ceiling = min(NOISE_DB, max(lossy) + 10.0) if lossy else NOISE_DB
    pts = []
    for r in sorted(scored, key=lambda r: (r["depth"], r["index"])):
        sq = r["sqnr_db"]
        y = ceiling if sq is None else min(sq, ceiling)
        tip = f"{r['tensor']} ({r['op']}, depth {r['depth']}): " + (
            "identical" if sq is None else f"{sq:.1f} dB, cosine {r['cosine']:.6f}"
        )
        pts.append(Point(r["depth"], y, tip, BLUE, hollow=sq is None or sq >= ceiling))
    marks = []
    if jump is not None:
        marks.append((rows[jump]["depth"], f"jump: {shorten(rows[jump]['tensor'], 30)}", RED))
    if first is not None and first != jump:
        marks.append((rows[first]["depth"], "first over threshold", ORANGE))
    return line_plot(
        pts,
        xlabel="depth in the original graph (nodes from the inputs)",
        ylabel="SQNR vs original (dB)",
        title="per-layer SQNR along the graph's depth",
        marks=marks,
        ycap=ceiling,
        cap_label=f"identical or ≥ {ceiling:.0f} dB",
    )


def _layer_table(rows: list[dict], jump: int | None, first: int | None) -> str:
    worst = sorted(
        (i for i, r in enumerate(rows) if r.get("error")),
        key=lambda i: rows[i]["sqnr_db"] if rows[i]["sqnr_db"] is not None else 1e9,
    )[:15]
    keep = sorted(set(worst) | {i for i in (jump, first) if i is not None})
    if not keep:
        return '<p class="empty">every compared tensor is identical</p>'
    body = "".join(
        f"<tr{' class=hl' if i in (jump, first) else ''}><td>{escape(rows[i]['tensor'])}</td>"
        f"<td>{escape(rows[i]['op'])}</td><td class=n>{rows[i]['depth']}</td>"
        f"<td class=n>{fmt.num(rows[i]['sqnr_db'], 4)}</td>"
        f"<td class=n>{fmt.cosine(rows[i]['cosine'])}</td>"
        f"<td class=n>{fmt.num(rows[i]['error'], 3)}</td><td>{escape(rows[i]['match'])}</td></tr>"
        for i in keep
    )
    return (
        "<h3>The tensors with the lowest SQNR</h3><table id=layer-table><thead><tr><th>tensor"
        "</th><th>op</th><th>depth</th><th>SQNR dB</th><th>cosine</th><th>error</th>"
        f"<th>matched by</th></tr></thead><tbody>{body}</tbody></table>"
    )


def profile_section(profile: dict[str, Any] | None) -> Section:
    """onnxruntime's profiler before and after, by op type and by node."""
    if not profile or not (profile.get("before") or profile.get("after")):
        return "profile", "per-op profile", ""
    sides = [(k, profile[k]) for k in ("before", "after") if profile.get(k)]
    first = sides[0][1]
    parts = [
        '<section id="profile"><h2>Where the time goes</h2>',
        '<p class="sub">onnxruntime\'s profiler, all graph optimizations, '
        f"{first.get('threads', 1)} thread(s); kernel time per run: each node's median over "
        + " and ".join(f"{s['runs']} runs ({k})" for k, s in sides)
        + ", the two models' runs interleaved. Op types and node names are onnxruntime's "
        "(after its own fusions).</p>",
        _profile_bars(sides),
        '<div class="row">',
    ]
    for k, s in sides:
        parts.append(
            f"<div><h3>{k}: {fmt.ms(s['total_ms'])} per run, by op type</h3>"
            + _table(
                f"profile-ops-{k}",
                ("op", "time / run", "share", "nodes"),
                [(r["op"], fmt.ms(r["ms"]), fmt.pct(r["share"]), r["nodes"]) for r in s["by_op"]],
            )
            + "</div>"
        )
    parts.append('</div><div class="row">')
    for k, s in sides:
        parts.append(
            f"<div><h3>{k}: top {len(s['by_node'])} nodes</h3>"
            + _table(
                f"profile-nodes-{k}",
                ("node", "op", "time / run", "share"),
                [
                    (shorten(r["node"], 48), r["op"], fmt.ms(r["ms"]), fmt.pct(r["share"]))
                    for r in s["by_node"]
                ],
            )
            + "</div>"
        )
    return "profile", "per-op profile", "".join(parts) + "</div></section>"


def _profile_bars(sides: list[tuple[str, dict]]) -> str:
    ms = {k: {r["op"]: r["ms"] for r in s["by_op"]} for k, s in sides}
    ops = sorted(
        {op for m in ms.values() for op in m},
        key=lambda op: -max(m.get(op, 0.0) for m in ms.values()),
    )[:12]
    colors = {"before": GREY, "after": BLUE}
    series = [(k, colors[k], [ms[k].get(op, 0.0) for op in ops]) for k, _ in sides]
    return grouped_bars(ops, series, title="kernel time per run by op type")


def _table(table_id: str, head: tuple[str, ...], rows: list[tuple]) -> str:
    cells = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i else ''}>{escape(str(v))}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return (
        f'<table id="{table_id}"><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + f"</tr></thead><tbody>{cells}</tbody></table>"
    )


def tradeoff_section(passes: list[dict[str, Any]]) -> Section:
    """For every lossy pass that measured several candidates: the mixed-precision search's
    curve (the budget's number against the layers left float) and the candidates' accuracy
    against latency."""
    parts = []
    for p in passes:
        details = p.get("details") or {}
        cands = details.get("candidates") or []
        curve = details.get("tradeoff") or []
        if len(cands) >= 2 or len(curve) >= 2:
            axes = details.get("tradeoff_axes") or {}
            body = _curve(p["name"], curve, axes) + _tradeoff(p["name"], cands, axes.get("metric"))
            parts.append(f"<h3>{escape(p['name'])}</h3>" + body)
    if not parts:
        return "tradeoff", "trade-offs", ""
    return (
        "tradeoff",
        "trade-offs",
        '<section id="tradeoff"><h2>Trade-offs</h2><p class="sub">The models a lossy pass (or '
        "its bisection) scored: the budget's number against the layers the mixed-precision "
        "search left float, and against latency (median of a short run, ORT_ENABLE_ALL, 2 "
        "threads); the ring marks the model kept.</p>" + "".join(parts) + "</section>",
    )


def _curve(name: str, curve: list[dict[str, Any]], axes: dict[str, Any]) -> str:
    """The search's trade-off curve: each model it scored, by layers left float (the float
    input last, grey), its number against the budget's floor (dashed)."""
    if len(curve) < 2:
        return ""
    metric = str(axes.get("metric") or "metric")
    floor = axes.get("floor")
    pts, chosen = [], None
    for c in sorted(curve, key=lambda c: (c["float_layers"], c.get("dynamic_layers", 0))):
        color = GREY if c.get("reference") else (GREEN if c.get("ok") else RED)
        label = _layers(c) if not c.get("reference") else "float (the input)"
        tip = f"{label}: {metric} {fmt.num(c['metric'], 6)}"
        pts.append(Point(c["float_layers"], c["metric"], tip, color, not c.get("ok"), label))
        if c.get("chosen"):
            chosen = len(pts) - 1
    total = axes.get("layers")
    plot = scatter(
        pts,
        xlabel="layers left float" + (f" (of {total})" if total else ""),
        ylabel=metric.rsplit(":", 1)[-1],  # a task metric's function name: the axis is short
        title=f"{name}: {metric} against the layers left float",
        chosen=chosen,
        hline=(float(floor), f"budget: {fmt.num(floor, 6)}") if floor is not None else None,
        joined=True,
    )
    # the search's probe times each model in turns with the float one: its ratio is the
    # reading (a short run's milliseconds move with the machine's load, the ratio less)
    ref_ms = next((c.get("latency_ms") for c in curve if c.get("reference")), None)

    def ratio(c: dict[str, Any]) -> str:
        ms = c.get("latency_ms")
        return f"{ms / ref_ms:.2f}x" if ms is not None and ref_ms else "-"

    rows = [
        (
            "float (the input)" if c.get("reference") else _layers(c),
            fmt.num(c["metric"], 6),
            "yes" if c.get("ok") else "no",
            ratio(c),
            "chosen" if c.get("chosen") else "",
        )
        for c in sorted(curve, key=lambda c: (c["float_layers"], c.get("dynamic_layers", 0)))
    ]
    head = ("layers left float", metric, "within budget", "time vs float (in turns)", "")
    return f'<div class="row">{plot}{_table(f"curve-{name}", head, rows)}</div>'


def _layers(c: dict[str, Any]) -> str:
    dyn = c.get("dynamic_layers") or 0
    return f"{c['float_layers']} float" + (f", {dyn} dynamic" if dyn else "")


def _tradeoff(name: str, cands: list[dict[str, Any]], metric: str | None = None) -> str:
    if len(cands) < 2:
        return ""
    if any(c.get("metric") is not None for c in cands):
        key, ylabel = "metric", metric or "task metric"
    elif any(c.get("accuracy") is not None for c in cands):
        key, ylabel = "accuracy", "accuracy (%)"
    else:
        key, ylabel = "cosine", "cosine vs original"
    timed = all(c.get("latency_ms") is not None for c in cands)
    pts, chosen = [], None
    for i, c in enumerate(x for x in cands if x.get(key) is not None):
        color = GREY if c.get("reference") else (GREEN if c.get("ok") else RED)
        x = c["latency_ms"] if timed else i
        tip = f"{c['label']}: {key} {fmt.num(c[key], 6)}" + (
            f", {c['latency_ms']:.3f} ms" if c.get("latency_ms") is not None else ""
        )
        pts.append(Point(x, c[key], tip, color, hollow=not c.get("ok"), label=c["label"]))
        if c.get("chosen"):
            chosen = len(pts) - 1
    plot = scatter(
        pts,
        xlabel="latency (ms)" if timed else "candidate (in the order tried; not timed)",
        ylabel=ylabel.rsplit(":", 1)[-1],
        title=f"{name}: candidates",
        chosen=chosen,
    )
    rows = [
        (
            c["label"],
            "yes" if c.get("ok") else "no",
            fmt.num(c.get(key), 6)
            if key == "metric"
            else fmt.num(c.get("accuracy"))
            if key == "accuracy"
            else fmt.cosine(c.get("cosine")),
            fmt.ms(c.get("latency_ms")),
            "chosen" if c.get("chosen") else "",
        )
        for c in cands
    ]
    table = _table(f"tradeoff-{name}", ("candidate", "within budget", ylabel, "latency", ""), rows)
    return f'<div class="row">{plot}{table}</div>'


def graph_section(graph: dict[str, Any] | None) -> Section:
    """Before and after drawings of the first regions the passes changed."""
    if not graph or not graph.get("regions"):
        return "graph", "what changed", ""
    parts = [
        '<section id="graph"><h2>What changed</h2>',
        f'<p class="sub">{graph["changed_before"]} nodes of the original and '
        f"{graph['changed_after']} of the result differ, in {graph['total']} regions; the first "
        f"{len(graph['regions'])} are drawn with their unchanged neighbours (grey). Hover a node "
        "for its name and tensors.</p>",
    ]
    for i, r in enumerate(graph["regions"]):
        nb, na = r["changed"]
        more = [
            f"{s['truncated']} more {k} not drawn"
            for k, s in r.items()
            if isinstance(s, dict) and s.get("truncated")
        ]
        parts.append(
            f"<h3>Region {i + 1}: {nb} node{'s' * (nb != 1)} → {na}"
            + (f" ({'; '.join(more)})" if more else "")
            + '</h3><div class="row scroll">'
            + draw(r["before"], "before", "before")
            + draw(r["after"], "after", "after")
            + "</div>"
        )
    return "graph", "what changed", "".join(parts) + "</section>"


def details_section(passes: list[dict[str, Any]]) -> Section:
    """What merge and distill add: the members' table, the training curve."""
    parts = []
    for p in passes:
        d = p.get("details") or {}
        if d.get("members"):
            rows = d["members"]
            head = tuple(rows[0])
            body = [tuple(_cell(r.get(k)) for k in head) for r in rows]
            parts.append(f"<h3>{escape(p['name'])}: members</h3>" + _table("members", head, body))
        if d.get("history"):
            parts.append(_history(p["name"], d["history"], d.get("best_epoch")))
    if not parts:
        return "details", "details", ""
    return (
        "details",
        "details",
        '<section id="details"><h2>Details</h2>' + "".join(parts) + "</section>",
    )


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt.num(v)
    if isinstance(v, int):
        return fmt.count(v)
    return "-" if v is None else str(v)


def _history(name: str, history: list[dict[str, Any]], best: int | None) -> str:
    pts = [
        Point(h["epoch"], h["val_loss"], f"epoch {h['epoch']}: held-out loss {h['val_loss']:.4g}")
        for h in history
        if h.get("val_loss") is not None
    ]
    marks = [(best, f"best epoch {best}", ORANGE)] if best is not None else []
    plot = line_plot(
        pts, xlabel="epoch", ylabel="held-out loss", title=f"{name}: training", marks=marks
    )
    return f"<h3>{escape(name)}: held-out loss per epoch</h3>{plot}"
