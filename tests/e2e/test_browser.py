"""The demo's HTML report in a real browser: headless Chromium (Debian's package) loads it from
disk, the page has the pipeline table and plots with drawn content, a screenshot shows them,
and no JavaScript error is logged. The harness itself is checked on a page with errors."""

from __future__ import annotations

import io
import json

import pytest

from tests.e2e.browser import Browser, find_chromium

pytest.importorskip("websocket", reason="websocket-client is missing: pip install -e '.[dev]'")

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found: install it with `apt-get install -y chromium` (.ci/run does)",
)

PLOTS = """JSON.stringify([...document.querySelectorAll('svg.plot')].map((s, i) => {
  const r = s.getBoundingClientRect();
  const marks = [...s.querySelectorAll('circle.point, rect.bar, polyline.series')];
  const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
  return {i: i, cls: s.getAttribute('class'), x: r.left + window.scrollX, y: r.top + window.scrollY,
          width: r.width, height: r.height, marks: marks.length, drawn: drawn.length};
}))"""

TABLE = """JSON.stringify({
  rows: document.querySelectorAll('#pipeline-table tbody tr').length,
  heads: [...document.querySelectorAll('#pipeline-table th')].map(t => t.textContent),
  visible: document.querySelector('#pipeline-table').getBoundingClientRect().height > 0,
})"""


# hides the data marks of plot number {i} (one of those PLOTS lists)
HIDE_MARKS = """(() => {{
  const s = document.querySelectorAll('svg.plot')[{i}];
  s.querySelectorAll('circle.point, rect.bar, polyline.series')
    .forEach(m => {{ m.style.visibility = 'hidden'; }});
  return 1;
}})()"""


def _ink(png: bytes) -> float:
    """The share of pixels that are not (near) white."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    hist = img.histogram()
    return 1 - sum(hist[245:]) / (img.width * img.height)


def test_demo_report_in_headless_chromium(demo_run, tmp_path):
    r, out = demo_run
    assert r.returncode == 0, r.stderr[-2000:]
    page = out / "report.html"
    with Browser(CHROMIUM) as b:
        b.open(page)
        table = json.loads(b.evaluate(TABLE))
        plots = json.loads(b.evaluate(PLOTS))
        shot = b.screenshot()
        best = max(plots, key=lambda p: p["drawn"])
        clip = {k: best[k] for k in ("x", "y", "width", "height")}
        plot_png = b.screenshot(clip)
        b.evaluate(HIDE_MARKS.format(i=best["i"]))
        bare_png = b.screenshot(clip)
        errors = b.errors()
    (tmp_path / "report.png").write_bytes(shot)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and _ink(shot) > 0.02
    assert table["visible"] and table["rows"] >= 2 and "pass" in table["heads"]
    assert any(p["drawn"] > 0 and p["width"] > 100 and p["height"] > 100 for p in plots), plots
    # the marks put pixels on the screen: the plot has more ink with them than without them
    assert _ink(plot_png) > _ink(bare_png), (_ink(plot_png), _ink(bare_png))
    assert errors == []


def test_the_harness_sees_javascript_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>console.error('boom');"
        "not_defined();</script></body></html>"
    )
    with Browser(CHROMIUM) as b:
        b.open(bad)
        errors = b.errors()
    assert any("boom" in e for e in errors) and any("not_defined" in e for e in errors), errors
