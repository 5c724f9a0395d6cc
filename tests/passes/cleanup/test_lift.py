"""Constant nodes lifted into initializers (part of fold-constants), exporter-style graphs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.graph import to_graph
from onnxopt.passes.cleanup import FoldConstants, RemoveIdentity
from onnxopt.passes.cleanup.lift import constant_node_value, lift_constants
from tests.helpers import apply, assert_identical, ops, parse

HEAD = '<ir_version: 8, opset_import: ["": 17]>'


def exporter_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every node's ``domain`` field unset (what torch.onnx writes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for n in out.graph.node:
        n.ClearField("domain")
    return out


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


CLIP = (
    HEAD
    + """
g (float[1,4] x) => (float[1,4] y) {
  lo = Constant<value = float {0.0}>()
  hi = Constant<value_float = 6.0>()
  y = Clip(x, lo, hi)
}"""
)


def test_constants_lifted_to_initializers() -> None:
    m = exporter_style(parse(CLIP))
    res, out = apply(FoldConstants(), m)
    assert res.changed and res.sites == ["lo", "hi"]
    assert ops(out) == ["Clip"]
    got = inits(out)
    assert got["lo"] == np.float32(0) and got["hi"] == np.float32(6)
    assert got["hi"].dtype == np.float32
    assert_identical(m, out)


def test_constant_graph_output_stays_a_node() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y, int64[2] k) {
      y = Neg(x)
      k = Constant<value_ints = [3, 4]>()
    }"""
    )
    res, out = apply(FoldConstants(), m)
    assert not res.changed and sorted(ops(out)) == ["Constant", "Neg"]
    assert [o.name for o in out.graph.output] == ["y", "k"]
    assert any("graph output" in n for n in res.notes)
    assert_identical(m, out)


def test_lift_can_be_switched_off_and_filtered() -> None:
    m = parse(CLIP)
    res, out = apply(FoldConstants.from_options({"lift_constants": False}), m)
    assert not res.changed and ops(out) == ["Constant", "Constant", "Clip"]
    res2, out2 = apply(FoldConstants(), m, PassContext(site_filter={"hi"}))
    assert res2.sites == ["hi"] and ops(out2) == ["Constant", "Clip"]
    assert_identical(m, out2)


def test_attribute_forms() -> None:
    m = parse(
        HEAD
        + """
    g (float[2] x) => (float[2] y) {
      a = Constant<value_ints = [1, 2]>()
      b = Constant<value_int = 7>()
      c = Constant<value_floats = [0.5, 1.5]>()
      s = Constant<value_string = "hi">()
      y = Add(x, c)
    }"""
    )
    graph = to_graph(m)
    by_out = {n.outputs[0].name: n for n in graph.nodes}
    assert constant_node_value(by_out["a"])[0].dtype == np.int64
    assert constant_node_value(by_out["b"])[0].shape == ()
    np.testing.assert_array_equal(constant_node_value(by_out["c"])[0], [0.5, 1.5])
    value, why = constant_node_value(by_out["s"])
    assert value is None and "value_string" in why
    done, notes = lift_constants(graph, PassContext())
    assert done == ["a", "b", "c"]
    assert any("value_string" in n for n in notes)


def test_gather_of_constants_folded_exporter_style() -> None:
    """The position-embedding lookup of the dynamo BERT: Gather(weight, constant ids)."""
    m = exporter_style(
        parse(
            HEAD
            + """
    g (float[1,3,4] x) => (float[1,3,4] y)
      <float[5,4] pos = {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19},
       int64[1,3] ids = {0, 1, 2}> {
      e = Gather<axis = 0>(pos, ids)
      y = Add(x, e)
    }"""
        )
    )
    res, out = apply(FoldConstants(), m)
    assert res.sites == ["e"] and ops(out) == ["Add"]
    np.testing.assert_array_equal(inits(out)["e"], np.arange(12, dtype=np.float32).reshape(1, 3, 4))
    assert_identical(m, out)


def test_gather_of_input_ids_kept() -> None:
    m = exporter_style(
        parse(
            HEAD
            + """
    g (int64[1,3] ids, float[1,3,4] x) => (float[1,3,4] y)
      <float[5,4] w = {0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19}> {
      e = Gather<axis = 0>(w, ids)
      y = Add(x, e)
    }"""
        )
    )
    res, out = apply(FoldConstants(), m)
    assert not res.changed and ops(out) == ["Gather", "Add"]


def test_gather_over_size_cap_kept() -> None:
    # constant indices, but the lookup (1536 bytes) is over 2x what it reads (128 + 192 bytes)
    table = ",".join(str(i) for i in range(32))
    idx = ",".join(["0", "1"] * 12)
    big = exporter_style(
        parse(
            HEAD
            + """
    g (float[1,24,16] x) => (float[1,24,16] y)
      <float[2,16] w = {TABLE}, int64[1,24] ids = {IDX}> {
      e = Gather<axis = 0>(w, ids)
      y = Add(x, e)
    }""".replace("TABLE", table).replace("IDX", idx)
        )
    )
    res, out = apply(FoldConstants.from_options({"max_bytes": 64}), big)
    assert not res.changed and ops(out) == ["Gather", "Add"]
    assert any("cap" in n for n in res.notes)
    res2, out2 = apply(FoldConstants(), big)  # the default 1 MiB cap lets it through
    assert res2.sites == ["e"] and ops(out2) == ["Add"]
    assert_identical(big, out2)


def test_identity_removed_exporter_style() -> None:
    m = exporter_style(
        parse(
            HEAD
            + """
    g (float[2] x) => (float[2] y) <float[2] w = {1, 2}> {
      v = Identity(w)
      y = Add(x, v)
    }"""
        )
    )
    res, out = apply(RemoveIdentity(), m)
    assert res.changed and ops(out) == ["Add"]
    assert_identical(m, out)


PAD_CHAIN = (
    HEAD
    + """
g (float[1,3,8,8] x) => (float[1,3,12,10] y) {
  n = Constant<value = int64[1] {4}>()
  p = Constant<value = int64[4] {1, 1, 2, 2}>()
  z = ConstantOfShape<value = int64[1] {0}>(n)
  cat = Concat<axis = 0>(p, z)
  s2 = Constant<value = int64[2] {-1, 2}>()
  r = Reshape(cat, s2)
  st = Constant<value = int64[1] {-1}>()
  en = Constant<value = int64[1] {-9223372036854775807}>()
  ax = Constant<value = int64[1] {0}>()
  sp = Constant<value = int64[1] {-1}>()
  sl = Slice(r, st, en, ax, sp)
  t = Transpose<perm = [1, 0]>(sl)
  s1 = Constant<value = int64[1] {-1}>()
  flat = Reshape(t, s1)
  pads = Cast<to = 7>(flat)
  y = Pad<mode = "constant">(x, pads)
}"""
)


def test_torchscript_pad_chain_folds_to_pad_constant() -> None:
    """TorchScript's F.pad: pads computed by ConstantOfShape/Concat/Reshape/Slice/Transpose/Cast."""
    m = exporter_style(parse(PAD_CHAIN))
    res, out = apply(FoldConstants(), m)
    assert res.changed and ops(out) == ["Pad"]
    np.testing.assert_array_equal(inits(out)["pads"], [0, 0, 2, 1, 0, 0, 2, 1])
    assert_identical(m, out)


def test_pad_chain_reading_an_input_kept() -> None:
    text = (
        PAD_CHAIN.replace("g (float[1,3,8,8] x)", "g (float[1,3,8,8] x, int64[4] p)")
        .replace("  p = Constant<value = int64[4] {1, 1, 2, 2}>()\n", "")
        .replace("=> (float[1,3,12,10] y)", "=> (float[1,3,?,?] y)")
    )
    m = exporter_style(parse(text))
    res, out = apply(FoldConstants(), m)
    assert {"Pad", "Concat", "Cast"} <= set(ops(out))
    assert "ConstantOfShape" not in ops(out)  # the input-free part still folds
