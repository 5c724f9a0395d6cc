"""quantize-int4 inside If / Loop bodies: the layers there become MatMulNBits, their inputs
are probed over every iteration, and their sites name the body."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.contract import PassContext
from onnxopt.data import Feeds
from onnxopt.passes import registry
from onnxopt.passes.precision import QuantizeInt4
from onnxopt.passes.precision.config import Int4Config
from onnxopt.passes.precision.nbits import quantize_rtn
from onnxopt.passes.precision.probe import Probe
from onnxopt.verify import Budget
from tests.helpers import run

ORT = "onnxruntime"
RNG = np.random.default_rng(3)
W = {n: (RNG.standard_normal((64, 64)) / 8).astype(np.float32) for n in ("W0", "W1", "W2")}

# a Loop whose body multiplies its state by the outer W0 (3 iterations), then an If whose
# then-branch holds its own weight W1 and whose else-branch multiplies by a runtime tensor
TEXT = """<ir_version: 8, opset_import: ["": 17]>
g (float[4,64] x, bool c) => (float[4,64] y, float[4,64] z) {
    n = Constant <value = int64 {3}> ()
    t = Constant <value = bool {1}> ()
    y = Loop (n, t, x) <body = loop_body (int64 i, bool cin, float[4,64] s) => (bool cout, float[4,64] s2) {
        cout = Identity (cin)
        h = MatMul (s, W0)
        s2 = Tanh (h)
    }>
    z = If (c) <then_branch = then_g () => (float[4,64] zt) {
        zt = MatMul (y, W1)
    }, else_branch = else_g () => (float[4,64] ze) {
        p = Transpose (y)
        q = MatMul (p, y)
        ze = MatMul (y, q)
    }>
}"""


def _model(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    m = onnx.parser.parse_model(TEXT)
    m.graph.initializer.append(numpy_helper.from_array(weights["W0"], "W0"))
    then = next(a.g for a in m.graph.node[3].attribute if a.name == "then_branch")
    then.initializer.append(numpy_helper.from_array(weights["W1"], "W1"))
    onnx.checker.check_model(m)
    return m


def _feeds(n: int, cond: bool | None = None) -> Feeds:
    runs = []
    for i in range(n):
        c = bool(i % 2) if cond is None else cond
        runs.append({"x": RNG.standard_normal((4, 64)).astype(np.float32), "c": np.array(c)})
    return Feeds(runs)


def _nbits(g: onnx.GraphProto) -> list[str]:
    out = [n.name for n in g.node if n.op_type == "MatMulNBits"]
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out += _nbits(a.g)
    return out


def test_body_layers_become_matmulnbits_with_the_rtn_weights() -> None:
    m = _model(W)
    config = Int4Config(algo="rtn")
    res, out = QuantizeInt4(config).apply(m, PassContext(feeds=_feeds(4), target=ORT))
    onnx.checker.check_model(out)
    assert res.changed and sorted(res.sites) == [
        "If_3.then_branch::MatMul_g2_0",
        "Loop_2.body::MatMul_g1_1",
    ], res.sites
    assert len(_nbits(out.graph)) == 2
    # the outer W0 and the branch's W1 are no longer read: gone; the runtime product stays
    assert not any(t.name in ("W0", "W1") for t in out.graph.initializer)
    assert any("else_branch::MatMul_g3_2" in s and "not a constant" in s for s in res.notes), (
        res.notes
    )
    # the same model with the dequantized weights gives the same outputs
    deq = {k: quantize_rtn(v, 4, 32, False).dequantize() for k, v in W.items()}
    ref = _model(deq)
    for c in (True, False):
        feed = {"x": RNG.standard_normal((4, 64)).astype(np.float32), "c": np.array(c)}
        for a, b in zip(run(out, feed), run(ref, feed)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert m.graph.node[2].attribute[0].g.node[1].op_type == "MatMul"  # input untouched


def test_the_probe_reads_a_loop_body_tensor_at_every_iteration() -> None:
    m = _model(W)
    feeds = _feeds(2, cond=True)
    probe = Probe(m, feeds, runs=2, budget=1 << 20)
    seen = list(probe.stream(["s", "y"]))
    x = feeds.runs[0]["x"]
    states = [x]
    for _ in range(2):
        states.append(np.tanh(states[-1] @ W["W0"]))
    assert seen[0]["s"].shape == (3, 4, 64)
    np.testing.assert_allclose(seen[0]["s"], np.stack(states), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seen[0]["y"], np.tanh(states[-1] @ W["W0"]), rtol=1e-5, atol=1e-6)


def test_a_branch_not_taken_adds_no_rows() -> None:
    """Calibration runs that all take the else-branch leave the then-branch's layer without
    data: it is quantized data-free, and the model still runs on both branches."""
    m = _model(W)
    res, out = QuantizeInt4(Int4Config(algo="rtn")).apply(
        m, PassContext(feeds=_feeds(2, cond=False), target=ORT)
    )
    assert len(_nbits(out.graph)) == 2, res.notes
    for c in (True, False):
        feed = {"x": RNG.standard_normal((4, 64)).astype(np.float32), "c": np.array(c)}
        assert all(np.isfinite(v).all() for v in run(out, feed))


def test_the_pipeline_verifies_and_keeps_the_body_sites() -> None:
    pm = registry.manager(["quantize-int4"], target=ORT, budget=Budget(min_cosine=0.98))
    out, rep = pm.run(_model(W), _feeds(6))
    p = rep.passes[0]
    assert p.status == "kept" and not p.dropped_sites, (p.reason, p.notes)
    assert len(_nbits(out.graph)) == 2
    assert {r["node"] for r in p.details["layers"]} == {
        "Loop_2.body::MatMul_g1_1",
        "If_3.then_branch::MatMul_g2_0",
    }
