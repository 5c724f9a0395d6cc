"""fold-batchnorm: BatchNormalization folded into the Conv/ConvTranspose/Gemm/MatMul beside it."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.conv_bn import FoldBatchNorm
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(0)


HDR = '<ir_version: 8, opset_import: ["": 17]>'


def bn(c: int, prefix: str = "") -> dict[str, np.ndarray]:
    return {
        f"{prefix}s": R.uniform(0.5, 2, c).astype(np.float32),
        f"{prefix}b": R.standard_normal(c).astype(np.float32),
        f"{prefix}m": R.standard_normal(c).astype(np.float32),
        f"{prefix}v": R.uniform(0.5, 2, c).astype(np.float32),
    }


CONV_BN = (
    HDR
    + """
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
  c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
  y = BatchNormalization<epsilon=0.001>(c, s, b, m, v)
}"""
)


def conv_inits():
    return {
        "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "cb": R.standard_normal(4).astype(np.float32),
        **bn(4),
    }


def test_conv_bn_folds():
    m = parse(CONV_BN, conv_inits())
    res, out = apply(FoldBatchNorm, m)
    assert res.details["counts"] == {"conv_bn": 1}
    assert counts(out) == {"Conv": 1}
    assert out.graph.output[0].name == "y"
    assert_close(m, out)


def test_conv_transpose_grouped_bn_folds():
    text = (
        HDR
        + """
    g (float[1,4,5,5] x) => (float[1,6,11,11] y) {
      c = ConvTranspose<strides=[2,2], kernel_shape=[3,3], group=2>(x, w)
      y = BatchNormalization(c, s, b, m, v)
    }"""
    )
    m = parse(text, {"w": R.standard_normal((4, 3, 3, 3)).astype(np.float32), **bn(6)})
    res, out = apply(FoldBatchNorm, m)
    assert counts(out) == {"ConvTranspose": 1}
    assert_close(m, out)


SHIFT_BN = (
    HDR
    + """
    g (float[1,4,5,5] x) => (float[1,6,10,10] y) {
      c = ConvTranspose<strides=[2,2], kernel_shape=[2,2]>(x, w)
      a = Add(c, k)
      y = BatchNormalization(a, s, b, m, v)
    }"""
)


def test_a_per_channel_shift_between_conv_transpose_and_bn_folds_with_it():
    """PP-OCRv5's detector head: ``ConvTranspose -> Add(bias) -> BatchNormalization``."""
    inits = {
        "w": R.standard_normal((4, 6, 2, 2)).astype(np.float32),
        "k": R.standard_normal((1, 6, 1, 1)).astype(np.float32),
        **bn(6),
    }
    m = parse(SHIFT_BN, inits)
    res, out = apply(FoldBatchNorm, m)
    assert res.details["counts"] == {"conv_bn": 1}
    assert counts(out) == {"ConvTranspose": 1}
    assert_close(m, out)
    # a Sub after a grouped Conv with a bias: the same fold, the sign flipped
    text = (
        HDR
        + """
    g (float[1,4,7,7] x) => (float[1,6,5,5] y) {
      c = Conv<kernel_shape=[3,3], group=2>(x, w, cb)
      a = Sub(c, k)
      y = BatchNormalization(a, s, b, m, v)
    }"""
    )
    inits = {
        "w": R.standard_normal((6, 2, 3, 3)).astype(np.float32),
        "cb": R.standard_normal(6).astype(np.float32),
        "k": np.float32(0.7),
        **bn(6),
    }
    m = parse(text, inits)
    res, out = apply(FoldBatchNorm, m)
    assert counts(out) == {"Conv": 1}
    assert_close(m, out)


def test_a_shift_that_is_not_per_channel_or_is_read_elsewhere_is_left_alone():
    inits = {
        "w": R.standard_normal((4, 6, 2, 2)).astype(np.float32),
        "k": R.standard_normal((1, 1, 10, 10)).astype(np.float32),  # spatial
        **bn(6),
    }
    unchanged(parse(SHIFT_BN, inits), FoldBatchNorm)
    inits["k"] = R.standard_normal((1, 6, 1, 1)).astype(np.float32)
    read = SHIFT_BN.replace(
        "=> (float[1,6,10,10] y)", "=> (float[1,6,10,10] y, float[1,6,10,10] r)"
    )
    read = read.replace("y = Batch", "r = Relu(a)\n      y = Batch")
    unchanged(parse(read, inits), FoldBatchNorm)


def test_gemm_bn_and_matmul_bn_fold():
    text = (
        HDR
        + """
    g (float[2,5] x) => (float[2,3] y, float[2,3] z) {
      a = Gemm<transB=1, beta=0.5>(x, w, c)
      y = BatchNormalization(a, s, b, m, v)
      k = MatMul(x, w2)
      z = BatchNormalization(k, s2, b2, m2, v2)
    }"""
    )
    m = parse(
        text,
        {
            "w": R.standard_normal((3, 5)).astype(np.float32),
            "c": R.standard_normal(3).astype(np.float32),
            "w2": R.standard_normal((5, 3)).astype(np.float32),
            **bn(3),
            **bn(3, ""),
        }
        | {k + "2": v for k, v in bn(3).items()},
    )
    res, out = apply(FoldBatchNorm, m)
    assert res.details["counts"] == {"gemm_bn": 1, "matmul_bn": 1}
    assert "BatchNormalization" not in counts(out)
    assert_close(m, out)


def test_bn_before_unpadded_conv_and_gemm():
    text = (
        HDR
        + """
    g (float[1,3,6,6] x, float[2,5] u) => (float[1,4,4,4] y, float[2,3] z) {
      n = BatchNormalization(x, s, b, m, v)
      y = Conv<kernel_shape=[3,3]>(n, w, cb)
      n2 = BatchNormalization(u, s2, b2, m2, v2)
      z = Gemm<transB=1>(n2, w2, c2)
    }"""
    )
    m = parse(
        text,
        {
            **conv_inits(),
            **bn(3),
            "w2": R.standard_normal((3, 5)).astype(np.float32),
            "c2": R.standard_normal(3).astype(np.float32),
        }
        | {k + "2": v for k, v in bn(5).items()},
    )
    res, out = apply(FoldBatchNorm, m)
    assert res.details["counts"] == {"bn_conv": 1, "bn_gemm": 1}
    assert "BatchNormalization" not in counts(out)
    assert_close(m, out)


def test_negative_shared_weight():
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
      c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
      y = BatchNormalization(c, s, b, m, v)
      z = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w)
    }"""
    )
    res = unchanged(parse(text, conv_inits()), FoldBatchNorm)
    assert any("shared" in n for n in res.notes)


def test_negative_conv_output_is_graph_output():
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] c) {
      c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
      y = BatchNormalization(c, s, b, m, v)
    }"""
    )
    res = unchanged(parse(text, conv_inits()), FoldBatchNorm)
    assert any("graph output" in n for n in res.notes)


def test_negative_bn_before_padded_conv():
    text = (
        HDR
        + """
    g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
      n = BatchNormalization(x, s, b, m, v)
      y = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(n, w, cb)
    }"""
    )
    res = unchanged(parse(text, {**conv_inits(), **bn(3)}), FoldBatchNorm)
    assert any("pads" in n for n in res.notes)


def test_negative_training_mode():
    text = (
        HDR.replace("17", "15")
        + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
      c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
      y = BatchNormalization<training_mode=1>(c, s, b, m, v)
    }"""
    )
    res = unchanged(parse(text, conv_inits()), FoldBatchNorm)
    assert any("training" in n for n in res.notes)


def test_bias_shared_by_two_convs_is_copied_and_both_fold():
    # raw exports write every zero bias alike; after dedup two convs read one bias vector
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
      c = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w, cb)
      y = BatchNormalization(c, s, b, m, v)
      d = Conv<pads=[1,1,1,1], kernel_shape=[3,3]>(x, w2, cb)
      z = BatchNormalization(d, qs, qb, qm, qv)
    }"""
    )
    inits = {**conv_inits(), **bn(4, "q"), "w2": R.standard_normal((4, 3, 3, 3)).astype(np.float32)}
    m = parse(text, inits)
    res, out = apply(FoldBatchNorm, m)
    assert res.details["counts"] == {"conv_bn": 2}
    assert counts(out) == {"Conv": 2}
    assert_close(m, out)


def test_overridable_bn_parameters_are_not_folded():
    """Found by fuzzing: BN parameters that are also graph inputs (overridable initializers)
    are inputs, not constants; folding them into the Conv froze their default values."""
    m = parse(CONV_BN.replace("(float[1,3,8,8] x)", "(float[1,3,8,8] x, float[4] s)"), conv_inits())
    res = unchanged(m, FoldBatchNorm)
    assert [i.name for i in m.graph.input] == ["x", "s"] and not res.changed
