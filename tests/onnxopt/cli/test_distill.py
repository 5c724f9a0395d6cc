"""``onnxopt distill`` through typer's CliRunner and through ``python -m onnxopt``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from onnxopt.cli.distill import register
from onnxopt.errors import OptionError
from tests.passes.distill.models import data, mlp


@pytest.fixture()
def files(tmp_path):
    s, t = tmp_path / "student.onnx", tmp_path / "teacher.onnx"
    onnx.save(mlp(6, seed=2), s)
    onnx.save(mlp(32, seed=1), t)
    x = tmp_path / "x.npz"
    np.savez(x, **data(256))
    lab = tmp_path / "y.npy"
    np.save(lab, np.random.default_rng(0).integers(0, 5, 256))
    return s, t, x, lab, tmp_path


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keep "distill" as a sub-command
        pass

    return app


def test_cli_distills_and_writes_the_student(files) -> None:
    s, t, x, lab, tmp = files
    out = tmp / "out.onnx"
    res = CliRunner().invoke(
        _app(),
        [
            "distill",
            str(s),
            "--teacher",
            str(t),
            "--data",
            str(x),
            "-o",
            str(out),
            "--epochs",
            "5",
            "--lr",
            "0.01",
            "--labels",
            str(lab),
            "--alpha",
            "0.2",
            "--html",
            str(tmp / "d.html"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "top-1 agreement" in res.output and "accuracy" in res.output
    page = (tmp / "d.html").read_text()
    assert 'id="pipeline-table"' in page and "held-out loss per epoch" in page
    model = onnx.load(out)
    assert [n.op_type for n in model.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert onnx.load(s).graph.initializer[0] != model.graph.initializer[0]


def test_alpha_without_labels_is_an_option_error(files) -> None:
    s, t, x, _, tmp = files
    res = CliRunner().invoke(
        _app(),
        [
            "distill",
            str(s),
            "--teacher",
            str(t),
            "--data",
            str(x),
            "-o",
            str(tmp / "o.onnx"),
            "--alpha",
            "0.5",
        ],
    )
    assert isinstance(res.exception, OptionError) and "labels" in str(res.exception)
    assert not (tmp / "o.onnx").exists()


def test_module_cli_gives_one_line_errors(files) -> None:
    s, t, x, _, tmp = files
    cmd = [
        sys.executable,
        "-m",
        "onnxopt",
        "distill",
        str(s),
        "--teacher",
        str(t),
        "--data",
        str(x),
        "-o",
        str(tmp / "o.onnx"),
        "--epochs",
        "1",
    ]
    bad = subprocess.run(cmd + ["--loss", "hinge"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "--loss" in bad.stderr and "Traceback" not in bad.stderr
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp / "o.onnx").exists()
