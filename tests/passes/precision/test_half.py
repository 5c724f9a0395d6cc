"""convert-fp16 / convert-bf16: what stays float32 and why, valid graphs, Casts, subgraphs,
bisection through the pipeline."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes import registry
from onnxopt.passes.precision import ConvertBf16, ConvertFp16
from onnxopt.passes.precision.config import Bf16Config, HalfConfig
from onnxopt.passes.precision.plan import BISECTION
from onnxopt.verify import Budget
from tests.helpers import apply, parse, run

RNG = np.random.default_rng(0)


def _feeds(**shapes) -> Feeds:
    return Feeds(
        [
            {k: RNG.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
            for _ in range(4)
        ]
    )


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    out.update({t.name: t.data_type for t in g.initializer})
    return out


def _cast_chains(model: onnx.ModelProto) -> list[str]:
    """Casts that read another Cast's output."""
    cast_out = {n.output[0] for n in model.graph.node if n.op_type == "Cast"}
    return [n.name for n in model.graph.node if n.op_type == "Cast" and n.input[0] in cast_out]


def test_reduce_mean_over_100k_ones_stays_float32_and_exact() -> None:
    """A float16 accumulator overflows at 65,504: the sum of 100,000 ones does. ReduceMean is
    on the block list, reads float32 and the output is exact."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[1,100000] x) => (float[1,1] y) {
            a = Mul (x, two)
            r = ReduceMean <axes = [1], keepdims = 1> (a)
            y = Add (r, half)
        }""",
        {"two": np.array(2.0, np.float32), "half": np.array(0.5, np.float32)},
    )
    feeds = Feeds([{"x": np.ones((1, 100000), np.float32)}])
    res, out = apply(ConvertFp16(), m, PassContext(feeds=feeds))
    types = _types(out)
    reduce = next(n for n in out.graph.node if n.op_type == "ReduceMean")
    assert types[reduce.input[0]] == TensorProto.FLOAT
    assert types[reduce.output[0]] == TensorProto.FLOAT
    assert types[_node(out, "Mul_0").output[0]] == TensorProto.FLOAT16
    assert "ReduceMean" in res.details["float32_nodes"][reduce.name]
    assert run(out, feeds.runs[0])[0].tolist() == [[2.5]]


RESIZE = """<ir_version: 8, opset_import: ["": 17]>
g (float[1,2,4,4] x) => (float[1,2,8,8] y) {
    a = Relu (x)
    r = Resize <mode = "linear"> (a, roi, scales)
    y = Sigmoid (r)
}"""


@pytest.mark.parametrize("allow", [(), ("Resize",)])
def test_resize_with_scales_stays_valid(allow) -> None:
    """Resize's scales are float32 by its schema: they stay float32 even when the user takes
    Resize off the block list (onnxconverter-common then writes float16 scales, which
    onnxruntime refuses to load)."""
    m = parse(
        RESIZE,
        {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)},
    )
    feeds = _feeds(x=(1, 2, 4, 4))
    res, out = apply(ConvertFp16(HalfConfig(allow_ops=allow)), m, PassContext(feeds=feeds))
    onnx.checker.check_model(out, full_check=True)
    types = _types(out)
    resize = next(n for n in out.graph.node if n.op_type == "Resize")
    assert types[resize.input[2]] == TensorProto.FLOAT
    expect = TensorProto.FLOAT16 if allow else TensorProto.FLOAT
    assert types[resize.input[0]] == expect
    for f in feeds.runs:
        np.testing.assert_allclose(run(out, f)[0], run(m, f)[0], atol=2e-3)


def test_casts_do_not_pile_up() -> None:
    """Alternating block-listed and convertible ops: one Cast per precision boundary, none
    reading another Cast, and a second conversion changes nothing."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,8] x) => (float[2,8] y) {
            a = Relu (x)
            b = Exp (a)
            c = Tanh (b)
            d = Exp (c)
            e = Cast <to = 1> (d)
            f = Sigmoid (e)
            y = Cast <to = 1> (f)
        }"""
    )
    feeds = _feeds(x=(2, 8))
    res, out = apply(ConvertFp16(), m, PassContext(feeds=feeds))
    assert _cast_chains(out) == []
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    # x->16 (Relu), 16->32 (Exp), 32->16 (Tanh), 16->32 (Exp), the two original Casts
    # (one now to float16, one the float32 output)
    assert len(casts) == 6, onnx.printer.to_text(out.graph)
    again, _ = ConvertFp16().apply(out, PassContext(feeds=feeds))
    assert not again.changed
    for f in feeds.runs:
        np.testing.assert_allclose(run(out, f)[0], run(m, f)[0], atol=2e-3)


def test_a_cancelling_cast_pair_is_removed() -> None:
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,8] x) => (float[2,8] y) {
            a = Cast <to = 10> (x)
            b = Cast <to = 1> (a)
            c = Cast <to = 10> (b)
            d = Cast <to = 1> (c)
            y = Relu (d)
        }"""
    )
    _, out = apply(ConvertFp16(), m, PassContext(feeds=_feeds(x=(2, 8))))
    assert _cast_chains(out) == []


def test_overflow_on_calibration_data_stays_float32() -> None:
    """|x·300|² reaches ~1e6 on the data: the Mul producing it and its reader stay float32;
    the other nodes convert."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[4,16] x) => (float[4,16] y) {
            a = Mul (x, k)
            b = Mul (a, a)
            c = Sqrt (b)
            y = Relu (c)
        }""",
        {"k": np.array(300.0, np.float32)},
    )
    res, out = apply(ConvertFp16(), m, PassContext(feeds=_feeds(x=(4, 16))))
    kept = res.details["float32_nodes"]
    assert set(kept) == {"Mul_1", "Sqrt_2"}
    assert "'b' reaches" in kept["Mul_1"] and "float16" in kept["Mul_1"]
    assert set(res.sites) == {"Mul_0", "Relu_3"}
    types = _types(out)
    assert types["b"] == TensorProto.FLOAT
    off, _ = apply(ConvertFp16(HalfConfig(overflow_check=False)), m, PassContext())
    assert not off.details["float32_nodes"]


def test_constants_half_cannot_hold_stay_float32() -> None:
    """LayerNorm's ε = 1e-12 underflows to 0 and 1e9 overflows: their readers stay float32."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,8] x) => (float[2,8] y) {
            a = Mul (x, x)
            b = Add (a, eps)
            c = Sqrt (b)
            d = Mul (c, big)
            y = Div (d, big)
        }""",
        {"eps": np.array(1e-12, np.float32), "big": np.array(1e9, np.float32)},
    )
    res, out = apply(ConvertFp16(), m, PassContext(feeds=_feeds(x=(2, 8))))
    kept = res.details["float32_nodes"]
    assert "eps" in kept["Add_1"] and "smallest normal" in res.details["float32_constants"]["eps"]
    assert "beyond float16's range" in kept["Mul_3"] and "Div_4" in kept
    assert (
        numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "eps")).dtype
        == np.float32
    )


def test_integer_arithmetic_stays_float32() -> None:
    """A size computed in float (Shape -> Cast -> Mul -> Cast) stays float32."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[3,5] x) => (float[3,5] y, int64[2] s) {
            sh = Shape (x)
            f = Cast <to = 1> (sh)
            g2 = Mul (f, k)
            s = Cast <to = 7> (g2)
            y = Relu (x)
        }""",
        {"k": np.array(1001.0, np.float32)},
    )
    res, out = apply(ConvertFp16(), m, PassContext(feeds=_feeds(x=(3, 5))))
    kept = res.details["float32_nodes"]
    assert "integers" in kept["Mul_2"] and "integers" in kept["Cast_1"]
    assert "Cast to an integer type" in kept["Cast_3"]
    assert run(out, {"x": np.zeros((3, 5), np.float32)})[1].tolist() == [3003, 5005]


def test_keep_io_types_false_makes_inputs_and_outputs_half() -> None:
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,8] x) => (float[2,8] y) { a = Relu (x)
            y = Sigmoid (a) }"""
    )
    _, out = apply(ConvertFp16(HalfConfig(keep_io_types=False)), m, PassContext())
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert [n.op_type for n in out.graph.node] == ["Relu", "Sigmoid"]


def test_unknown_op_is_left_float32() -> None:
    m = oh.make_model(
        oh.make_graph(
            [
                oh.make_node("Relu", ["x"], ["a"]),
                oh.make_node("Mystery", ["a"], ["y"], domain="x.y"),
            ],
            "g",
            [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
            [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        ),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("x.y", 1)],
    )
    res, out = ConvertFp16().apply(m, PassContext())
    assert "no schema for x.y::Mystery" in res.details["float32_nodes"]["Mystery_1"]


def _control_flow() -> onnx.ModelProto:
    then_g = oh.make_graph(
        [oh.make_node("Mul", ["x", "w"], ["t"])],
        "then",
        [],
        [oh.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])],
    )
    else_g = oh.make_graph(
        [oh.make_node("Add", ["x", "w"], ["e"])],
        "else",
        [],
        [oh.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])],
    )
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
            oh.make_node("Mul", ["acc_in", "x"], ["m"]),
            oh.make_node("Add", ["m", "w"], ["acc_out"]),
        ],
        "body",
        [
            oh.make_tensor_value_info("i", TensorProto.INT64, []),
            oh.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            oh.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 3]),
        ],
        [
            oh.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 3]),
        ],
    )
    nodes = [
        oh.make_node("If", ["c"], ["z"], then_branch=then_g, else_branch=else_g),
        oh.make_node("Loop", ["n", "", "z"], ["acc"], body=body),
        oh.make_node("Relu", ["acc"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(RNG.standard_normal((2, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(3, np.int64), "n"),
    ]
    g = oh.make_graph(
        nodes,
        "g",
        [
            oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            oh.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])


def test_if_and_loop_bodies_convert_consistently() -> None:
    """Both branches and the loop body compute in float16; every body keeps its float32
    inputs and outputs (Casts inside), so the branches and iterations agree on types."""
    m = _control_flow()
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    feeds = Feeds([{"x": x, "c": np.array(b)} for b in (True, False)])
    res, out = apply(ConvertFp16(), m, PassContext(feeds=feeds))
    onnx.checker.check_model(out, full_check=True)
    assert {"Mul_g2_0", "Add_g1_0", "Mul_g3_1", "Add_g3_2"} <= set(res.sites)
    if_node = out.graph.node[[n.op_type for n in out.graph.node].index("If")]
    for a in if_node.attribute:
        body_ops = [n.op_type for n in a.g.node]
        assert body_ops[-1] == "Cast" and a.g.output[0].type.tensor_type.elem_type == 1
    for f in feeds.runs:
        ref = run(m, f)[0]
        np.testing.assert_allclose(run(out, f)[0], ref, atol=5e-3 * max(1, np.abs(ref).max()))


def test_bisection_keeps_what_verifies_and_reports_the_rest() -> None:
    """Under a budget float16 rounding of 0.1 breaks (max abs error 1e-6), the pipeline's
    bisection drops the Mul by 0.1 (it stays float32, reported with its reason) and keeps the
    Mul by 2, which is exact in float16."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[4,8] x) => (float[4,8] y) { a = Mul (x, tenth)
            y = Mul (a, two) }""",
        {"tenth": np.array(0.1, np.float32), "two": np.array(2.0, np.float32)},
    )
    pm = registry.manager(["convert-fp16"], budget=Budget(min_cosine=None, max_abs_err=1e-6))
    out, rep = pm.run(m, _feeds(x=(4, 8)))
    p = rep.passes[0]
    assert p.status == "kept" and p.dropped_sites == ["Mul_0"], (p.status, p.reason, p.notes)
    assert p.details["float32_nodes"] == {"Mul_0": BISECTION}
    assert any(n.startswith("kept in float32 (1): Mul_0") for n in p.notes)
    types = _types(out)
    assert types["a"] == TensorProto.FLOAT and types["two"] == TensorProto.FLOAT16


def test_bf16_weights_run_in_onnxruntime() -> None:
    """bfloat16 weights read through Casts: onnxruntime's CPU provider runs it (it has no
    bfloat16 arithmetic); the file's weights are half the size."""
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[4,64] x) => (float[4,32] y) { a = MatMul (x, W)
            y = Add (a, b) }""",
        {"W": w, "b": np.ones(32, np.float32)},
    )
    res, out = apply(ConvertBf16(), m, PassContext())
    assert res.sites == ["W"] and res.details["converted_constants"] == 1
    t = next(t for t in out.graph.initializer if t.name == "W")
    assert t.data_type == TensorProto.BFLOAT16 and len(t.raw_data) == w.size * 2
    x = RNG.standard_normal((4, 64)).astype(np.float32)
    ref, got = run(m, {"x": x})[0], run(out, {"x": x})[0]
    assert np.abs(got - ref).max() < 2e-2 * np.abs(ref).max()
    # through the pipeline: the verifier hands onnxruntime the bfloat16 weights in memory
    _, rep = registry.manager(["convert-bf16"]).run(m, _feeds(x=(4, 64)))
    assert rep.passes[0].status == "kept", rep.passes[0].reason
    full, out_all = ConvertBf16(Bf16Config(compute="all")).apply(m, PassContext())
    onnx.checker.check_model(out_all, full_check=True)
    assert _types(out_all)["a"] == TensorProto.BFLOAT16


def test_constant_of_shape_with_a_value_float16_cannot_hold_stays_float32() -> None:
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[2,8] x) => (float[2,8] y) {
            s = Shape (x)
            mask = ConstantOfShape <value = float[1] {-1000000000.0}> (s)
            a = Add (x, mask)
            y = Softmax (a)
        }"""
    )
    res, _ = apply(ConvertFp16(), m, PassContext(feeds=_feeds(x=(2, 8))))
    assert "beyond float16's range" in res.details["float32_nodes"]["ConstantOfShape_1"]


def test_a_candidate_that_overflows_as_onnxruntime_runs_it_is_bisected() -> None:
    """Conv (weights ±1000) then Mul by 100: every tensor fits float16, so the plan converts
    both, and the literal graph is right. onnxruntime's ConvMulFusion (graph optimizations on)
    folds the scale into the float16 weights (±1e5: inf), so the model as it would run gives
    NaN. The pipeline checks half precision as onnxruntime runs it: the Mul stays float32."""
    rng = np.random.default_rng(0)
    w = np.float32(1000) * rng.choice([-1.0, 1.0], (4, 3, 3, 3)).astype(np.float32)
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[1,3,8,8] x) => (float[1,4,6,6] y) {
            c = Conv (x, W)
            y = Mul (c, s)
        }""",
        {"W": w, "s": np.full((1, 4, 1, 1), 100.0, np.float32)},
    )
    x = [(rng.standard_normal((1, 3, 8, 8)) * 1e-3).astype(np.float32) for _ in range(4)]
    feeds = Feeds([{"x": v} for v in x])
    out, rep = registry.manager(["convert-fp16"], budget=Budget(min_cosine=0.999)).run(m, feeds)
    p = rep.passes[0]
    assert p.status == "kept" and p.dropped_sites == ["Mul_1"], (p.reason, p.notes)
    assert any("graph optimizations on" in n for n in p.notes), p.notes
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    got = ort.InferenceSession(out.SerializeToString(), so).run(None, {"x": x[0]})[0]
    np.testing.assert_allclose(got, run(m, {"x": x[0]})[0], rtol=2e-3, atol=0.5)
