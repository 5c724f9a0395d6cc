"""``onnxopt prune``: dry run tables, a real run through the PassManager, one-line errors
naming the flag."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from onnxopt.cli import app
from tests.passes.prune import models as pm


def _files(tmp_path):
    model = tmp_path / "m.onnx"
    onnx.save(pm.residual_block(), model)
    data = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal([6, 2, 4, 8, 8]).astype(np.float32)
    np.savez(data, x=x)
    return model, data


def test_dry_run_prints_groups(tmp_path):
    model, _ = _files(tmp_path)
    res = CliRunner().invoke(
        app,
        ["prune", str(model), "--dry-run", "--ratio", "0.5", "--round-to", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    assert "channel groups" in res.output and "8 -> 4" in res.output
    assert "graph output 'y' keeps its channels" in res.output
    assert not (tmp_path / "out.onnx").exists()


def test_prune_writes_model(tmp_path):
    model, data = _files(tmp_path)
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(
        app,
        [
            "prune",
            str(model),
            "-o",
            str(out),
            "--ratio",
            "0.25",
            "--round-to",
            "1",
            "--data",
            str(data),
            "--min-cosine",
            "0.5",
            "--allow-slower",
        ],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    pruned = onnx.load(out)
    w1 = next(t for t in pruned.graph.initializer if tuple(t.dims)[1:] == (4, 3, 3))
    assert w1.dims[0] == 6
    # the report: pruned groups, the layers cut, and latency before / after
    assert "pruned groups" in res.output and "8 -> 6" in res.output
    assert "layers with the largest MAC cuts" in res.output
    assert "latency in ms" in res.output and "out" in res.output


def test_errors_are_one_line(tmp_path):
    model, _ = _files(tmp_path)
    both = [
        "prune",
        str(model),
        "-o",
        str(tmp_path / "o.onnx"),
        "--ratio",
        "0.3",
        "--target-flops",
        "0.5",
    ]
    for args in (
        both,
        ["prune", str(model), "--dry-run", "--importance", "magic"],
        ["prune", str(model)],
        ["prune", str(model), "--dry-run", "--round-to", "x"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        msg = (r.stderr or r.stdout).strip()
        assert len(msg.splitlines()) == 1 and "Traceback" not in msg, msg


@pytest.mark.parametrize(
    "build,producer,cells",
    [
        (pm.resnext_block, "pw1", ("16 -> 12", "4 channels")),
        (lambda: pm.group_norm_block(21), "conv", ("8 -> 6", "2 channels")),
        (pm.concat_slice, "b", ("6 -> 5", "channel")),
    ],
)
def test_dry_run_shows_the_group(tmp_path, build, producer, cells):
    path = tmp_path / "m.onnx"
    onnx.save(build(), path)
    res = CliRunner().invoke(
        app,
        ["prune", str(path), "--dry-run", "--ratio", "0.25", "--round-to", "1"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.output.splitlines() if f" {producer} " in ln)
    assert all(c in row for c in (*cells, "prunable")), row


@pytest.mark.parametrize(
    "args,text",
    [
        (["--ratio", "1.5"], "--ratio 1.5: must be in [0, 1)"),
        (["--max-ratio", "1"], "--max-ratio 1.0: must be in (0, 1)"),
        (["--target-flops", "0"], "--target-flops 0.0: must be in (0, 1]"),
        (["--round-to", "x"], "--round-to 'x': must be 'auto' or an integer >= 1"),
        (
            ["--importance", "magic"],
            "--importance 'magic': must be one of l1, l2, bn-scale, activation",
        ),
    ],
)
def test_wrong_option_is_one_line_naming_the_flag(tmp_path, capsys, args, text):
    from onnxopt.cli.app import main

    model, _ = _files(tmp_path)
    assert main(["prune", str(model), "--dry-run", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err == f"error: {text}", err
