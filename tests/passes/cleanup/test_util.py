"""The cleanup family's shared helpers (passes/cleanup/_util.py) and onnxopt.graph.merge_tensors."""

from __future__ import annotations

import numpy as np

from onnxopt.graph import merge_tensors, to_graph
from onnxopt.passes.cleanup._util import infer_facts
from tests.helpers import parse

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
