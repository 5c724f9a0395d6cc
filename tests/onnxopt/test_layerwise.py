"""Layer-by-layer comparison: matching by name and through provenance, statistics on arrays,
chunking that does not change the result, the first tensor over the threshold, the jump."""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnxopt.layerwise import Pair, _Stat, compare_layers, find_jump, match_tensors
from onnxopt.mapped import mapped_from_proto
from tests.onnxopt.planted import BAD, feeds, planted


def test_statistics_of_two_arrays():
    s = _Stat()
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = a + np.float32(0.1)
    s.add(a, b)
    r = s.row(Pair("t", "t", "n", "Relu", 0, 1, "name"))
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    assert math.isclose(r["sqnr_db"], 10 * math.log10(30 / np.sum((x - y) ** 2)), rel_tol=1e-9)
    assert math.isclose(r["max_abs"], 0.1, rel_tol=1e-5)
    assert math.isclose(r["error"], 0.1 / 4, rel_tol=1e-5)
    cos = float(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
    assert math.isclose(r["cosine"], cos, rel_tol=1e-9)
    same = _Stat()
    same.add(a, a.copy())
    assert same.row(Pair("t", "t", "n", "Relu", 0, 1, "name"))["sqnr_db"] is None  # identical
    ints = _Stat()
    ints.add(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    assert ints.row(Pair("t", "t", "n", "Cast", 0, 1, "name"))["error"] == 0.25
    shapes = _Stat()
    shapes.add(a, a[:1])
    assert "shapes differ" in shapes.row(Pair("t", "t", "n", "Conv", 0, 1, "name"))["note"]


def test_rewritten_tensors_match_through_provenance():
    a, b = planted()
    pairs = {p.a: p for p in match_tensors(a, b)}
    assert pairs[f"lin{BAD}"].b == f"gemm_out{BAD}" and pairs[f"lin{BAD}"].how == "provenance"
    assert pairs[f"act{BAD}"].how == "name" and pairs["y"].b == "y"
    assert f"mm{BAD}" not in pairs  # the MatMul's own output has no counterpart


def test_the_first_tensor_over_the_threshold_is_the_bad_rewrite():
    a, b = planted()
    rep = compare_layers(mapped_from_proto(a), mapped_from_proto(b), feeds())
    first = rep.rows[rep.first_over]
    assert first["tensor"] == f"lin{BAD}" and first["other"] == f"gemm_out{BAD}"
    before = [r for r in rep.rows if r["index"] < first["index"]]
    assert before and all(r["error"] < 1e-5 for r in before)
    assert rep.rows[rep.jump]["index"] >= first["index"]  # no error before the bad rewrite


def test_chunks_do_not_change_the_result():
    a, b = planted()
    ma, mb = mapped_from_proto(a), mapped_from_proto(b)
    whole = compare_layers(ma, mb, feeds())
    small = compare_layers(ma, mb, feeds(), max_bytes=40_000)
    assert whole.chunks == 1 and small.chunks >= 4
    assert [r["tensor"] for r in small.rows] == [r["tensor"] for r in whole.rows]
    for x, y in zip(small.rows, whole.rows):
        assert x["error"] == y["error"] and x["cosine"] == y["cosine"]


def test_identical_models_have_no_error():
    a, _ = planted()
    rep = compare_layers(mapped_from_proto(a), mapped_from_proto(a), feeds())
    assert rep.first_over is None and rep.jump is None
    assert all(r["error"] == 0.0 and r["sqnr_db"] is None for r in rep.rows)


def test_jump_is_the_layer_that_adds_the_most_noise():
    def row(t, inputs, sqnr):
        return {"tensor": t, "inputs": inputs, "sqnr_db": sqnr, "error": 1e-3, "cosine": 0.9}

    # the first lossy layer falls from exact to 60 dB, but adds little noise (1e-6 of the
    # signal's power); c falls from 58 to 20 dB: 1e-2
    rows = [row("a", ["x"], 60.0), row("b", ["a"], 58.0), row("c", ["b"], 20.0)]
    rows.append(row("d", ["c"], 19.0))
    assert find_jump(rows) == 2
    assert find_jump([row("a", ["x"], None)]) is None
    # two layers that each add about as much: the first one
    twice = [row("a", ["x"], 20.0), row("b", ["a"], 40.0), row("c", ["b"], 19.8)]
    assert find_jump(twice) == 0


def test_a_chunk_runs_only_the_nodes_its_tensors_need():
    import onnx.helper as oh

    from onnxopt.chunking import keep_needed

    a, _ = planted()
    g = onnx.GraphProto()
    g.CopyFrom(a.graph)
    keep_needed(g, ["act2"])
    assert [n.name for n in g.node] == [
        *(f"{op}_{i}" for i in range(2) for op in ("MatMul", "Add", "Tanh", "Residual")),
        "MatMul_2",
        "Add_2",
        "Tanh_2",
    ]
    # a node with a subgraph keeps what the subgraph reads from outside
    body = oh.make_graph(
        [oh.make_node("Neg", ["res3"], ["z"])], "b", [], [oh.make_tensor_value_info("z", 1, None)]
    )
    g2 = onnx.GraphProto()
    g2.CopyFrom(a.graph)
    g2.node.append(oh.make_node("If", ["cond"], ["w"], then_branch=body, else_branch=body))
    keep_needed(g2, ["w"])
    assert g2.node[-1].op_type == "If" and "Residual_3" in [n.name for n in g2.node]
    assert "MatMul_4" not in [n.name for n in g2.node]
