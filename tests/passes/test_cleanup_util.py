"""Shared helpers for the cleanup-pass tests (imported by the other test_cleanup_* files)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.data import synthesize
from onnxopt.graph import merge_tensors, to_graph
from onnxopt.passes.cleanup._util import infer_facts


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def apply(p: Pass, model: onnx.ModelProto, ctx: PassContext | None = None
          ) -> tuple[onnx.ModelProto, PassResult]:
    """Run one pass the way the manager does (graph in, exported model out)."""
    res, out = p.apply(model, ctx or PassContext())
    onnx.checker.check_model(out)
    onnx.shape_inference.infer_shapes(out, strict_mode=True)
    return out, res


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Same output names, and bit-identical values in onnxruntime on random inputs."""
    assert [o.name for o in a.graph.output] == [o.name for o in b.graph.output]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    feeds = synthesize(a, int_range=(0, 3), runs=2)
    for f in feeds.runs:
        for x, y in zip(run(a, f), run(b, f), strict=True):
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_array_equal(x, y)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


# --- tests of the shared helpers themselves ---------------------------------------------------

TWO_OUT = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,3] x) => (float[2,3] y, float[2,3] z) {
  a = Relu(x)
  y = Neg(a)
  z = Identity(a)
}"""


def test_infer_facts_static_shapes() -> None:
    facts, note = infer_facts(to_graph(parse(TWO_OUT)))
    assert note is None
    assert facts["a"].static_shape == (2, 3)
    assert facts["a"].dtype == np.float32


def test_merge_into_renames_for_graph_output() -> None:
    graph = to_graph(parse(TWO_OUT))
    t = graph.tensors()
    assert merge_tensors(graph, t["z"], t["a"]) is None
    assert [o.name for o in graph.outputs] == ["y", "z"]


def test_merge_into_refuses_input_to_output() -> None:
    m = parse("""<ir_version: 8, opset_import: ["": 17]>
    g (float[2] x) => (float[2] y) { y = Identity(x) }""")
    graph = to_graph(m)
    t = graph.tensors()
    assert merge_tensors(graph, t["y"], t["x"]) is not None
