"""ort-fuse-attention: self-attention subgraphs -> com.microsoft.Attention."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.ort_attention import OrtFuseAttention
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(4)


ATT = """<ir_version: 9, opset_import: ["": 17]>
g (float[1,4,8] x, float[1,4,8] xk, float[1,1,1,4] mask) => (float[1,4,8] y) {
  q0 = MatMul(x, wq)
  q1 = Add(q0, bq)
  q2 = Reshape(q1, split)
  q = Transpose<perm=[0,2,1,3]>(q2)
  k0 = MatMul(%s, wk)
  k2 = Reshape(k0, split)
  k3 = Transpose<perm=[0,2,1,3]>(k2)
  kt = Transpose<perm=[0,1,3,2]>(k3)
  v0 = MatMul(x, wv)
  v1 = Add(bv, v0)
  v2 = Reshape(v1, split)
  v = Transpose<perm=[0,2,1,3]>(v2)
  s0 = MatMul(q, kt)
  s1 = Div(s0, sqrt_d)
  s2 = Add(s1, mask)
  p = Softmax<axis=-1>(s2)
  c0 = MatMul(p, v)
  c1 = Transpose<perm=[0,2,1,3]>(c0)
  y = Reshape(c1, merge)
}"""


INITS = {
    **{w: R.standard_normal((8, 8)).astype(np.float32) for w in ("wq", "wk", "wv")},
    "bq": R.standard_normal(8).astype(np.float32),
    "bv": R.standard_normal(8).astype(np.float32),
    "split": np.array([1, 4, 2, 4], np.int64),
    "merge": np.array([1, 4, 8], np.int64),
    "sqrt_d": np.float32(2.0),
}


def test_self_attention_becomes_attention():
    m = parse(ATT % "x", INITS)
    res, out = apply(OrtFuseAttention, m, target="onnxruntime")
    assert counts(out) == {"Attention": 1, "Expand": 1}
    att = [n for n in out.graph.node if n.op_type == "Attention"][0]
    attrs = {a.name: (a.i if a.type == 2 else a.f) for a in att.attribute}
    assert attrs["num_heads"] == 2 and abs(attrs["scale"] - 0.5) < 1e-7
    assert_close(m, out)


def test_cross_attention_and_default_target_untouched():
    res = unchanged(parse(ATT % "xk", INITS), OrtFuseAttention, "onnxruntime")
    assert any("cross-attention" in n for n in res.notes)
    unchanged(parse(ATT % "x", INITS), OrtFuseAttention)


def test_attention_negative_probs_used_elsewhere():
    text = (ATT % "x").replace("=> (float[1,4,8] y)", "=> (float[1,4,8] y, float[1,2,4,4] p)")
    res = unchanged(parse(text, INITS), OrtFuseAttention, "onnxruntime")
    assert any("graph output" in n for n in res.notes)
