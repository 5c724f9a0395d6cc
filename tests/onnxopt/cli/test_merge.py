"""``onnxopt merge`` through typer's CliRunner and as ``python -m onnxopt merge``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from onnxopt.cli.merge import register
from onnxopt.errors import OptionError
from tests.passes.ensemble.models import linear, run


@pytest.fixture()
def members(tmp_path):
    paths = []
    for i, m in enumerate([linear(0), linear(1, opset=13)]):
        p = tmp_path / f"member{i}.onnx"
        onnx.save(m, p)
        paths.append(p)
    return paths


def _app():
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command so typer keeps "merge" as a subcommand
        pass

    return app


def test_cli_average_writes_verified_model(members, tmp_path):
    out = tmp_path / "ens.onnx"
    res = CliRunner().invoke(
        _app(),
        [
            "merge",
            *map(str, members),
            "-o",
            str(out),
            "--mode",
            "average",
            "--on",
            "probs",
            "--json",
            str(tmp_path / "r.json"),
            "--html",
            str(tmp_path / "r.html"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and "member0" in res.output
    page = (tmp_path / "r.html").read_text()
    assert "merge (average)" in page and 'id="members"' in page and 'id="profile-ops-after"' in page
    x = np.ones((2, 4), np.float32)
    got = run(onnx.load(out), {"x": x})["logits"]
    assert got.shape == (2, 3)
    assert '"mode": "average"' in (tmp_path / "r.json").read_text()


def test_cli_bad_weights_raise_option_error(members, tmp_path):
    res = CliRunner().invoke(
        _app(),
        [
            "merge",
            *map(str, members),
            "-o",
            str(tmp_path / "e.onnx"),
            "--mode",
            "weighted",
            "--weights",
            "0.5,x",
        ],
    )
    assert isinstance(res.exception, OptionError)


def test_cli_refuses_to_overwrite_a_member(members):
    res = CliRunner().invoke(_app(), ["merge", *map(str, members), "-o", str(members[0])])
    assert isinstance(res.exception, OptionError)


def test_python_m_onnxopt_merge(members, tmp_path):
    out = tmp_path / "ens.onnx"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxopt",
            "merge",
            *map(str, members),
            "-o",
            str(out),
            "--mode",
            "vote",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert out.exists()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxopt",
            "merge",
            *map(str, members),
            "-o",
            str(out),
            "--mode",
            "median",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown merge mode" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_keep_member_outputs_and_input_map(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(linear(0), a)
    onnx.save(linear(1, inp="pixels"), b)
    out = tmp_path / "ens.onnx"
    res = CliRunner().invoke(
        _app(),
        [
            "merge",
            str(a),
            str(b),
            "-o",
            str(out),
            "--mode",
            "max",
            "--input-map",
            "b.pixels:x",
            "--keep-member-outputs",
        ],
    )
    assert res.exit_code == 0, res.output
    got = run(onnx.load(out), {"x": np.ones((1, 4), np.float32)})
    assert set(got) == {"logits", "a/logits:out", "b/logits:out"}
    np.testing.assert_array_equal(
        got["logits"], np.maximum(got["a/logits:out"], got["b/logits:out"])
    )


@pytest.mark.parametrize(
    "option,words", [(["--meta", "foo"], "--meta 'foo'"), (["--mode", "cascade"], "--threshold")]
)
def test_wrong_option_is_one_line_naming_it_exit_2(members, tmp_path, capsys, option, words):
    from onnxopt.cli.app import main

    out = tmp_path / "e.onnx"
    code = main(["merge", *map(str, members), "-o", str(out), *option])
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
