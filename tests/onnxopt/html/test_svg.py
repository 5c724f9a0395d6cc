"""SVG plots on their own: nice ticks, every point drawn inside the frame, marks and tooltips."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from onnxopt.html.svg import Point, grouped_bars, line_plot, nice_ticks, scatter

NS = "{http://www.w3.org/2000/svg}"


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    t = nice_ticks(3.7, 141.2)
    assert t[0] <= 3.7 and t[-1] >= 141.2 and t[1] - t[0] in (20, 25, 50)
    assert nice_ticks(5, 5)[0] <= 5 <= nice_ticks(5, 5)[-1]


def test_line_plot_draws_every_point_within_the_frame():
    pts = [Point(i, 10.0 * i, f"t{i}", hollow=i == 3) for i in range(6)]
    svg = line_plot(
        pts, xlabel="depth", ylabel="dB", title="t", marks=[(2, "jump", "red")], ycap=40
    )
    root = ET.fromstring(svg)
    w, h = float(root.get("width")), float(root.get("height"))
    circles = root.findall(f"{NS}circle")
    assert len(circles) == 6
    for c in circles:
        assert 0 < float(c.get("cx")) < w and 0 < float(c.get("cy")) < h
    ys = [float(c.get("cy")) for c in circles]
    assert ys[4] == ys[5]  # 40 and 50 are drawn on the cap
    assert "jump" in svg and "<title>t1</title>" in svg


def test_scatter_rings_the_chosen_point_and_bars_scale():
    svg = scatter(
        [Point(1.0, 0.9, "a", label="a"), Point(2.0, 0.99, "b", label="b")],
        xlabel="ms",
        ylabel="cos",
        title="s",
        chosen=1,
    )
    assert svg.count('class="chosen"') == 1
    bars = grouped_bars(
        ["Conv", "Gemm"], [("before", "#888", [2.0, 1.0]), ("after", "#00f", [1.0, 0.5])], title="b"
    )
    widths = [
        float(w) for w in re.findall(r'class="bar" x="[\d.]+" y="[\d.]+" width="([\d.]+)"', bars)
    ]
    assert len(widths) == 4 and widths[0] == max(widths)
    assert abs(widths[0] / widths[1] - 2.0) < 0.01  # Conv before vs Conv after
