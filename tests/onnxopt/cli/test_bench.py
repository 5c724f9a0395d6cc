"""``onnxopt bench``: JSON and CSV output, one-line errors, ``python -m onnxopt bench``."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import pytest
import typer
from onnx import helper
from typer.testing import CliRunner

from onnxopt.cli.bench import register
from onnxopt.errors import DataError


def _mlp(batch: int | str = "N") -> onnx.ModelProto:
    """y = relu(x·W + b), x float[batch, 16]."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor(
        "W",
        onnx.TensorProto.FLOAT,
        [16, 32],
        rng.standard_normal((16, 32)).astype(np.float32).ravel(),
    )
    b = helper.make_tensor("B", onnx.TensorProto.FLOAT, [32], np.zeros(32, np.float32))
    g = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 32])],
        [w, b],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _reshape_model() -> onnx.ModelProto:
    """x float[6] reshaped to a shape computed from s int64[2] (s + 5): no synthesized value
    gives a shape of 6 elements."""
    return onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[6] x, int64[2] s) => (float[a,b] y) {
        five = Constant <value = int64[2] {5, 5}> ()
        t = Add(s, five)
        y = Reshape(x, t)
    }""")


def _int_model() -> onnx.ModelProto:
    """Gather from an embedding table: ids int64[1, 8]."""
    table = helper.make_tensor("E", onnx.TensorProto.FLOAT, [10, 4], np.ones(40, np.float32))
    g = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["y"])],
        "emb",
        [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, [1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 4])],
        [table],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture()
def tiny(tmp_path):
    p = tmp_path / "tiny.onnx"
    onnx.save_model(_mlp(), str(p))
    return p


@pytest.fixture()
def app():
    a = typer.Typer()
    register(a)

    @a.command("noop")  # a second command, so typer keeps "bench" as a subcommand name
    def _noop() -> None: ...

    return a


def test_cli_json_and_csv(app, tiny, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "bench",
            str(tiny),
            str(tiny),
            "--runs",
            "5",
            "--warmup",
            "1",
            "--in-process",
            "--json",
            "-",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data) == 2 and data[0]["p50"] > 0 and "ratio" in data[1]
    assert "latencies_ms" not in data[0]
    out = tmp_path / "b.csv"
    r = CliRunner().invoke(
        app,
        ["bench", str(tiny), "--batch", "1,2", "--runs", "5", "--in-process", "--csv", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert "latency in ms" in r.stdout and "p50" in r.stdout
    got = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [g["batch"] for g in got] == ["1", "2"] and float(got[0]["p99"]) > 0


def test_cli_errors_are_onnxopt_errors(app, tmp_path):
    ip = tmp_path / "ids.onnx"
    onnx.save_model(_reshape_model(), str(ip))
    r = CliRunner().invoke(app, ["bench", str(ip), "--in-process"])
    assert isinstance(r.exception, DataError)
    assert "--int-range" in str(r.exception)


def test_python_m_onnxopt_bench(tiny, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "onnxopt", "bench", str(tiny), "--runs", "5", "--json", "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["runs"] == 5
    ip = tmp_path / "ids.onnx"
    onnx.save_model(_reshape_model(), str(ip))
    bad = subprocess.run(
        [sys.executable, "-m", "onnxopt", "bench", str(ip)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert "--int-range" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
