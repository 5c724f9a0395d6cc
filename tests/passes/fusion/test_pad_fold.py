"""fold-pad: a zero Pad folded into the pads of the Conv/AveragePool after it."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.pad_fold import FoldPad
from tests.helpers import apply, assert_close, counts, parse, unchanged

R = np.random.default_rng(1)


HDR = '<ir_version: 8, opset_import: ["": 17]>'


W = {
    "w": R.standard_normal((4, 3, 3, 3)).astype(np.float32),
    "cb": R.standard_normal(4).astype(np.float32),
}


PAD_CONV = (
    '<ir_version: 8, opset_import: ["": 17]>'
    + """
g (float[1,3,8,8] x) => (float[1,4,%d,%d] y) {
  p = Pad<mode="%s">(x, pads%s)
  y = %s(p, w, cb)
}"""
)


def test_pad_into_conv_and_avgpool():
    pads = np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)
    m = parse(
        PAD_CONV % (12, 9, "constant", "", "Conv<kernel_shape=[3,3], pads=[1,0,1,0]>"),
        {**W, "pads": pads},
    )
    res, out = apply(FoldPad, m)
    assert counts(out) == {"Conv": 1}
    assert_close(m, out)
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,3,9,9] y) {
      p = Pad(x, pads)
      y = AveragePool<kernel_shape=[2,2], count_include_pad=1>(p) }"""
    )
    m = parse(text, {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64)})
    res, out = apply(FoldPad, m)
    assert counts(out) == {"AveragePool": 1}
    assert_close(m, out)


def test_pad_negative_value_mode_maxpool():
    pads = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
    m = parse(
        PAD_CONV % (8, 8, "constant", ", v", "Conv<kernel_shape=[3,3]>"),
        {**W, "pads": pads, "v": np.float32(1.0)},
    )
    assert any("not 0" in n for n in unchanged(m, FoldPad).notes)
    m = parse(PAD_CONV % (8, 8, "reflect", "", "Conv<kernel_shape=[3,3]>"), {**W, "pads": pads})
    unchanged(m, FoldPad)
    text = (
        HDR
        + """
    g (float[1,3,8,8] x) => (float[1,3,9,9] y) { p = Pad(x, pads)
      y = MaxPool<kernel_shape=[2,2]>(p) }"""
    )
    assert any("MaxPool" in n for n in unchanged(parse(text, {"pads": pads}), FoldPad).notes)
