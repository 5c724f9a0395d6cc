"""``onnxopt quantize``: the command on a tiny model, in-process and as a subprocess; one-line
errors naming the flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from tests.helpers import parse

TINY = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,2,4,4] x) => (float[1,3,2,2] y) {
    c = Conv <pads = [1,1,1,1]> (x, W)
    r = Relu (c)
    y = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
}
"""


def _tiny(tmp_path):
    w = np.random.default_rng(0).standard_normal((3, 2, 3, 3)).astype(np.float32)
    m = parse(TINY, {"W": w})
    p = tmp_path / "tiny.onnx"
    onnx.save(m, str(p))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((32, 1, 2, 4, 4)).astype(np.float32))
    return p, data


def test_cli_quantize_with_typer_app(tmp_path) -> None:
    from onnxopt.cli.quantize import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    p, data = _tiny(tmp_path)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            "--allow-slower",
            str(p),
            "-o",
            str(out),
            "--data",
            str(data),
            "--calibrator",
            "entropy",
            "--passes",
            "",
        ],
    )
    assert r.exit_code == 0, r.output
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "QuantizeLinear" in ops and "Relu" not in ops


def test_cli_errors_are_one_line(tmp_path) -> None:
    p, data = _tiny(tmp_path)
    base = [sys.executable, "-m", "onnxopt", "quantize", str(p), "-o", str(tmp_path / "q.onnx")]
    r = subprocess.run(
        [*base, "--data", str(data), "--calibrator", "median"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--calibrator 'median'" in (r.stdout + r.stderr)
    assert "Traceback" not in r.stderr
    r = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs calibration data" in (r.stdout + r.stderr)
    bad = tmp_path / "bad.npz"
    np.savez(bad, nope=np.zeros((4, 1, 2, 4, 4), np.float32))
    r = subprocess.run([*base, "--data", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "input names do not match" in (r.stdout + r.stderr)


def test_cli_dynamic_and_static_subprocess(tmp_path) -> None:
    p, data = _tiny(tmp_path)
    out = tmp_path / "q.onnx"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxopt",
            "quantize",
            "--allow-slower",
            str(p),
            "-o",
            str(out),
            "--data",
            str(data),
            "--activations",
            "int8-sym",
            "--per-tensor",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "quantize-int8" in r.stdout and "kept" in r.stdout


def test_cli_smooth_option(tmp_path) -> None:
    from onnxopt.cli.quantize import quantize_config
    from onnxopt.errors import OptionError

    config = quantize_config("percentile", 99.99, False, "uint8", None, smooth=0.5)
    assert config.smooth == 0.5
    with pytest.raises(OptionError, match="--smooth"):
        quantize_config("percentile", 99.99, False, "uint8", None, smooth=1.5)


@pytest.mark.parametrize(
    "args,text",
    [
        (["--percentile", "120"], "--percentile 120.0: must be in (50, 100]"),
        (
            ["--calibrator", "median"],
            "--calibrator 'median': must be one of minmax, percentile, entropy, mse",
        ),
        (["--activations", "int4"], "--activations 'int4': must be uint8 or int8-sym"),
        (["--smooth", "1.5"], "--smooth 1.5: must be in [0, 1] (0.5 is typical)"),
    ],
)
def test_wrong_option_is_one_line_naming_the_flag(tmp_path, capsys, args, text) -> None:
    from onnxopt.cli.app import main

    p, data = _tiny(tmp_path)
    code = main(["quantize", str(p), "-o", str(tmp_path / "q.onnx"), "--data", str(data), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err == f"error: {text}", err
    assert not (tmp_path / "q.onnx").exists()


MATMUL = """
<ir_version: 8, opset_import: ["": 17]>
g (float[4,64] x) => (float[4,32] y) { a = MatMul (x, W)
    y = Relu (a) }
"""


def _matmul(tmp_path):
    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    p = tmp_path / "mm.onnx"
    onnx.save(parse(MATMUL, {"W": w}), str(p))
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((64, 4, 64)).astype(np.float32))
    return p, data


@pytest.mark.parametrize(
    "args,text",
    [
        ([], "quantize-int4 writes onnxruntime contrib ops: add --target onnxruntime"),
        (
            ["--target", "onnxruntime", "--algo", "gptq", "--no-data"],
            "--algo gptq needs calibration",
        ),
        (
            ["--target", "onnxruntime", "--block-size", "48"],
            "--block-size 48: must be 32, 64 or 128",
        ),
        (
            ["--target", "onnxruntime", "--algo", "awq"],
            "--algo 'awq': must be one of rtn, hqq, gptq",
        ),
    ],
)
def test_int4_errors_are_one_line_and_exit_2(tmp_path, capsys, args, text) -> None:
    from onnxopt.cli.app import main

    p, data = _matmul(tmp_path)
    data_args = [] if "--no-data" in args else ["--data", str(data)]
    args = [a for a in args if a != "--no-data"]
    out = tmp_path / "q.onnx"
    code = main(["quantize", str(p), "-o", str(out), "--bits", "4", *data_args, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: {text}"), err
    assert not out.exists()


def test_bits_other_than_4_and_8_and_int4_options_with_8_bits(tmp_path, capsys) -> None:
    from onnxopt.cli.app import main

    p, data = _matmul(tmp_path)
    base = ["quantize", str(p), "-o", str(tmp_path / "q.onnx"), "--data", str(data)]
    assert main([*base, "--bits", "3"]) == 2
    assert main([*base, "--algo", "gptq"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --bits 3: choose 8 (int8) or 4 (weight-only MatMulNBits)",
        "error: --algo, --block-size and --symmetric apply to --bits 4",
    ]


def test_int4_gptq_writes_matmulnbits(tmp_path, capsys) -> None:
    from onnxopt.cli.app import main

    p, data = _matmul(tmp_path)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(p), "-o", str(out), "--bits", "4", "--algo", "gptq"]
    code = main([*args, "--data", str(data), "--target", "onnxruntime", "--block-size", "64"])
    assert code == 0, capsys.readouterr()
    (node,) = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in node.attribute}["block_size"] == 64
    assert "int4 gptq" in capsys.readouterr().out


def agreement_metric(runs, labels) -> float:
    """A task metric defined in this file: percent of samples whose argmax is the label."""
    hits = [np.argmax(r["y"].reshape(len(lab), -1), -1) == lab for r, lab in zip(runs, labels)]
    return float(np.mean(np.concatenate(hits)) * 100)


def broken_metric(runs, labels) -> float:
    raise KeyError("no output named 'scores'")


def _labelled(tmp_path):
    p, _ = _tiny(tmp_path)
    x = np.random.default_rng(2).standard_normal((32, 1, 2, 4, 4)).astype(np.float32)
    from tests.helpers import run

    y = np.stack([run(onnx.load(str(p)), {"x": xi})[0].reshape(1, -1).argmax(-1) for xi in x])
    data = tmp_path / "labelled.npz"
    np.savez(data, x=x, labels=y)
    return p, data


def test_cli_metric_callable_from_a_test_file(tmp_path) -> None:
    p, data = _labelled(tmp_path)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    spec = f"{__file__}:agreement_metric"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxopt",
            "quantize",
            str(p),
            "-o",
            str(out),
            "--data",
            str(data),
            "--metric",
            spec,
            "--max-metric-drop",
            "50",
            "--allow-slower",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    import json

    rep = json.loads(report.read_text())
    assert rep["metric"] == spec and rep["metric_original"] == 100.0
    assert rep["metric_final"] >= 50.0 and "drop<=50" in rep["budget"]
    # where the time went: in the report and on the console (the metric's calls are counted;
    # its seconds, rounded to the millisecond, can read 0.0 on this 3-node model)
    assert rep["time_calls"]["task metric"] > 0 and "task metric" in rep["time_breakdown"]
    assert "\ntime: " in r.stdout  # the phases over 0.05 s; here: a 3-node model


def test_cli_broken_metric_is_one_line_exit_2(tmp_path) -> None:
    p, data = _labelled(tmp_path)
    base = [sys.executable, "-m", "onnxopt", "quantize", str(p), "-o", str(tmp_path / "q.onnx")]
    r = subprocess.run(
        [*base, "--data", str(data), "--metric", "tests.onnxopt.cli.test_quantize:broken_metric"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))),
    )
    err = (r.stdout + r.stderr).strip()
    assert r.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "tests.onnxopt.cli.test_quantize:broken_metric" in err and "KeyError" in err
    r = subprocess.run(
        [*base, "--data", str(data), "--metric", "no_such_module_xyz:f"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "cannot import 'no_such_module_xyz'" in r.stdout + r.stderr
    assert not (tmp_path / "q.onnx").exists()


def test_int4_symmetric_writes_no_zero_points(tmp_path, capsys) -> None:
    from onnxopt.cli.app import main

    p, data = _matmul(tmp_path)
    out = tmp_path / "q.onnx"
    args = ["quantize", str(p), "-o", str(out), "--bits", "4", "--symmetric"]
    assert main([*args, "--data", str(data), "--target", "onnxruntime"]) == 0, capsys.readouterr()
    (node,) = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"]
    assert len(node.input) == 3 or node.input[3] == ""  # A, B, scales: no zero points


def test_ptq_flags_reach_the_pass_and_bad_ones_are_one_line(tmp_path, capsys) -> None:
    from onnxopt.cli.app import main

    p, data = _tiny(tmp_path)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    args = ["quantize", str(p), "-o", str(out), "--data", str(data), "--report", str(report)]
    flags = ["--rounding", "adaround", "--bias-correction", "off", "--no-latency-aware"]
    assert main([*args, *flags, "--allow-slower"]) == 0, capsys.readouterr()
    (q,) = [r for r in json.loads(report.read_text())["passes"] if r["name"] == "quantize-int8"]
    assert q["details"]["rounding"] == "adaround" and q["details"]["bias_correction"] == "off"
    assert any(n.startswith("adaround:") for n in q["notes"]), q["notes"]
    assert "latency" not in q["details"]  # no per-layer timing was asked for
    capsys.readouterr()
    assert main([*args, "--bias-correction", "sometimes"]) == 2
    assert main([*args, "--mode", "dynamic", "--rounding", "adaround"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("error: --bias-correction 'sometimes': must be one of")
    assert err[1] == (
        "error: --rounding, --equalize, --bias-correction and --latency-aware apply to "
        "--mode static"
    )


def test_rounding_with_error_feedback_from_the_cli(tmp_path, capsys) -> None:
    """``--rounding gptq`` reaches the pass (its note says how many layers it rounded); an
    unknown rounding is one line and exit 2."""
    from onnxopt.cli.app import main

    p, data = _tiny(tmp_path)
    out, report = tmp_path / "q.onnx", tmp_path / "r.json"
    args = ["quantize", str(p), "-o", str(out), "--data", str(data), "--report", str(report)]
    assert main([*args, "--rounding", "gptq", "--allow-slower"]) == 0, capsys.readouterr()
    (q,) = [r for r in json.loads(report.read_text())["passes"] if r["name"] == "quantize-int8"]
    assert q["details"]["rounding"] == "gptq" and q["details"]["gptq"]["layers"] >= 1
    assert any(n.startswith("gptq:") for n in q["notes"]), q["notes"]
    capsys.readouterr()
    assert main([*args, "--rounding", "sideways"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sideways" in err[0] and "gptq" in err[0], err
