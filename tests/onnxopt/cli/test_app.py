"""The command line, through a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.model import load_model, save_model

EXAMPLE = EXAMPLES / "digits_cnn.onnx"
TEST_DATA = EXAMPLES / "digits_test.npz"


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in r.stdout
    assert len(err.splitlines()) <= 2, err  # rich may wrap one long line
    for w in words:
        assert w in err.replace("\n", " "), err


def test_help_and_passes():
    r = cli("--help")
    assert r.returncode == 0 and "optimize" in r.stdout
    r = cli("passes")
    assert r.returncode == 0 and "cleanup" in r.stdout


def test_inspect_json():
    r = cli("inspect", EXAMPLE, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ops"]["Conv"] >= 3 and d["inputs"][0]["name"] == "image"


def test_optimize_writes_model_and_report(tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    before = EXAMPLE.read_bytes()
    r = cli("optimize", EXAMPLE, "-o", out, "--data", TEST_DATA, "--batch", "40", "--report", rep)
    assert r.returncode == 0, r.stderr
    assert EXAMPLE.read_bytes() == before
    report = json.loads(rep.read_text())
    assert report["passes"] and all(p["status"] != "error" for p in report["passes"])
    assert load_model(out).graph.output[0].name == "logits"
    r = cli("verify", EXAMPLE, out, "--data", TEST_DATA, "--batch", "40")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "match" in r.stdout


def test_verify_detects_difference(tmp_path):
    m = load_model(EXAMPLE)
    for t in m.graph.initializer:
        if t.name.endswith("head.bias"):
            from onnx import numpy_helper

            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, t.name))
    p = tmp_path / "changed.onnx"
    save_model(m, p)
    r = cli("verify", EXAMPLE, p, "--data", TEST_DATA, "--batch", "40")
    assert r.returncode == 1 and "differ" in r.stdout


@pytest.fixture
def bad_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_text("not a model at all")
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(EXAMPLE.read_bytes()[:2000])
    rejected = tmp_path / "rejected.onnx"
    m = load_model(EXAMPLE)
    m.graph.node[0].input[0] = "does_not_exist"
    rejected.write_bytes(m.SerializeToString())
    old = tmp_path / "old.onnx"
    m = load_model(EXAMPLE)
    m.opset_import[0].version = 3
    old.write_bytes(m.SerializeToString())
    return {"garbage": garbage, "trunc": trunc, "rejected": rejected, "old": old}


@pytest.mark.parametrize(
    "which, words",
    [
        ("missing", ["no such file"]),
        ("garbage", ["not an ONNX model"]),
        ("trunc", ["error:"]),
        ("rejected", ["checker"]),
        ("old", ["opset 3"]),
    ],
)
def test_bad_models(tmp_path, bad_files, which, words):
    src = bad_files.get(which, tmp_path / "missing.onnx")
    out = tmp_path / "out.onnx"
    r = cli("optimize", src, "-o", out)
    assert_one_line_error(r, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"img": np.zeros((4, 1, 8, 8), np.float32)}, ["missing", "image"]),
        ({"image": np.zeros((4, 1, 8, 9), np.float32)}, ["dim 3 must be 8"]),
        ({"image": np.zeros((4, 1, 8, 8), np.float64)}, ["float64"]),
    ],
)
def test_bad_feeds(tmp_path, arrays, words):
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    r = cli("optimize", EXAMPLE, "-o", out, "--data", data)
    assert_one_line_error(r, *words)
    assert not out.exists()


def test_unknown_pass_and_overwrite(tmp_path):
    out = tmp_path / "out.onnx"
    r = cli("optimize", EXAMPLE, "-o", out, "--passes", "cleanup,bogus")
    assert_one_line_error(r, "unknown pass 'bogus'")
    assert not out.exists()
    copy = tmp_path / "m.onnx"
    copy.write_bytes(EXAMPLE.read_bytes())
    r = cli("optimize", copy, "-o", copy)
    assert_one_line_error(r, "overwrite the input")
    assert copy.read_bytes() == EXAMPLE.read_bytes()


def test_debug_shows_traceback(tmp_path):
    r = cli("--debug", "optimize", tmp_path / "missing.onnx", "-o", tmp_path / "o.onnx")
    assert r.returncode != 0 and "Traceback" in r.stderr
