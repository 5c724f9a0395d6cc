"""fuse-layout: Transpose/Reshape/Squeeze chains merged or cancelled."""

from __future__ import annotations

import numpy as np

from onnxopt.passes.fusion.layout import FuseLayout
from tests.helpers import apply, assert_close, counts, parse, run, unchanged

HDR = '<ir_version: 8, opset_import: ["": 17]>'


def test_transposes_merge_and_cancel():
    text = (
        HDR
        + """
    g (float[2,3,4] x) => (float[4,2,3] y, float[2,3,4] z) {
      a = Transpose<perm=[1,0,2]>(x)
      y = Transpose<perm=[2,1,0]>(a)
      b = Transpose<perm=[2,0,1]>(x)
      c = Transpose<perm=[1,2,0]>(b)
      z = Neg(c)
    }"""
    )
    m = parse(text)
    res, out = apply(FuseLayout, m)
    assert res.details["counts"] == {"transpose_transpose": 2}
    assert counts(out) == {"Transpose": 1, "Neg": 1}
    assert_close(m, out)


def test_reshape_chain_and_squeeze_pairs():
    text = (
        HDR
        + """
    g (float[2,3,4] x) => (float[4,6] y, float[2,3,4] z, float[2,3,4] w) {
      f = Flatten<axis=1>(x)
      y = Reshape(f, s)
      u = Unsqueeze(x, ax)
      z = Squeeze(u, ax)
      q = Squeeze(u, ax)
      w = Unsqueeze(q, axn)
    }"""
    )
    m = parse(
        text,
        {
            "s": np.array([4, 6], np.int64),
            "ax": np.array([1], np.int64),
            "axn": np.array([-3], np.int64),
        },
    )
    res, out = apply(FuseLayout, m)
    assert counts(out)["Reshape"] == 1 and "Flatten" not in counts(out)
    assert res.details["counts"]["reshape_chain"] == 1
    assert_close(m, out)


def test_layout_negative_cases():
    text = (
        HDR
        + """
    g (float[2,3,4] x) => (float[2,3,4] z, float[2,1,3,4] u, float[2,12] y) {
      u = Unsqueeze(x, ax)
      z = Squeeze(u, ax)
      r = Reshape(x, s0)
      y = Reshape(r, s)
    }"""
    )
    m = parse(
        text,
        {
            "ax": np.array([1], np.int64),
            "s0": np.array([6, 4], np.int64),
            "s": np.array([2, 0], np.int64),
        },
    )
    res = unchanged(m, FuseLayout)
    assert any("graph output" in n for n in res.notes)
    assert any("copies a dimension" in n for n in res.notes)
    text2 = (
        HDR
        + """
    g (float[2,1,3] x) => (float[2,1,3] z) { u = Unsqueeze(x, a1)  z = Squeeze(u, a2) }"""
    )
    m2 = parse(text2, {"a1": np.array([1], np.int64), "a2": np.array([2], np.int64)})
    assert any("axes differ" in n for n in unchanged(m2, FuseLayout).notes)


def test_transpose_of_size_one_axes_joins_the_reshape():
    """The recurrent exports' [seq, 1, batch, hidden] shuffles: Transpose-Reshape-Transpose
    that only move size-1 axes become one Reshape."""
    m = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[16,1,1,64] x) => (float[1,16,64] y) <int64[3] s = {16, 1, 64}> {
            a = Transpose<perm = [0, 2, 1, 3]>(x)
            b = Reshape(a, s)
            y = Transpose<perm = [1, 0, 2]>(b)
        }"""
    )
    res, out = apply(FuseLayout, m)
    assert res.details["counts"] == {"transpose_reshape": 2}
    assert counts(out) == {"Reshape": 1}
    assert_close(m, out)
    kept = parse(
        """<ir_version: 8, opset_import: ["": 17]>
        g (float[16,2,1,64] x) => (float[32,64] y) <int64[2] s = {32, 64}> {
            a = Transpose<perm = [1, 0, 2, 3]>(x)
            y = Reshape(a, s)
        }"""
    )
    unchanged(kept, FuseLayout)


def test_cancelled_pair_into_graph_output_whose_input_a_subgraph_reads():
    """Found by fuzzing: merging a graph output into a tensor an If branch reads is refused
    by ``merge_tensors``; the rule must decline in ``check`` (it raised in ``rewrite``, which
    failed the whole pass)."""
    text = (
        HDR
        + """
    g (float[2,3] x, bool c) => (float[2,3] y, float[2,3] z, float[2,3] w) {
      a = Relu(x)
      t = Transpose<perm=[1,0]>(a)
      y = Transpose<perm=[1,0]>(t)
      z = If(c) <then_branch = g1 () => (float[2,3] o1) { o1 = Neg(a) },
                 else_branch = g2 () => (float[2,3] o2) { o2 = Abs(a) }>
      s = Sigmoid(x)
      u = Transpose<perm=[1,0]>(s)
      w = Transpose<perm=[1,0]>(u)
    }"""
    )
    m = parse(text)
    res, out = apply(FuseLayout, m)
    assert res.rewrites == 1
    assert counts(out) == {"Relu": 1, "Sigmoid": 1, "Transpose": 2, "If": 1}
    assert any("used inside a subgraph" in n for n in res.notes)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)}
    for cond in (True, False):
        feeds["c"] = np.array(cond)
        for a, b in zip(run(m, feeds), run(out, feeds), strict=True):
            np.testing.assert_array_equal(a, b)
