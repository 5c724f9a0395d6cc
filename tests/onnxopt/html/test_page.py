"""The report page's numbers against the JSON report they come from: the demo's page parsed
with html.parser (tables, summary cards, the embedded data), not matched against a snapshot."""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser

import pytest

from onnxopt.html import render_page


class Page(HTMLParser):
    """Tables by id (rows of cell texts), summary cards (label -> value), texts by id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: dict[str, list[list[str]]] = {}
        self.cards: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self.data = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._card: list[str] | None = None
        self._text: list[tuple[str, str, list[str]]] = []
        self._script = False
        self._skip = 0  # inside a cell's <details> (its notes) or an <svg>: not the cell's text
        self._details: list[bool] = []  # per open <details>: whether it is inside a cell

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "details":
            self._details.append(self._cell is not None)
            self._skip += self._details[-1]
        elif tag == "svg":
            self._skip += 1
        elif tag == "div" and a.get("class") == "card":
            self._card = []
        elif tag == "script" and a.get("id") == "onnxopt-report":
            self._script = True
        if "id" in a and tag in ("p",):
            self._text.append((tag, a["id"], []))

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "details":
            self._skip -= self._details.pop()
        elif tag == "svg":
            self._skip -= 1
        elif tag == "script":
            self._script = False
        elif tag == "div" and self._card is not None and len(self._card) >= 2:
            self.cards[self._card[0]] = self._card[1]
            self._card = None
        if self._text and tag == self._text[-1][0]:
            _, key, parts = self._text.pop()
            self.texts[key] = " ".join("".join(parts).split())

    def handle_data(self, data):
        if self._script:
            self.data += data
        if self._cell is not None and not self._skip:
            self._cell.append(data)
        if self._card is not None and data.strip():
            self._card.append(data.strip())
        for _, _, parts in self._text:
            parts.append(data)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    return p


def number(text: str) -> float:
    """The first number in ``text`` (k/M/G suffixes, "%", "ms", "s" ignored)."""
    m = re.search(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?([kMG])?", text)
    assert m, text
    v = float(m.group(0).rstrip("kMG"))
    return v * {"k": 1e3, "M": 1e6, "G": 1e9}.get(m.group(1) or "", 1.0)


def close(shown: str, value: float, digits: int) -> bool:
    """``shown`` is ``value`` printed with about ``digits`` significant digits."""
    return math.isclose(number(shown), value, rel_tol=10 ** (1 - digits), abs_tol=1e-12)


def before_after(text: str) -> tuple[float, float]:
    parts = text.split("→")
    return number(parts[0]), number(parts[-1])


@pytest.fixture(scope="module")
def demo(demo_run):
    r, out = demo_run
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    return report, parse((out / "report.html").read_text())


def test_pipeline_table_matches_the_json(demo):
    report, page = demo
    rows = page.tables["pipeline-table"] + page.tables.get("pipeline-unchanged", [])
    by_name = {r[0]: r for r in rows}
    assert sorted(by_name) == sorted(p["name"] for p in report["passes"])
    for p in report["passes"]:
        row = by_name[p["name"]]
        assert row[1] == ("exact" if p["exact"] else "lossy")
        assert row[2].startswith(p["status"]) and p["reason"] in row[2]
        assert int(row[3]) == p["rewrites"]
        nodes = before_after(row[4])
        assert nodes == (p["before"]["nodes"], p["after"]["nodes"])
        assert math.isclose(before_after(row[5])[1], p["after"]["params"], rel_tol=5e-3)
        vo = p["vs_original"]
        if vo.get("cosine") is not None:
            assert math.isclose(number(row[8]), vo["cosine"], abs_tol=5e-7)
        else:
            assert row[8] == "-"
        if vo.get("accuracy") is not None:
            assert close(row[10], vo["accuracy"], 4)
        assert math.isclose(number(row[11]), p["seconds"], abs_tol=0.005)
        if p["dropped_sites"]:
            n = len(p["dropped_sites"])
            assert f"bisection dropped {n} site" in row[2] and p["dropped_sites"][0] in row[2]


def test_summary_cards_match_the_json(demo):
    report, page = demo
    o, f = report["original"], report["final"]
    assert before_after(page.cards["nodes"]) == (o["nodes"], f["nodes"])
    acc = before_after(page.cards["accuracy"])
    assert close(str(acc[0]), report["accuracy_original"], 4)
    assert close(str(acc[1]), report["accuracy_final"], 4)
    assert math.isclose(
        number(page.cards["cosine vs original"]),
        report["final_vs_original"]["cosine"],
        abs_tol=5e-7,
    )
    kept = sum(p["status"] == "kept" for p in report["passes"])
    assert page.cards["passes"].startswith(f"{kept} kept")


def test_layer_rows_and_marks_match_the_json(demo):
    report, page = demo
    layers = report["analysis"]["layers"]
    rows = {r["tensor"]: r for r in layers["rows"]}
    table = page.tables["layer-table"]
    assert table
    for tensor, op, depth, sqnr, cos, err, how in table:
        r = rows[tensor]
        assert (op, int(depth), how) == (r["op"], r["depth"], r["match"])
        assert close(sqnr, r["sqnr_db"], 4) if r["sqnr_db"] is not None else sqnr == "-"
        assert math.isclose(number(cos), r["cosine"], abs_tol=5e-7)
        assert close(err, r["error"], 3)
    if layers["jump"] is not None:
        assert layers["rows"][layers["jump"]]["tensor"] in page.texts["jump"]


def test_profile_tables_match_the_json(demo):
    report, page = demo
    prof = report["analysis"]["profile"]
    for side in ("before", "after"):
        table = page.tables[f"profile-ops-{side}"]
        assert [r[0] for r in table] == [r["op"] for r in prof[side]["by_op"]]
        for row, r in zip(table, prof[side]["by_op"]):
            assert row[1] == f"{r['ms']:.3f} ms"
            assert row[2] == f"{100 * r['share']:.1f} %"
            assert int(row[3]) == r["nodes"]
        shares = [number(row[2]) for row in page.tables[f"profile-nodes-{side}"]]
        assert shares == sorted(shares, reverse=True) and sum(shares) <= 100.5


def test_tradeoff_tables_match_the_candidates(demo):
    report, page = demo
    for p in report["passes"]:
        cands = p["details"].get("candidates") or []
        if len(cands) < 2:
            continue
        table = page.tables[f"tradeoff-{p['name']}"]
        assert [r[0] for r in table] == [c["label"] for c in cands]
        for row, c in zip(table, cands):
            assert row[1] == ("yes" if c["ok"] else "no")
            if c.get("latency_ms") is not None:
                assert number(row[3]) == float(f"{c['latency_ms']:.3f}")
            assert (row[4] == "chosen") == bool(c.get("chosen"))


def test_the_embedded_data_is_the_report(demo):
    report, page = demo
    assert json.loads(page.data) == report


def test_no_analysis_still_renders_the_pipeline():
    report = {
        "passes": [
            {
                "name": "fold-batchnorm",
                "exact": True,
                "status": "kept",
                "rewrites": 2,
                "before": {"nodes": 10, "params": 100, "flops": 1000, "bytes": 2048},
                "after": {"nodes": 8, "params": 90, "flops": 900, "bytes": 2000},
                "vs_original": {"cosine": 1.0, "max_abs": 1e-7},
                "seconds": 0.25,
            }
        ],
        "original": {"nodes": 10},
        "final": {"nodes": 8},
    }
    page = parse(render_page(report, "t"))
    assert page.tables["pipeline-table"][0][:5] == [
        "fold-batchnorm",
        "exact",
        "kept",
        "2",
        "10 → 8",
    ]
    assert "layer-table" not in page.tables


def test_absolute_paths_are_shortened_on_the_page_only():
    from onnxopt.html.page import short_paths

    text = "passes learn from /home/me/work/data/calib.npz; verified on /tmp/x.npz"
    assert short_paths(text) == "passes learn from …/data/calib.npz; verified on /tmp/x.npz"
    assert short_paths("ratio 1/2, a/b/c.npz") == "ratio 1/2, a/b/c.npz"


def test_the_header_says_where_the_time_went():
    report = {
        "passes": [],
        "original": {"nodes": 1},
        "final": {"nodes": 1},
        "seconds": 12.5,
        "time_breakdown": {"checking outputs": 4.0, "task metric": 6.0, "other": 2.5},
    }
    html = render_page(report, "t")
    assert "12.5 s (task metric 6.0 s, checking outputs 4.0 s, other 2.5 s)" in html
    assert "task metric" not in render_page({**report, "time_breakdown": {}}, "t")


def test_the_search_curve_plots_the_task_metric_against_the_layers_left_float():
    """A task-metric budget: the curve's table lists each model the search scored by layers
    left float (the float input last), with the metric, the verdict and the kept one; the
    plot draws the budget's floor; the candidates' table reads the metric, not the cosine."""
    curve = [
        {"float_layers": 4, "dynamic_layers": 0, "metric": 90.0, "ok": False, "latency_ms": 2.0},
        {"float_layers": 9, "dynamic_layers": 1, "metric": 99.5, "ok": True, "latency_ms": 3.0},
        {
            "float_layers": 6,
            "dynamic_layers": 0,
            "metric": 97.5,
            "ok": True,
            "latency_ms": None,
            "chosen": True,
        },
        {
            "float_layers": 12,
            "dynamic_layers": 0,
            "metric": 100.0,
            "ok": True,
            "latency_ms": 4.0,
            "reference": True,
        },
    ]
    cands = [
        {"label": "all int8", "ok": False, "cosine": 0.98, "accuracy": None, "metric": 90.0},
        {
            "label": "2 in float",
            "ok": True,
            "cosine": 0.99,
            "accuracy": None,
            "metric": 97.5,
            "chosen": True,
        },
    ]
    report = {
        "passes": [
            {
                "name": "quantize-int8",
                "exact": False,
                "status": "kept",
                "details": {
                    "tradeoff": curve,
                    "tradeoff_axes": {"metric": "ocr:text", "floor": 97.0, "layers": 12},
                    "candidates": cands,
                },
            }
        ],
    }
    html = render_page(report, "t")
    page = parse(html)
    rows = page.tables["curve-quantize-int8"]
    assert [r[0] for r in rows] == ["4 float", "6 float", "9 float, 1 dynamic", "float (the input)"]
    assert [number(r[1]) for r in rows] == [90.0, 97.5, 99.5, 100.0]
    assert [r[2] for r in rows] == ["no", "yes", "yes", "yes"]
    assert [r[4] for r in rows] == ["", "chosen", "", ""]
    assert [r[3] for r in rows] == ["0.50x", "-", "0.75x", "1.00x"]  # 6 float: not timed
    assert "budget: 97" in html and "layers left float (of 12)" in html
    table = page.tables["tradeoff-quantize-int8"]
    assert [number(r[2]) for r in table] == [90.0, 97.5]
