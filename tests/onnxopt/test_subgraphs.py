"""Passes inside If / Loop bodies: rewrites there, outer scope respected, one copy of each
initializer, site keys that name the body."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxopt.contract import PassContext
from onnxopt.passes.cleanup import DedupInitializers, FoldConstants, RemoveIdentity
from onnxopt.passes.fusion import FoldBatchNorm
from onnxopt.passes.registry import manager
from tests.helpers import run

RNG = np.random.default_rng(0)


def _init(name: str, shape, low=None) -> onnx.TensorProto:
    v = RNG.uniform(0.5, 1.5, shape) if low else RNG.standard_normal(shape)
    return numpy_helper.from_array(v.astype(np.float32), name)


def conv_bn_branch(p: str) -> onnx.GraphProto:
    inits = [_init(f"{p}_w", (4, 3, 3, 3)), _init(f"{p}_s", 4, 1), _init(f"{p}_b", 4)]
    inits += [_init(f"{p}_m", 4), _init(f"{p}_v", 4, 1)]
    nodes = [
        helper.make_node("Conv", ["x", f"{p}_w"], [f"{p}_c"], pads=[1, 1, 1, 1], name=f"{p}_conv"),
        helper.make_node(
            "BatchNormalization",
            [f"{p}_c", f"{p}_s", f"{p}_b", f"{p}_m", f"{p}_v"],
            [f"{p}_y"],
            name=f"{p}_bn",
        ),
    ]
    out = helper.make_tensor_value_info(f"{p}_y", T.FLOAT, [1, 4, 8, 8])
    return helper.make_graph(nodes, p, [], [out], initializer=inits)


def if_model() -> onnx.ModelProto:
    node = helper.make_node(
        "If",
        ["c"],
        ["y"],
        then_branch=conv_bn_branch("t"),
        else_branch=conv_bn_branch("e"),
        name="if0",
    )
    g = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info("x", T.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("c", T.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 4, 8, 8])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def branches(m: onnx.ModelProto) -> dict[str, onnx.GraphProto]:
    return {a.name: a.g for a in m.graph.node[0].attribute}


def test_conv_bn_folded_in_both_branches() -> None:
    m = if_model()
    res, out = FoldBatchNorm().apply(m, PassContext())
    onnx.checker.check_model(out, full_check=True)
    assert sorted(res.sites) == ["if0.else_branch::e_bn", "if0.then_branch::t_bn"]
    for g in branches(out).values():
        assert [n.op_type for n in g.node] == ["Conv"]
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    for c in (True, False):
        feed = {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(run(out, feed)[0], run(m, feed)[0], rtol=1e-4, atol=1e-4)


def test_bisection_keys_name_the_body() -> None:
    res, out = FoldBatchNorm().apply(
        m := if_model(), PassContext(site_filter={"if0.then_branch::t_bn"})
    )
    assert res.sites == ["if0.then_branch::t_bn"]
    b = branches(out)
    assert [n.op_type for n in b["then_branch"].node] == ["Conv"]
    assert [n.op_type for n in b["else_branch"].node] == ["Conv", "BatchNormalization"]
    assert len(m.graph.node) == 1


def loop_model(shared_outer: bool = True) -> onnx.ModelProto:
    w = np.arange(4, dtype=np.float32)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("Add", ["acc_in", "w2"], ["acc_out"]),
            helper.make_node("Mul", ["acc_out", "w3"], ["scan"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", T.INT64, []),
            helper.make_tensor_value_info("c_in", T.BOOL, []),
            helper.make_tensor_value_info("acc_in", T.FLOAT, [4]),
        ],
        [
            helper.make_tensor_value_info("c_out", T.BOOL, []),
            helper.make_tensor_value_info("acc_out", T.FLOAT, [4]),
            helper.make_tensor_value_info("scan", T.FLOAT, [4]),
        ],
        initializer=[numpy_helper.from_array(w, "w3")],
    )
    inits = [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2")]
    inits += [numpy_helper.from_array(np.array(3, np.int64), "n")]
    inits += [numpy_helper.from_array(np.array(True), "go")]
    g = helper.make_graph(
        [
            helper.make_node("Add", ["x", "w1"], ["x1"]),
            helper.make_node("Loop", ["n", "go", "x1"], ["y", "ys"], body=body, name="loop"),
        ],
        "g",
        [helper.make_tensor_value_info("x", T.FLOAT, [4])],
        [
            helper.make_tensor_value_info("y", T.FLOAT, [4]),
            helper.make_tensor_value_info("ys", T.FLOAT, [3, 4]),
        ],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def test_loop_body_reads_an_outer_initializer_deduplicated() -> None:
    m = loop_model()
    res, out = DedupInitializers().apply(m, PassContext())
    onnx.checker.check_model(out, full_check=True)
    assert sorted(res.sites) == ["w2", "w3"]
    body = out.graph.node[1].attribute[0].g
    assert [t.name for t in out.graph.initializer] == ["w1", "n", "go"]
    assert list(body.initializer) == []  # read from the main graph, not copied into the body
    assert [list(n.input) for n in body.node][1:] == [["acc_in", "w1"], ["acc_out", "w1"]]
    f = {"x": np.ones(4, np.float32)}
    for a, b in zip(run(out, f), run(m, f)):
        np.testing.assert_array_equal(a, b)


def test_outer_values_are_respected() -> None:
    """The body's ``c_out = Identity(c_in)`` stays (c_in is a body input); an Identity of an
    outer tensor that is a body output stays (it would rename the outer tensor)."""
    m = loop_model()
    body = m.graph.node[1].attribute[0].g
    body.node.append(helper.make_node("Identity", ["x1"], ["seen"]))
    body.output.append(helper.make_tensor_value_info("seen", T.FLOAT, [4]))
    m.graph.node[1].output.append("seens")
    m.graph.output.append(helper.make_tensor_value_info("seens", T.FLOAT, [3, 4]))
    onnx.checker.check_model(m, full_check=True)
    res, out = RemoveIdentity().apply(m, PassContext())
    onnx.checker.check_model(out, full_check=True)
    assert not res.changed
    assert any("enclosing graph" in n for n in res.notes)


def test_folding_across_the_boundary_only_when_valid() -> None:
    """Inside the body, Mul(w1, w1) of an outer initializer folds; the same of an outer
    initializer that is also a model input (overridable) does not."""
    m = loop_model()
    body = m.graph.node[1].attribute[0].g
    body.node.insert(0, helper.make_node("Mul", ["w1", "w1"], ["sq"]))
    body.node.insert(1, helper.make_node("Mul", ["go_f", "go_f"], ["sq2"]))
    body.node[3].input[1] = "sq"  # acc_out = acc_in + w1*w1
    body.node.insert(4, helper.make_node("Add", ["acc_tmp", "sq2"], ["acc_out"]))
    body.node[3].output[0] = "acc_tmp"
    m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "go_f"))
    m.graph.input.append(helper.make_tensor_value_info("go_f", T.FLOAT, [4]))
    onnx.checker.check_model(m, full_check=True)
    res, out = FoldConstants().apply(m, PassContext())
    onnx.checker.check_model(out, full_check=True)
    body = out.graph.node[1].attribute[0].g
    ops = [(n.op_type, list(n.input)) for n in body.node]
    assert ("Mul", ["w1", "w1"]) not in ops and ("Mul", ["go_f", "go_f"]) in ops
    f = {"x": np.ones(4, np.float32), "go_f": np.full(4, 2.0, np.float32)}
    for a, b in zip(run(out, f), run(m, f)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_pipeline_rewrites_bodies_and_reports_them() -> None:
    out, rep = manager(["cleanup", "fusion"]).run(if_model())
    kept = {p.name: p for p in rep.passes if p.kept}
    assert "fold-batchnorm" in kept
    assert set(kept["fold-batchnorm"].details["subgraphs"]) == {
        "if0.then_branch",
        "if0.else_branch",
    }
    assert rep.final_vs_original.max_abs < 1e-4
