"""One instrumented run gives, for every layer, what quantizing that layer alone does: its
output error (SQNR, mean shift) in static int8 and, for MatMuls, in dynamic int8."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from onnxopt.data import Feeds
from onnxopt.graph import to_graph
from onnxopt.passes.quantize.build import Builder, group_params
from onnxopt.passes.quantize.placement import make_plan
from onnxopt.passes.quantize.prepare import prepare
from onnxopt.passes.quantize.sensitivity import Instrument, measure
from tests.helpers import parse, run

from .support import PLAN_KW

RNG = np.random.default_rng(8)

TWO = """
<ir_version: 8, opset_import: ["": 17]>
g (float[6,12] x) => (float[6,5] y) {
    h = MatMul (x, W1)
    r = Relu (h)
    y = MatMul (r, W2)
}
"""


def test_instrumented_run_matches_each_layer_quantized_alone() -> None:
    m = parse(
        TWO,
        {
            "W1": RNG.standard_normal((12, 7)).astype(np.float32),
            "W2": RNG.standard_normal((7, 5)).astype(np.float32),
        },
    )
    for i, node in enumerate(m.graph.node):
        node.name = f"n{i}"
    m = prepare(m)
    runs = [{"x": (RNG.standard_normal((6, 12)) + 1.0).astype(np.float32)} for _ in range(6)]
    plan = make_plan(to_graph(m), {"n0", "n2"})
    W1 = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "W1")
    ref = [(r["x"] @ W1, run(m, r)[0]) for r in runs]
    ranges = {
        "x": (min(r["x"].min() for r in runs), max(r["x"].max() for r in runs)),
        "r": (0.0, max(float(np.maximum(h, 0).max()) for h, _ in ref)),
    }
    params = group_params(plan, ranges, "uint8")
    probe = Instrument(m, plan, params, {}, per_axis=True, reduce_range=False, dynamic=True).build()
    stats = measure(m, probe, Feeds(runs).runs, batch=1, dynamic_batch=False)
    assert set(stats) == {"n0", "n2"}
    kw = PLAN_KW
    build = Builder(m, m, ranges, kw, activations="uint8", reduce_range=False, per_axis_ok=True)
    # the last layer alone: its output is the model's, so the built model shows its error
    q = build({"n2"})
    d = np.stack([run(q, r)[0] - y for r, (_, y) in zip(runs, ref)])
    np.testing.assert_allclose(stats["n2"].noise(corrected=False), (d**2).sum(), rtol=1e-3)
    np.testing.assert_allclose(stats["n2"].shift, d.reshape(-1, 5).mean(0), rtol=1e-3, atol=1e-6)
    signal = sum((y.astype(np.float64) ** 2).sum() for _, y in ref)
    assert abs(stats["n2"].sqnr() - 10 * np.log10(signal / (d**2).sum())) < 0.01
    # removing the shift removes its share of the noise
    assert stats["n2"].noise(corrected=True) < stats["n2"].noise(corrected=False)
    # dynamic int8 of the same layer
    qd = build({"n2"}, {"n2"})
    dd = np.stack([run(qd, r)[0] - y for r, (_, y) in zip(runs, ref)])
    np.testing.assert_allclose(stats["n2"].noise_dyn, (dd**2).sum(), rtol=1e-3)


def two_layer_probe(rng: np.random.Generator, n_runs: int = 20):
    """(model, instrumented probe, runs) of the two-layer MatMul model with a dynamic batch."""
    m = parse(
        TWO.replace("float[6,12] x", "float[N,12] x").replace("float[6,5] y", "float[N,5] y"),
        {
            "W1": rng.standard_normal((12, 7)).astype(np.float32),
            "W2": rng.standard_normal((7, 5)).astype(np.float32),
        },
    )
    for i, node in enumerate(m.graph.node):
        node.name = f"n{i}"
    m = prepare(m)
    runs = [{"x": rng.standard_normal((2, 12)).astype(np.float32)} for _ in range(n_runs)]
    plan = make_plan(to_graph(m), {"n0", "n2"})
    params = group_params(plan, {"x": (-4.0, 4.0), "r": (0.0, 6.0)}, "uint8")
    probe = Instrument(m, plan, params, {}, per_axis=True, reduce_range=False, dynamic=True).build()
    return m, probe, runs


def assert_same_stats(one: dict, split: dict) -> None:
    assert set(one) == set(split) == {"n0", "n2"}
    for k in one:
        a, b = one[k], split[k]
        assert np.array_equal(a.s1, b.s1) and np.array_equal(a.s2, b.s2), k
        assert (a.sig, a.count, a.noise_dyn) == (b.sig, b.count, b.noise_dyn), k


def test_split_across_workers_is_bit_for_bit() -> None:
    """The instrumented run cut between 3 worker processes (``ctx.parallel``) gives the same
    sums, shifts and SQNRs as one run, bit for bit: each worker returns its calls' sums and
    they are added here in the single run's order."""
    from onnxopt.search.parallel import PoolMap

    m, probe, runs = two_layer_probe(np.random.default_rng(3))
    one = measure(m, probe, runs, batch=3, dynamic_batch=True)
    split = measure(m, probe, runs, batch=3, dynamic_batch=True, parallel=PoolMap(3))
    assert_same_stats(one, split)


def test_weights_folded_into_the_probe_give_the_same_statistics_bit_for_bit() -> None:
    """The probe's int8 weights go in dequantized (as onnxruntime's DequantizeLinear computes
    them) instead of behind a DequantizeLinear run at every call: the same sums, per-channel and
    per-tensor weight scales alike, and no weight DequantizeLinear left in the probe."""
    rng = np.random.default_rng(11)
    m, _, runs = two_layer_probe(rng)
    plan = make_plan(to_graph(m), {"n0", "n2"})
    params = group_params(plan, {"x": (-4.0, 4.0), "r": (0.0, 6.0)}, "uint8")
    for per_axis in (True, False):
        probes = [
            Instrument(
                m, plan, params, {}, per_axis=per_axis, reduce_range=False, dynamic=True, fold=f
            ).build()
            for f in (False, True)
        ]
        dqs = [sum(n.op_type == "DequantizeLinear" for n in p.nodes) for p in probes]
        assert dqs[1] == dqs[0] - 2  # the two weights' DequantizeLinear folded
        plain, folded = (measure(m, p, runs, batch=3, dynamic_batch=True) for p in probes)
        assert_same_stats(plain, folded)
