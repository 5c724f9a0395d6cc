"""A small dataflow graph drawn as SVG: the changed neighbourhood of a pass, not the whole graph.

Layout (Sugiyama-style, enough for a few dozen nodes): each node's layer is its longest path
from the subgraph's sources; within a layer nodes are ordered by the mean position of their
neighbours in the layer above, then below (two sweeps of the barycenter heuristic); edges are
cubic curves from a producer's bottom to its consumer's top.
"""

from __future__ import annotations

from html import escape
from typing import Any

from onnxopt.html.svg import FONT

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 38, 22, 40, 14
STYLE = {
    "before": ("#fdecea", "#c0392b"),
    "after": ("#e8f6ee", "#2e8b57"),
    "context": ("#f4f5f7", "#a9afb8"),
}


def layout(nodes: list[dict[str, Any]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """(nodes per layer, edges (producer, consumer)) for nodes given in topological order."""
    prod = {t: i for i, n in enumerate(nodes) for t in n["outputs"]}
    edges = sorted(
        {(prod[t], j) for j, n in enumerate(nodes) for t in n["inputs"] if prod.get(t, j) != j}
    )
    level = [0] * len(nodes)
    for j in range(len(nodes)):  # topological order: producers come first
        level[j] = max((level[i] + 1 for i, k in edges if k == j and i < j), default=0)
    layers: list[list[int]] = [[] for _ in range(max(level, default=-1) + 1)]
    for j, lv in enumerate(level):
        layers[lv].append(j)
    up = {j: [i for i, k in edges if k == j] for j in range(len(nodes))}
    down = {i: [k for j, k in edges if j == i] for i in range(len(nodes))}
    for _ in range(2):
        _sweep(layers, up)
        _sweep(layers[::-1], down)
    return layers, edges


def _sweep(layers: list[list[int]], nbrs: dict[int, list[int]]) -> None:
    for prev, cur in zip(layers, layers[1:]):
        pos = {n: i for i, n in enumerate(prev)}
        here = {n: i for i, n in enumerate(cur)}  # (a list being sorted reads as empty)

        def key(n: int, pos: dict[int, int] = pos, here: dict[int, int] = here) -> float:
            near = [pos[m] for m in nbrs[n] if m in pos]
            return sum(near) / len(near) if near else here[n]

        cur.sort(key=key)


def draw(side: dict[str, Any], kind: str, title: str) -> str:
    """SVG of one side of a region (``kind``: "before" or "after" colours its changed nodes)."""
    nodes = side["nodes"]
    if not nodes:
        return f'<p class="empty">{escape(title)}: no node</p>'
    layers, edges = layout(nodes)
    widest = max(len(layer) for layer in layers)
    width = PAD * 2 + widest * (BOX_W + GAP_X) - GAP_X
    height = PAD * 2 + len(layers) * (BOX_H + GAP_Y) - GAP_Y + 18
    xy: dict[int, tuple[float, float]] = {}
    for r, layer in enumerate(layers):
        span = len(layer) * (BOX_W + GAP_X) - GAP_X
        x0 = (width - span) / 2
        for c, n in enumerate(layer):
            xy[n] = (x0 + c * (BOX_W + GAP_X), PAD + 18 + r * (BOX_H + GAP_Y))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph {kind}" role="img" '
        f'aria-label="{escape(title)}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" style="{FONT};font-size:11px">',
        f"<title>{escape(title)}</title>",
        f'<text x="{PAD}" y="{PAD + 2}" font-weight="600" fill="#222">{escape(title)}</text>',
    ]
    for i, j in edges:
        (x1, y1), (x2, y2) = xy[i], xy[j]
        a, b = (x1 + BOX_W / 2, y1 + BOX_H), (x2 + BOX_W / 2, y2)
        mid = (a[1] + b[1]) / 2
        out.append(
            f'<path class="edge" d="M{a[0]:.1f},{a[1]:.1f} C{a[0]:.1f},{mid:.1f} '
            f'{b[0]:.1f},{mid:.1f} {b[0]:.1f},{b[1] - 4:.1f}" fill="none" stroke="#6b7280" '
            f'stroke-width="1.2"/><path d="M{b[0] - 4:.1f},{b[1] - 7:.1f} L{b[0]:.1f},{b[1]:.1f} '
            f'L{b[0] + 4:.1f},{b[1] - 7:.1f}" fill="none" stroke="#6b7280" stroke-width="1.2"/>'
        )
    for j, n in enumerate(nodes):
        out.append(_box(n, xy[j], kind if n["changed"] else "context"))
    return "\n".join(out + ["</svg>"])


def _box(n: dict[str, Any], at: tuple[float, float], style: str) -> str:
    fill, stroke = STYLE[style]
    x, y = at
    tip = f"{n['op']} '{n['name']}'\nin: {', '.join(n['inputs'])}\nout: {', '.join(n['outputs'])}"
    return (
        f'<g class="node {style}"><title>{escape(tip)}</title>'
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{1.6 if style != "context" else 1}"/>'
        f'<text x="{x + BOX_W / 2:.1f}" y="{y + 15:.1f}" text-anchor="middle" '
        f'font-weight="600" fill="#1f2328">{escape(n["op"])}</text>'
        f'<text x="{x + BOX_W / 2:.1f}" y="{y + 29:.1f}" text-anchor="middle" '
        f'fill="#57606a">{escape(shorten(n["name"], 24))}</text></g>'
    )


def shorten(text: str, n: int) -> str:
    """``text`` with its middle elided to at most ``n`` characters."""
    if len(text) <= n:
        return text
    k = (n - 1) // 2
    return text[:k] + "…" + text[-(n - 1 - k) :]
