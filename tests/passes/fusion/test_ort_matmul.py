"""ort-fuse-matmul: Transpose and scales into com.microsoft.FusedMatMul."""

from __future__ import annotations

import math

import numpy as np

from onnxopt.passes.fusion.ort_matmul import OrtFuseMatMul
from tests.helpers import apply, assert_close, counts, parse, unchanged

HDR = '<ir_version: 9, opset_import: ["": 17]>'


ORT = "onnxruntime"


FMM = (
    HDR
    + """
g (float[2,3,4,5] q, float[2,3,6,5] k) => (float[2,3,4,6] y) {
  qs = Mul(q, s)
  kt = Transpose<perm=[0,1,3,2]>(k)
  m = MatMul(qs, kt)
  y = Div(m, d)
}"""
)


def test_fused_matmul_transpose_and_scales():
    m = parse(FMM, {"s": np.float32(0.5), "d": np.float32(math.sqrt(5))})
    res, out = apply(OrtFuseMatMul, m, target=ORT)
    assert counts(out) == {"FusedMatMul": 1}
    attrs = {a.name: (a.f if a.type == 1 else a.i) for a in out.graph.node[0].attribute}
    assert attrs["transB"] == 1 and abs(attrs["alpha"] - 0.5 / math.sqrt(5)) < 1e-6
    assert_close(m, out)


def test_fused_matmul_negative_batch_perm():
    text = (
        HDR
        + """
    g (float[3,2,4,5] q, float[2,3,5,6] k) => (float[2,3,4,6] y) {
      qt = Transpose<perm=[1,0,2,3]>(q)
      y = MatMul(qt, k) }"""
    )
    res = unchanged(parse(text), OrtFuseMatMul, ORT)
    assert any("batch axes" in n for n in res.notes)
