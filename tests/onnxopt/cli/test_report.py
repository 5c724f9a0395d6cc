"""``onnxopt report`` and ``--html``: the page from a run, from its saved JSON alone, and with
the analysis computed from the models; one-line errors for a file that is not a report."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from onnxopt.cli.app import app
from onnxopt.examples import FOLDER as EXAMPLES

EXAMPLE = EXAMPLES / "digits_cnn.onnx"
TEST_DATA = EXAMPLES / "digits_test.npz"


def test_optimize_html_and_report_from_the_json_alone(tmp_path):
    out, rep, page = tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "r.html"
    args = ["optimize", str(EXAMPLE), "-o", str(out), "--data", str(TEST_DATA), "--batch", "40"]
    res = CliRunner().invoke(app, [*args, "--report", str(rep), "--html", str(page)])
    assert res.exit_code == 0, res.output
    report = json.loads(rep.read_text())
    analysis = report["analysis"]
    assert analysis["layers"]["rows"] and analysis["profile"]["after"]["by_op"]
    assert analysis["graph"]["regions"] and not analysis["errors"]
    html = page.read_text()
    assert 'id="pipeline-table"' in html
    for external in ("<script src", "<link", 'href="http', "src=", "@import", "url("):
        assert external not in html  # self-contained: nothing loaded from anywhere
    again = tmp_path / "again.html"
    res = CliRunner().invoke(app, ["report", str(rep), "-o", str(again)])
    assert res.exit_code == 0, res.output
    assert again.read_text() == html  # the page comes from the JSON alone


def test_report_computes_the_analysis_when_given_the_models(tmp_path):
    out, rep, page = tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "r.html"
    args = ["optimize", str(EXAMPLE), "-o", str(out), "--report", str(rep)]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert json.loads(rep.read_text())["analysis"] == {}  # not without --html
    res = CliRunner().invoke(
        app,
        ["report", str(rep), "-o", str(page), "--original", str(EXAMPLE), "--optimized", str(out)],
    )
    assert res.exit_code == 0, res.output
    html = page.read_text()
    assert 'id="layers"' in html and 'id="profile"' in html and 'id="graph"' in html


def test_not_a_report_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "report", str(bad), "-o", str(tmp_path / "x.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "not an onnxopt report" in r.stderr
    assert not (tmp_path / "x.html").exists()
