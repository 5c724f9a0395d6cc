"""Changed regions: the nodes a pass replaced, grouped with what replaced them, with context."""

from __future__ import annotations

from onnxopt.graphdiff import changed_regions
from tests.onnxopt.planted import planted


def test_regions_pair_the_replaced_nodes_with_their_replacement():
    a, b = planted()
    g = changed_regions(a, b, max_regions=3)
    assert g["total"] == 125  # one per fused block (weights link nothing)
    # MatMul, Add and the Tanh that now reads another tensor; after: the Gemm and that Tanh
    assert g["changed_before"] == 375 and g["changed_after"] == 250
    r = g["regions"][0]
    before = {n["name"] for n in r["before"]["nodes"] if n["changed"]}
    after = {n["name"] for n in r["after"]["nodes"] if n["changed"]}
    assert before == {"MatMul_0", "Add_0", "Tanh_0"} and after == {"Gemm_0", "Tanh_0"}
    context = {n["name"] for n in r["before"]["nodes"] if not n["changed"]}
    assert context == {"Residual_0"}  # the unchanged neighbour that reads the region


def test_identical_models_have_no_region():
    a, _ = planted()
    assert changed_regions(a, a)["regions"] == []


def test_a_large_region_is_shown_as_one_connected_piece():
    import onnx

    a, _ = planted()
    b = onnx.ModelProto()
    b.CopyFrom(a)
    for n in b.graph.node:  # every node differs, and no provenance links the two chains
        n.name = "renamed_" + n.name
    g = changed_regions(a, b, max_nodes=8)
    assert g["total"] == 2  # the whole original chain, and the whole renamed one
    r = g["regions"][0]
    side = r["before"] if r["before"]["nodes"] else r["after"]
    shown = [n for n in side["nodes"] if n["changed"]]
    assert len(shown) == 8 and side["truncated"] == len(a.graph.node) - 8
    tensors = [set(n["inputs"]) | set(n["outputs"]) for n in shown]
    for i, t in enumerate(tensors):  # each shown node shares a tensor with another one
        assert any(t & other for j, other in enumerate(tensors) if j != i)
