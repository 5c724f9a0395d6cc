"""The oracle and the minimizer on rewrites known to be wrong: the oracle must flag each one
(outputs changed on inputs verification never saw, an invalid model) and not flag float noise;
the minimizer must shrink a graph to the part that still fails."""

from __future__ import annotations

import numpy as np
import onnx

from tests.fuzz.builder import InputInfo
from tests.fuzz.generator import Case, generate
from tests.fuzz.minimize import load, minimize, save
from tests.fuzz.oracle import Outcome, judge
from tests.helpers import parse

HDR = '<ir_version: 8, opset_import: ["": 17]>'
F = onnx.TensorProto.FLOAT


def _case(text: str, shape=(2, 3)) -> Case:
    return Case(0, parse(HDR + text), [InputInfo("x", shape, F, False)])


def _judged(case: Case, text: str) -> Outcome:
    res = Outcome("optimized", "onnx")
    judge(case, parse(HDR + text), res)
    return res


def test_a_rewrite_right_only_for_positive_inputs_is_caught():
    # verification feeds are positive: Relu(x) -> x passes them, negative inputs do not
    case = _case("g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }")
    res = _judged(case, "g (float[2,3] x) => (float[2,3] y) { y = Identity(x) }")
    assert res.status == "changed" and res.inputs in ("seed1", "negative")


def test_a_lossy_cast_pair_removed_is_caught():
    case = _case("g (float[2,3] x) => (float[2,3] y) { i = Cast<to=6>(x)  y = Cast<to=1>(i) }")
    res = _judged(case, "g (float[2,3] x) => (float[2,3] y) { y = Identity(x) }")
    assert res.status == "changed"


def test_renamed_output_and_wrong_declared_shape_are_invalid():
    case = _case("g (float[2,3] x) => (float[2,3] y) { y = Neg(x) }")
    res = _judged(case, "g (float[2,3] x) => (float[2,3] z) { z = Neg(x) }")
    assert res.status == "invalid" and "outputs" in res.detail
    res = _judged(
        case, "g (float[2,3] x) => (float[2,3] y) { t = Neg(x)  y = Concat<axis=0>(t, t) }"
    )
    assert res.status == "invalid"


def test_reordered_float_arithmetic_is_not_a_difference():
    case = _case("g (float[2,3] x) => (float[2,3] y) { a = Mul(x, x)  y = Mul(a, x) }")
    res = _judged(case, "g (float[2,3] x) => (float[2,3] y) { a = Mul(x, x)  y = Mul(x, a) }")
    assert res.status == "optimized", res.detail


def test_minimize_keeps_what_fails_and_saves_it(tmp_path, monkeypatch):
    # seed 1: a case whose BN reads initializers only (the minimizer leaves a BN parameter
    # written as a Constant node, or an Identity before the output, in place)
    case = generate(1, motifs=["gelu", "layout", "conv_bn", "constants"], opset=20)
    assert len(case.model.graph.node) > 12

    def has_bn(c: Case) -> bool:
        return any(n.op_type == "BatchNormalization" for n in c.model.graph.node)

    small = minimize(case, has_bn, budget=200)
    assert has_bn(small) and len(small.model.graph.node) == 1
    onnx.checker.check_model(small.model)
    monkeypatch.setattr("tests.fuzz.minimize.REGRESSIONS", tmp_path)
    path = save(small, "bn", target="onnx", passes="none", what="test")
    back, meta = load(path)
    assert meta["fuzz.target"] == "onnx" and [i.name for i in back.inputs] == [
        i.name for i in small.inputs
    ]
    assert np.all([isinstance(i.shape, tuple) for i in back.inputs])
