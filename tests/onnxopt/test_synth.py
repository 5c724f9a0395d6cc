"""Synthesized inputs (onnxopt.synth): sizes for dynamic dims, ranges read from the graph, values
valid for the ops that read an input as a parameter, and the run check with its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import parser

from onnxopt.errors import DataError
from onnxopt.synth import make_plan, synthesize
from tests.helpers import run


def _model(text: str):
    return parser.parse_model('<ir_version: 8, opset_import: ["": 17]>\n' + text)


def test_gather_table_bounds_token_ids_and_shared_dim_names():
    m = _model(
        """g (int64[B,S] ids, int64[B,S] mask) => (float[B,S,4] y) {
        table = Constant <value = float[50,4] {"""
        + ",".join(["1.0"] * 200)
        + """}> ()
        y = Gather(table, ids)
    }"""
    )
    f = synthesize(m, runs=4)
    assert all(r["ids"].max() < 50 and r["ids"].min() >= 0 for r in f.runs)
    assert all(r["mask"].max() < 2 for r in f.runs)
    shapes = [(r["ids"].shape, r["mask"].shape) for r in f.runs]
    assert shapes[0] == ((1, 32), (1, 32)) and shapes[1] == ((2, 48), (2, 48))
    assert any("[0, 50)" in n and "Gather" in n for n in f.notes)


def test_dims_pinned_by_a_constant_weight():
    m = _model(
        """g (float[N,F] x) => (float[N,3] y) {
        w = Constant <value = float[7,3] {"""
        + ",".join(["0.5"] * 21)
        + """}> ()
        y = MatMul(x, w)
    }"""
    )
    f = synthesize(m, runs=2)
    assert [r["x"].shape for r in f.runs] == [(1, 7), (2, 7)]


def test_parameter_inputs_get_values_their_op_accepts():
    m = _model("""g (float[2,3,4] x, int64[2] shape, float ratio) => (float[a,b] y) {
        r = Reshape(x, shape)
        y, mask = Dropout(r, ratio)
    }""")
    f = synthesize(m, runs=2)
    assert list(f.runs[0]["shape"]) == [1, -1]
    assert float(f.runs[0]["ratio"]) == 0.5
    assert run(m, f.runs[0])[0].shape == (1, 24)


def test_an_integer_divisor_is_never_zero():
    m = _model("g (int32[5] a, int32[5] b) => (int32[5] y) { y = Mod(a, b) }")
    assert make_plan(m).int_ranges["b"] == (1, 3)


def test_size_set_that_does_not_run_is_dropped():
    # a second size set (batch 2) breaks the Reshape to the fixed [1, 6]
    m = _model("""g (float[N,6] x) => (float[1,6] y) {
        s = Constant <value = int64[2] {1, 6}> ()
        y = Reshape(x, s)
    }""")
    f = synthesize(m, runs=4)
    assert {r["x"].shape for r in f.runs} == {(1, 6)}
    assert any("not used" in n for n in f.notes)


def test_inputs_that_cannot_run_are_a_one_line_error():
    m = _model("""g (float[6] x, int64[2] s) => (float[a,b] y) {
        five = Constant <value = int64[2] {5, 5}> ()
        t = Add(s, five)
        y = Reshape(x, t)
    }""")
    with pytest.raises(DataError, match="--int-range LOW,HIGH or --data") as e:
        synthesize(m)
    assert "\n" not in str(e.value)


def test_shape_and_int_range_override():
    m = _model("g (float[N,S] x, int64[N] i) => (float[N,S] y) { y = Relu(x) }")
    f = synthesize(m, shapes={"x": [3, 5], "i": [3]}, int_range=(4, 5), runs=2)
    assert {r["x"].shape for r in f.runs} == {(3, 5)}
    assert np.all(f.runs[0]["i"] == 4)


def test_empty_static_dims_stay_empty():
    m = _model("g (float[2,0,4] x) => (float[2,1,4] y) { y = ReduceSum <keepdims = 1> (x) }")
    f = synthesize(m, runs=1)
    assert f.runs[0]["x"].shape == (2, 0, 4)
