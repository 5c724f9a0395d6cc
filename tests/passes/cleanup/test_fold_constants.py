"""fold-constants: constant subgraphs folded in one onnxruntime session, size-capped."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.passes.cleanup import FoldConstants
from tests.helpers import apply, assert_identical, ops, parse, run

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def test_chain_folded_to_one_initializer() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) <float[3,2] w = {1, 2, 3, 4, 5, 6}> {
      one = Constant<value = float {1.0}>()
      t = Transpose(w)
      s = Add(t, one)
      y = Mul(x, s)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert res.changed and res.rewrites == 2 and res.sites == ["one", "s"]
    assert ops(out) == ["Mul"]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    np.testing.assert_array_equal(inits["s"], np.array([[2, 4, 6], [3, 5, 7]], np.float32))
    assert_identical(m, out)


def test_graph_output_fold_keeps_name() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y, float[2] z) <float[2] w = {1, 2}> {
      y = Neg(x)
      z = Sqrt(w)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert res.changed
    assert sorted(ops(out)) == ["Constant", "Neg"]
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_identical(m, out)


def test_size_cap_keeps_expand() -> None:
    m = parse(
        HEAD
        + """
    g (float[512,1024] x) => (float[512,1024] y) {
      v = Constant<value = float {2.0}>()
      s = Constant<value = int64[2] {512, 1024}>()
      big = Expand(v, s)
      y = Mul(x, big)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert res.sites == ["v", "s"] and ops(out) == ["Expand", "Mul"]  # only lifted
    assert any("cap" in n for n in res.notes)
    # a larger cap lets it through
    res2, out2 = apply(FoldConstants.from_options({"max_bytes": 4 << 20}), m)
    assert res2.changed and "Expand" not in ops(out2)


def test_nondeterministic_and_input_dependent_kept() -> None:
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) {
      r = RandomUniform<shape = [2, 3], seed = 1.0>()
      a = Add(r, x)
      s = Shape(x)
      y = Reshape(a, s)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert not res.changed
    assert sorted(ops(out)) == sorted(ops(m))


def test_dequantize_linear_not_folded_by_default() -> None:
    m = parse(
        HEAD
        + """
    g (float[4] x) => (float[4] y) <int8[4] q = {1, 2, 3, 4}, float s = {0.5}, int8 z = {0}> {
      w = DequantizeLinear(q, s, z)
      y = Add(x, w)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert not res.changed and "DequantizeLinear" in ops(out)
    res2, out2 = apply(FoldConstants.from_options({"fold_dequantize": True}), m)
    assert res2.changed and ops(out2) == ["Add"]
    assert_identical(m, out2)


def test_bisection_filter() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) <float[2] w = {1, 4}> {
      a = Sqrt(w)
      b = Neg(w)
      c = Add(x, a)
      y = Add(c, b)
    }"""
    )
    res, out = apply(FoldConstants(), m, PassContext(site_filter={"b"}))
    assert res.sites == ["b"]
    assert "Sqrt" in ops(out) and "Neg" not in ops(out)
    assert_identical(m, out)


def test_tensor_read_inside_subgraph_is_folded_and_still_resolves() -> None:
    m = parse(
        HEAD
        + """
    g (bool[1] c, float[2] x) => (float[2] y) <float[2] w = {1, 4}> {
      s = Sqrt(w)
      i = Identity(s)
      y = If(c) <
        then_branch = t () => (float[2] o) { o = Add(x, i) },
        else_branch = e () => (float[2] o) { o = Sub(x, i) }
      >
    }"""
    )
    from onnxopt.passes.cleanup import RemoveIdentity

    res, out = apply(RemoveIdentity(), m)
    assert res.changed and ops(out) == ["Sqrt", "If"]
    res2, out2 = apply(FoldConstants(), out)
    assert res2.changed and ops(out2) == ["If"]
    assert_identical(m, out2)


def test_ir3_model_lists_folded_initializers_as_inputs() -> None:
    """Before IR version 4 every initializer is also a graph input (the onnx backend's light
    model copies are IR 3, their weights made by ConstantOfShape)."""
    import onnx
    from onnx import TensorProto, helper

    shape = numpy_helper.from_array(np.array([1, 2], np.int64), "shape")
    g = helper.make_graph(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["c"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.5]),
            ),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [shape],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)])
    m.ir_version = 3
    onnx.checker.check_model(m)
    res, out = apply(FoldConstants(), m)
    assert res.changed and ops(out) == ["Add"] and out.ir_version == 3
    # 'shape' was an input only because IR 3 lists every initializer; folded away, it goes
    assert [v.name for v in out.graph.input] == ["x", "c"]
    onnx.checker.check_model(out)
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(run(out, {"x": x})[0], x + 0.5)


def test_raw_export_bias_expand_of_castlike_folds() -> None:
    # torch's dynamo exporter without its optimizer: bias = Expand(CastLike(0, x), [C])
    m = parse(
        """<ir_version: 8, opset_import: ["": 18]>
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      zero = Constant <value = float {0.0}> ()
      c = Constant <value = int64[1] {4}> ()
      z = CastLike(zero, x)
      bias = Expand(z, c)
      y = Conv <pads = [1, 1, 1, 1], kernel_shape = [3, 3]> (x, w, bias)
    }""",
        {"w": np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)},
    )
    res, out = apply(FoldConstants, m)
    assert ops(out) == ["Conv"]
    bias = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}[
        out.graph.node[0].input[2]
    ]
    assert bias.shape == (4,) and bias.dtype == np.float32 and not bias.any()
    assert_identical(m, out)


def test_castlike_of_a_variable_becomes_a_cast() -> None:
    m = parse(
        """<ir_version: 8, opset_import: ["": 18]>
    g (int64[4] i, float[4] x) => (float[4] y) { c = CastLike(i, x)  y = Add(c, x) }"""
    )
    res, out = apply(FoldConstants, m)
    assert ops(out) == ["Cast", "Add"] and res.rewrites == 1
    assert_identical(m, out)


def test_overridable_initializer_is_an_input_not_a_constant() -> None:
    """Found by fuzzing: an initializer that is also a graph input (IR >= 4) is a default the
    caller may override, but onnx-graphsurgeon drops it from the inputs, so it was folded
    (``Mul(c, 2)`` became a constant) and the graph input disappeared."""
    m = parse(
        HEAD
        + """
    g (float[3] x, float[3] c) => (float[3] y) <float[3] c = {1, 2, 3}, float two = {2}> {
      m = Mul(c, two)
      y = Add(x, m)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert not res.changed and ops(out) == ["Mul", "Add"]
    assert [i.name for i in out.graph.input] == ["x", "c"]
    feeds = {"x": np.ones(3, np.float32), "c": np.array([5, 6, 7], np.float32)}
    np.testing.assert_array_equal(run(out, feeds)[0], [11, 13, 15])


def test_cast_like_of_a_constant_folds() -> None:
    """Raw dynamo exports write a Conv bias as Expand(CastLike(c, input), shape): CastLike reads
    only the input's type, so the whole bias folds to an initializer."""
    m = parse(
        HEAD
        + """
    g (float[2,3] x) => (float[2,3] y) <int64[1] shape = {3}> {
      c = Constant<value = double {0.5}>()
      b = CastLike(c, x)
      e = Expand(b, shape)
      y = Add(x, e)
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert res.changed and ops(out) == ["Add"]
    inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    np.testing.assert_array_equal(inits["e"], np.full(3, 0.5, np.float32))
    assert_identical(m, out)
