"""``onnxopt optimize``: options of its own (``--keep-io-types`` for the half-precision
passes); the pipeline itself is tested in test_app.py and the e2e tests."""

from __future__ import annotations

import json

import numpy as np
import onnx

from onnxopt.cli.app import main
from tests.helpers import parse

TINY = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,16] x) => (float[1,8] y) {
    m = MatMul (x, W)
    y = Relu (m)
}
"""


def _tiny(tmp_path):
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    path = tmp_path / "tiny.onnx"
    onnx.save(parse(TINY, {"W": w}), str(path))
    return path


def _io_types(path) -> set[int]:
    g = onnx.load(str(path)).graph
    return {v.type.tensor_type.elem_type for v in [*g.input, *g.output]}


def test_keep_io_types_is_the_default_and_can_be_turned_off(tmp_path) -> None:
    src = _tiny(tmp_path)
    kept, half = tmp_path / "kept.onnx", tmp_path / "half.onnx"
    args = ["optimize", str(src), "--passes", "convert-fp16"]
    assert main([*args, "-o", str(kept)]) == 0
    assert _io_types(kept) == {onnx.TensorProto.FLOAT}
    assert main([*args, "-o", str(half), "--no-keep-io-types"]) == 0
    assert _io_types(half) == {onnx.TensorProto.FLOAT16}


def test_keep_io_types_without_a_half_pass_is_a_one_line_error(tmp_path, capsys) -> None:
    src, out = _tiny(tmp_path), tmp_path / "out.onnx"
    code = main(["optimize", str(src), "-o", str(out), "--passes", "cleanup", "--keep-io-types"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--keep-io-types applies to convert-fp16" in err


CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,3,H,W] x) => (float[1,4,H,W] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, K)
    i = Identity (c)
    y = Relu (i)
}
"""


def test_runs_of_different_sizes_verify_the_passes(tmp_path) -> None:
    """Images of different sizes, one array per run (``RUN/x``), feed the verification."""
    k = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    src, out, data = tmp_path / "c.onnx", tmp_path / "c.opt.onnx", tmp_path / "runs.npz"
    onnx.save(parse(CONV, {"K": k}), str(src))
    rng = np.random.default_rng(1)
    sizes = [(8, 12), (16, 8), (10, 10)]
    np.savez(
        data, **{f"{i:04d}/x": rng.random((1, 3, *hw), np.float32) for i, hw in enumerate(sizes)}
    )
    rep = tmp_path / "r.json"
    argv = ["optimize", str(src), "-o", str(out), "--data", str(data), "--report", str(rep)]
    assert main(argv) == 0
    assert "Identity" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    report = json.loads(rep.read_text())
    assert report["feeds"] == str(data) and report["verified_on"] == {"exact": 3, "lossy": 3}


def test_labels_that_are_not_one_class_per_sample_are_a_one_line_error(tmp_path, capsys):
    """A task metric's labels (one image index per run of two samples) without --metric:
    accuracy cannot read them, which the user hears at once, in one line, exit 2."""
    src, out, data = _tiny(tmp_path), tmp_path / "out.onnx", tmp_path / "d.npz"
    rng = np.random.default_rng(2)
    np.savez(
        data,
        **{f"{i:04d}/x": rng.random((1, 16), np.float32) for i in range(4)},
        **{f"{i:04d}/labels": np.array([i, i]) for i in range(4)},
    )
    code = main(["optimize", str(src), "-o", str(out), "--data", str(data)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "the labels of run 0 hold 2 values but output 'y' gives 1 predictions" in err
