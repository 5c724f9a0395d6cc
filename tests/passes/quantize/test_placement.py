"""Transformer-style placement: MatMul + bias -> QGemm, int8 embeddings, float element-wise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes.quantize import QuantizeInt8
from onnxopt.passes.quantize.config import QuantizeConfig

from .support import F, H, S, V, encoder, outputs

RNG = np.random.default_rng(3)


def _feeds(n: int = 16) -> Feeds:
    return Feeds([{"ids": RNG.integers(0, V, (1, S)).astype(np.int64)} for _ in range(n)])


def test_matmul_bias_becomes_qgemm_and_embedding_reads_int8(tmp_path) -> None:
    m, feeds = encoder(RNG), _feeds()
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        m, PassContext(feeds=feeds, allow_slower=True)
    )
    q = res.model
    onnx.checker.check_model(q, full_check=True)
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    by_out = {o: n for n in q.graph.node for o in n.output}
    # the bias Adds read an int32 DQ (scale = x_scale * w_scale), not the float bias
    for add_out in ("a", "a2"):
        add = by_out[add_out]
        dq = next(
            by_out[i]
            for i in add.input
            if i in by_out
            and by_out[i].op_type == "DequantizeLinear"
            and init.get(by_out[i].input[0]) is not None
            and init[by_out[i].input[0]].dtype == np.int32
        )
        assert init[dq.input[0]].shape == (F if add_out == "a" else H,)
    # the embedding Gather reads the int8 table; a per-column DQ follows it
    gather = next(n for n in q.graph.node if n.op_type == "Gather")
    assert init[gather.input[0]].dtype == np.int8
    dq_e = next(
        n
        for n in q.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] == gather.output[0]
    )
    assert init[dq_e.input[1]].shape == (H,)
    # the element-wise Mul after a float-output MatMul stays float (no int8 input)
    assert any("Mul left float" in n for n in res.notes)
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("Identity") == 0
    opt = tmp_path / "opt.onnx"
    out = outputs(q, feeds, optimized=str(opt))
    opt_ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    assert opt_ops.count("QGemm") == 2, opt_ops
    assert not {"MatMul", "Gemm", "QLinearMul"} & set(opt_ops), opt_ops
    ref = outputs(m, feeds)
    assert float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out)) > 0.99
    np.testing.assert_allclose(outputs(q, feeds), out, rtol=1e-3, atol=1e-3)


def test_negative_elementwise_all_quantizes_the_mul(tmp_path) -> None:
    m, feeds = encoder(RNG), _feeds()
    q = (
        QuantizeInt8(QuantizeConfig(fallback=False, elementwise="all"))
        .run_model(m, PassContext(feeds=feeds, allow_slower=True))
        .model
    )
    muls = [n for n in q.graph.node if n.op_type == "Mul"]
    by_out = {o: n for n in q.graph.node for o in n.output}
    assert all(by_out[i].op_type == "DequantizeLinear" for n in muls for i in n.input)


@pytest.mark.slow
def test_bert_small_linear_layers_become_qgemm(tmp_path) -> None:
    from onnxopt import zoo

    path = zoo.build("bert_small")
    model = onnx.load(str(path))
    calib = Feeds([zoo.example_inputs("bert_small", 1, seed=100 + i) for i in range(16)])
    evals = Feeds([zoo.example_inputs("bert_small", 1, seed=900 + i) for i in range(4)])
    res = QuantizeInt8(QuantizeConfig(fallback=False)).run_model(
        model, PassContext(feeds=calib, allow_slower=True)
    )
    opt = tmp_path / "opt.onnx"
    out = outputs(res.model, evals, optimized=str(opt))
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    n_linear = sum(
        n.op_type in ("MatMul", "Gemm")
        and len(n.input) > 1
        and any(t.name == n.input[1] for t in model.graph.initializer)
        for n in model.graph.node
    )
    # every linear layer (6 per encoder layer + pooler) is a u8s8 QGemm; nothing float is left
    assert ops.count("QGemm") >= n_linear - 1 and not {"Gemm", "FusedGemm"} & set(ops), ops
    assert "LayerNormalization" not in ops or "SkipLayerNormalization" in ops
    ref = outputs(model, evals)
    assert float((ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out)) > 0.99
