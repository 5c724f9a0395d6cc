"""``onnxopt debug``: the first tensor that goes wrong, ``--reduce`` writing a small failing
case, ``--json``, exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxopt.cli.app import app
from onnxopt.model import save_model
from tests.onnxopt.planted import BAD, WIDTH, planted


@pytest.fixture()
def files(tmp_path):
    a, b = planted()
    pa, pb = save_model(a, tmp_path / "a.onnx"), save_model(b, tmp_path / "b.onnx")
    rng = np.random.default_rng(3)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.standard_normal((3, 4, WIDTH)).astype(np.float32))  # 3 runs
    return pa, pb, data, tmp_path


def test_debug_names_the_first_bad_tensor_and_reduces_it(files):
    a, b, data, tmp = files
    out = tmp / "case.onnx"
    res = CliRunner().invoke(
        app,
        [
            "debug",
            str(a),
            str(b),
            "--data",
            str(data),
            "--reduce",
            str(out),
            "--json",
            str(tmp / "l.json"),
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 1, res.output  # a tensor differs
    text = " ".join(res.output.split())
    assert f"first tensor over 0.001: 'lin{BAD}'" in text
    assert f"gemm_out{BAD}" in text and "matched through provenance" in text
    assert "reduced" in text and f"Gemm_{BAD}" in text
    case = onnx.load(out)
    assert len(case.graph.node) <= 10
    assert (tmp / "case.npz").exists() and (tmp / "case.orig.onnx").exists()
    rows = json.loads((tmp / "l.json").read_text())
    assert rows["runs"] == 3 and rows["rows"][rows["first_over"]]["tensor"] == f"lin{BAD}"


def test_identical_models_exit_0(files):
    a, _, data, _ = files
    res = CliRunner().invoke(app, ["debug", str(a), str(a), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert "every tensor within" in res.output


def test_bad_input_is_one_line_exit_2(files, tmp_path):
    a, _, data, _ = files
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "debug", str(a), str(tmp_path / "nope.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "nope.onnx" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "debug", str(a), str(a), "--runs", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--runs" in r.stderr
