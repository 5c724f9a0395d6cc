"""onnxopt.graph: the shape-inference cache's fingerprint of a graph."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxopt import graph as graph_module
from onnxopt.graph_shapes import _fingerprint
from tests.helpers import parse

MODEL = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,3] x) => (float[3,2] y) {
  y = Transpose <perm = [1, 0]> (x)
}"""


def _graph() -> gs.Graph:
    return gs.import_onnx(parse(MODEL))


def test_fingerprint_follows_list_attributes():
    a, b = _graph(), _graph()
    assert _fingerprint(a) == _fingerprint(b)
    b.nodes[0].attrs["perm"] = [0, 1]
    assert _fingerprint(a) != _fingerprint(b)
    b.nodes[0].attrs["perm"] = [1.0, 0.0]  # same values, another element type
    assert _fingerprint(a) != _fingerprint(b)
    b.nodes[0].attrs["perm"] = [1, 0]
    assert _fingerprint(a) == _fingerprint(b)


def test_long_list_attributes_are_not_printed(monkeypatch):
    """A tree ensemble's attributes hold 10^5 entries each: repr() of them on every pass cost
    seconds (skl2onnx random forest, issue #14); they are hashed as tuples instead."""
    g = _graph()
    g.nodes[0].attrs["nodes_values"] = [0.5] * 100_000
    g.nodes[0].attrs["nodes_modes"] = ["BRANCH_LEQ"] * 100_000
    printed: list[object] = []
    monkeypatch.setattr(graph_module, "repr", lambda v: printed.append(v) or "", raising=False)
    before = _fingerprint(g)
    assert not [v for v in printed if isinstance(v, list) and len(v) > 100]  # shapes are fine
    g.nodes[0].attrs["nodes_values"] = [0.5] * 99_999 + [0.25]
    assert _fingerprint(g) != before
