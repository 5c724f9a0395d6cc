"""Plots as inline SVG, written directly (no plotting library, no script): a line plot along
a graph's depth, grouped horizontal bars and a scatter plot. Every mark has a ``<title>`` (the
browser's own tooltip) and a class, so the page stays readable without JavaScript.

Axis ticks are "nice" numbers: the step is 1, 2 or 5 times a power of ten, chosen so that about
``n`` ticks cover the range.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

FONT = "font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif"
BLUE, ORANGE, RED, GREEN, GREY = "#3b6fb6", "#e07b39", "#c0392b", "#2e8b57", "#8a8f98"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    if out[-1] < hi:
        out.append(round(v, 12))
    return out


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:g}"


@dataclass
class Frame:
    """A plot area inside an SVG of ``width`` x ``height`` with margins for the axes."""

    width: int
    height: int
    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 64
    right: int = 24
    top: int = 28
    bottom: int = 48

    def x(self, v: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (v - self.x0) / span * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return (
            self.height
            - self.bottom
            - (v - self.y0) / span * (self.height - self.top - self.bottom)
        )


def _open(width: int, height: int, label: str, cls: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot {cls}" role="img" '
        f'aria-label="{escape(label)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" style="{FONT};font-size:12px">',
        f"<title>{escape(label)}</title>",
    ]


def _axes(
    f: Frame, xt: Sequence[float], yt: Sequence[float], xlabel: str, ylabel: str
) -> list[str]:
    out = [
        '<g class="axes" stroke="#d5d8dd" stroke-width="1">'
        + "".join(
            f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{f.y(v):.1f}" y2="{f.y(v):.1f}"/>'
            for v in yt
        )
        + "</g>",
        f'<line x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{f.height - f.bottom}" '
        'stroke="#555"/>',
        f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{f.height - f.bottom}" '
        f'y2="{f.height - f.bottom}" stroke="#555"/>',
    ]
    out += [
        f'<text x="{f.left - 6}" y="{f.y(v) + 4:.1f}" text-anchor="end" fill="#333">'
        f"{fmt_tick(v)}</text>"
        for v in yt
    ]
    out += [
        f'<text x="{f.x(v):.1f}" y="{f.height - f.bottom + 16}" text-anchor="middle" '
        f'fill="#333">{fmt_tick(v)}</text>'
        for v in xt
    ]
    out.append(
        f'<text x="{(f.left + f.width - f.right) / 2:.0f}" y="{f.height - 8}" '
        f'text-anchor="middle" fill="#222">{escape(xlabel)}</text>'
    )
    out.append(
        f'<text transform="translate(14,{(f.top + f.height - f.bottom) / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle" fill="#222">{escape(ylabel)}</text>'
    )
    return out


@dataclass
class Point:
    """A point of a plot: position, tooltip, and how to draw it."""

    x: float
    y: float
    tip: str = ""
    color: str = BLUE
    hollow: bool = False
    label: str = ""


def line_plot(
    points: list[Point],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    marks: Sequence[tuple[float, str, str]] = (),
    width: int = 900,
    height: int = 320,
    ycap: float | None = None,
    cap_label: str = "",
) -> str:
    """Points joined in x order, with vertical ``marks`` (x, label, colour). Values above
    ``ycap`` are drawn on a dashed line at ``ycap`` labelled ``cap_label``."""
    ys = [min(p.y, ycap) if ycap is not None else p.y for p in points] or [0.0]
    xs = [p.x for p in points] or [0.0]
    yt = nice_ticks(min(ys), max(ys))
    xt = nice_ticks(min(xs), max(xs), 8)
    f = Frame(width, height, xt[0], xt[-1], yt[0], yt[-1])
    out = _open(width, height, title, "line-plot") + _axes(f, xt, yt, xlabel, ylabel)
    if ycap is not None and any(p.y >= ycap for p in points):
        out.append(
            f'<line x1="{f.left}" x2="{width - f.right}" y1="{f.y(ycap):.1f}" '
            f'y2="{f.y(ycap):.1f}" stroke="{GREY}" stroke-dasharray="4 3"/>'
            f'<text x="{width - f.right - 4}" y="{f.y(ycap) - 5:.1f}" text-anchor="end" '
            f'fill="{GREY}">{escape(cap_label)}</text>'
        )
    path = " ".join(f"{f.x(p.x):.1f},{f.y(y):.1f}" for p, y in zip(points, ys))
    if len(points) > 1:
        out.append(
            f'<polyline class="series" points="{path}" fill="none" stroke="{BLUE}" '
            'stroke-width="1.2" stroke-opacity="0.55"/>'
        )
    out += [_dot(f, p, y, 3) for p, y in zip(points, ys)]
    for k, (x, label, color) in enumerate(marks):
        right = f.x(x) > width * 0.6  # label on the side with room
        tx, anchor = (f.x(x) - 4, "end") if right else (f.x(x) + 4, "start")
        out.append(
            f'<g class="mark"><line x1="{f.x(x):.1f}" x2="{f.x(x):.1f}" y1="{f.top}" '
            f'y2="{height - f.bottom}" stroke="{color}" stroke-width="1.5" '
            f'stroke-dasharray="5 3"/><text x="{tx:.1f}" y="{f.top + 12 + 14 * k}" '
            f'text-anchor="{anchor}" fill="{color}" font-weight="600">{escape(label)}</text></g>'
        )
    return "\n".join(out + ["</svg>"])


def _dot(f: Frame, p: Point, y: float, r: float) -> str:
    fill = "white" if p.hollow else p.color
    return (
        f'<circle class="point" cx="{f.x(p.x):.1f}" cy="{f.y(y):.1f}" r="{r}" fill="{fill}" '
        f'stroke="{p.color}" stroke-width="1.2"><title>{escape(p.tip)}</title></circle>'
    )


def scatter(
    points: list[Point],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    chosen: int | None = None,
    width: int = 620,
    height: int = 340,
    hline: tuple[float, str] | None = None,
    joined: bool = False,
) -> str:
    """A scatter plot with each point's label beside it; ``chosen`` gets a ring. ``hline``
    (y, label): a dashed horizontal line (a budget's floor), inside the y range; ``joined``:
    the points joined in x order (a curve)."""
    xs, ys = [p.x for p in points] or [0.0], [p.y for p in points] or [0.0]
    ys_all = ys + ([hline[0]] if hline is not None else [])
    pad_x = (max(xs) - min(xs)) * 0.08 or abs(xs[0]) * 0.1 or 1.0
    pad_y = (max(ys_all) - min(ys_all)) * 0.08 or abs(ys[0]) * 0.01 or 0.01
    xt = nice_ticks(min(xs) - pad_x, max(xs) + pad_x)
    yt = nice_ticks(min(ys_all) - pad_y, max(ys_all) + pad_y)
    f = Frame(width, height, xt[0], xt[-1], yt[0], yt[-1], left=72)
    out = _open(width, height, title, "scatter") + _axes(f, xt, yt, xlabel, ylabel)
    if hline is not None:
        y = f.y(hline[0])
        out.append(
            f'<g class="hline"><line x1="{f.left}" x2="{width - f.right}" y1="{y:.1f}" '
            f'y2="{y:.1f}" stroke="{GREY}" stroke-dasharray="5 3"/><text '
            f'x="{f.left + 6}" y="{y - 5:.1f}" text-anchor="start" fill="{GREY}">'
            f"{escape(hline[1])}</text></g>"
        )
    if joined and len(points) > 1:
        path = " ".join(f"{f.x(p.x):.1f},{f.y(p.y):.1f}" for p in sorted(points, key=lambda p: p.x))
        out.append(
            f'<polyline class="series" points="{path}" fill="none" stroke="{BLUE}" '
            'stroke-width="1.2" stroke-opacity="0.55"/>'
        )
    for i, p in enumerate(points):
        out.append(_dot(f, p, p.y, 6))
        if i == chosen:
            out.append(
                f'<circle class="chosen" cx="{f.x(p.x):.1f}" cy="{f.y(p.y):.1f}" r="11" '
                f'fill="none" stroke="{ORANGE}" stroke-width="2.5"><title>chosen: '
                f"{escape(p.tip)}</title></circle>"
            )
        if p.label:  # beside the point, on its left near the right edge
            right = f.x(p.x) > 0.75 * width
            out.append(
                f'<text x="{f.x(p.x) + (-10 if right else 10):.1f}" y="{f.y(p.y) - 8:.1f}" '
                f'text-anchor="{"end" if right else "start"}" fill="#333">{escape(p.label)}</text>'
            )
    return "\n".join(out + ["</svg>"])


def grouped_bars(
    categories: list[str],
    series: list[tuple[str, str, list[float]]],
    *,
    title: str,
    unit: str = "ms",
    width: int = 900,
) -> str:
    """Horizontal bars, one group per category, one bar per series (name, colour, values)."""
    bar, gap = 11, 10
    group = bar * len(series) + gap
    left, top = 170, 34
    height = top + group * len(categories) + 36
    vmax = max((v for _, _, vals in series for v in vals), default=1.0) or 1.0
    ticks = nice_ticks(0.0, vmax, 5)
    f = Frame(width, height, 0.0, ticks[-1], 0, 1, left=left, right=80, top=top, bottom=36)
    out = _open(width, height, title, "bars")
    for t in ticks:
        out.append(
            f'<line x1="{f.x(t):.1f}" x2="{f.x(t):.1f}" y1="{top - 4}" y2="{height - 32}" '
            f'stroke="#e3e5e8"/><text x="{f.x(t):.1f}" y="{height - 18}" text-anchor="middle" '
            f'fill="#333">{fmt_tick(t)} {unit if t == ticks[-1] else ""}</text>'
        )
    for k, (name, color, _) in enumerate(series):
        out.append(
            f'<rect x="{left + k * 110}" y="8" width="12" height="12" fill="{color}"/>'
            f'<text x="{left + k * 110 + 16}" y="18" fill="#222">{escape(name)}</text>'
        )
    for i, cat in enumerate(categories):
        y = top + i * group
        out.append(
            f'<text x="{left - 8}" y="{y + group / 2:.1f}" text-anchor="end" fill="#222">'
            f"{escape(cat)}</text>"
        )
        for k, (name, color, vals) in enumerate(series):
            v = vals[i]
            w = max(f.x(v) - left, 0.0)
            out.append(
                f'<rect class="bar" x="{left}" y="{y + k * bar}" width="{w:.1f}" '
                f'height="{bar - 2}" fill="{color}"><title>{escape(cat)} ({escape(name)}): '
                f"{v:.4g} {unit}</title></rect>"
                f'<text x="{left + w + 4:.1f}" y="{y + k * bar + bar - 3}" fill="#444" '
                f'font-size="10">{v:.3g}</text>'
            )
    return "\n".join(out + ["</svg>"])
