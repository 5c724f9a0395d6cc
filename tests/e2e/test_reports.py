"""Every benchmark model produces an HTML report: the zoo's models through ``onnxopt optimize
--html``, each page with its analysis complete (per-layer error, profiles, regions)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from onnxopt.cli.app import app

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")

from onnxopt import zoo


@pytest.mark.parametrize(
    "name", ["digits_resnet", "resnet18", "mobilenetv2", "bert_small", "bert_base"]
)
def test_zoo_model_report(name, tmp_path):
    src = zoo.build(name)
    out, rep, page = tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "r.html"
    args = ["optimize", str(src), "-o", str(out), "--report", str(rep), "--html", str(page)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    analysis = json.loads(rep.read_text())["analysis"]
    assert analysis["errors"] == {}
    assert analysis["layers"]["rows"] and analysis["layers"]["first_over"] is None  # exact
    assert analysis["profile"]["before"]["by_op"] and analysis["profile"]["after"]["by_op"]
    html = page.read_text()
    assert 'id="pipeline-table"' in html and 'class="plot line-plot"' in html
