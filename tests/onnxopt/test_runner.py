"""Runner: an output whose shape contradicts the model's declaration is a one-line ModelError
(onnxruntime only warns, and reports the inferred shape as if it were declared)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt import runner as runner_mod
from onnxopt.data import Feeds
from onnxopt.errors import ModelError
from onnxopt.runner import Runner, shape_disagrees, side_by_side
from tests.helpers import parse

HDR = '<ir_version: 8, opset_import: ["": 17]>'


def test_declared_output_shape_is_checked_on_every_run():
    m = parse(HDR + "g (float[2,N] x) => (float[2,3] y) { y = Relu(x) }")
    runner = Runner(quiet=True)
    assert runner.run(m, Feeds([{"x": np.ones((2, 3), np.float32)}]))[0]["y"].shape == (2, 3)
    with pytest.raises(
        ModelError, match=r"'y' is declared \[2, 3\] but the model computes \[2, 5\]"
    ):
        runner.run(m, Feeds([{"x": np.ones((2, 5), np.float32)}]))


def test_shape_disagrees_reads_only_positive_static_dims():
    a = np.zeros((2, 5))
    assert shape_disagrees([2, None], a) == ""
    assert shape_disagrees([0, 5], a) == ""  # 0: "unknown" in old exporters
    assert "declared [2, 4]" in shape_disagrees([2, 4], a)
    assert "declared [2]" in shape_disagrees([2], a)
    assert shape_disagrees(None, a) == ""


def test_a_search_worker_thread_cap_applies_where_the_count_was_left_to_onnxruntime(monkeypatch):
    """``$ONNXOPT_THREADS`` (set by the search's workers, which hold one CPU each) caps the
    sessions that leave the count at onnxruntime's default; an explicit count is kept."""
    m = parse(HDR + "g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }")

    def threads(runner: Runner) -> int:
        return runner.session(m).get_session_options().intra_op_num_threads

    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    monkeypatch.setattr(runner_mod, "side_by_side", lambda: 1)  # one session: the default
    assert threads(Runner(quiet=True)) == 0
    monkeypatch.setenv("ONNXOPT_THREADS", "1")
    assert threads(Runner(quiet=True)) == 1
    assert threads(Runner(quiet=True, threads=2)) == 2


#: a QDQ graph: per-channel int8 Conv weights with an int32 bias, a per-tensor uint8 MatMul
#: weight with a zero point, and one DequantizeLinear that is a graph output (left alone)
QDQ = """
<ir_version: 8, opset_import: ["": 17]>
g (float[2,3,8,8] x) => (float[2,4,8,4] y, float[4] wo) {
    xq = QuantizeLinear (x, xs, xz)
    xd = DequantizeLinear (xq, xs, xz)
    wd = DequantizeLinear <axis = 0> (wq, ws, wz)
    bd = DequantizeLinear (bq, bs)
    c = Conv <pads = [1, 1, 1, 1]> (xd, wd, bd)
    md = DequantizeLinear (mq, ms, mz)
    y = MatMul (c, md)
    wo = DequantizeLinear (oq, ms, mz)
}
"""


def _qdq_model():
    rng = np.random.default_rng(3)
    return parse(
        QDQ,
        {
            "xs": np.array(0.02, np.float32),
            "xz": np.array(0, np.int8),
            "wq": rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8),
            "ws": rng.uniform(0.001, 0.01, 4).astype(np.float32),
            "wz": np.zeros(4, np.int8),
            "bq": rng.integers(-5000, 5000, 4).astype(np.int32),
            "bs": np.array(0.0001, np.float32),
            "mq": rng.integers(0, 256, (8, 4)).astype(np.uint8),
            "ms": np.array(0.003, np.float32),
            "mz": np.array(131, np.uint8),
            "oq": rng.integers(0, 256, 4).astype(np.uint8),
        },
    )


def test_a_literal_session_reads_quantized_weights_dequantized_once_with_the_same_outputs():
    """Graph optimizations off, onnxruntime dequantizes every weight on every run: the
    literal session gets them as float32 initializers instead, computed as onnxruntime does,
    so the outputs are bit-identical; activations and a dequantized graph output stay."""
    from onnxopt.runner import weights_dequantized

    m = _qdq_model()
    folded = weights_dequantized(m)
    ops = [n.op_type for n in folded.graph.node]
    assert ops.count("DequantizeLinear") == 2  # the activation's and the graph output's
    assert [n.op_type for n in m.graph.node].count("DequantizeLinear") == 5  # input untouched
    # the integer weights nothing reads now are gone; what the other two read stays
    left = {t.name for t in folded.graph.initializer}
    assert not left & {"wq", "ws", "wz", "bq", "bs", "mq"}
    assert {"xs", "xz", "ms", "mz", "oq"} <= left
    feeds = Feeds([{"x": np.random.default_rng(i).normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}
                   for i in range(3)])  # fmt: skip
    literal = Runner(quiet=True)
    got = literal.run(m, feeds)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.disable_prepacking", "1")  # as the runner's
    plain = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for run, out in zip(feeds.runs, got, strict=True):
        want = dict(zip(["y", "wo"], plain.run(["y", "wo"], run), strict=True))
        for k in want:
            np.testing.assert_array_equal(out[k], want[k])
    # the cache still recognizes the model as given
    assert literal.session(m) is literal.session(m)


def test_weights_past_the_cap_or_the_memory_available_are_left_quantized(monkeypatch):
    from onnxopt import memory, runner

    m = _qdq_model()
    assert runner.weights_dequantized(m) is not m
    monkeypatch.setattr(memory, "available", lambda: memory.GiB)  # no room beside a GiB
    assert runner.weights_dequantized(m) is m
    monkeypatch.undo()
    monkeypatch.setattr(runner, "DEQUANTIZE_MAX_BYTES", 100)
    assert runner.weights_dequantized(m) is m
    plain = parse(HDR + "g (float[2] x) => (float[2] y) { y = Relu(x) }")
    assert runner.weights_dequantized(plain) is plain
    monkeypatch.undo()
    # a weight a caller may feed (an initializer that is also a graph input) is no constant
    fed = _qdq_model()
    fed.graph.input.append(onnx.helper.make_tensor_value_info("mq", onnx.TensorProto.UINT8, [8, 4]))
    ops = [n.op_type for n in runner.weights_dequantized(fed).graph.node]
    assert ops.count("DequantizeLinear") == 3


def test_runs_go_side_by_side_on_one_thread_sessions_in_their_order(monkeypatch):
    """Several runs go to sessions of one model side by side (one intra-op thread each on two
    cores), built at the first call of several runs; the outputs are each run's, in order,
    as one session computes them."""
    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    monkeypatch.setattr(runner_mod, "side_by_side", lambda: 2)
    monkeypatch.setattr(runner_mod, "_cores", lambda: 2)
    m = parse(HDR + "g (float[N,3] x) => (float[N,3] y) { y = Relu(x) }")
    runner = Runner(quiet=True)
    assert runner.side == 2
    sess = runner.session(m)
    assert sess.get_session_options().intra_op_num_threads == 1
    runner.run_session(sess, Feeds([{"x": np.ones((1, 3), np.float32)}]))
    assert sess._onnxopt_side[2] == []  # one run: no second session
    runs = [{"x": np.full((i + 1, 3), i - 20, np.float32)} for i in range(40)]
    out = runner.run_session(sess, Feeds(runs))
    assert len(sess._onnxopt_side[2]) == 1
    assert [o["y"].shape[0] for o in out] == list(range(1, 41))
    for run, o in zip(runs, out):
        np.testing.assert_array_equal(o["y"], np.maximum(run["x"], 0))
    # the same outputs, bit for bit, as one session of the same options running them in turn
    alone = [runner_mod._side_sessions(sess, 1)[0].run(None, r)[0] for r in runs]
    for a, o in zip(alone, out):
        np.testing.assert_array_equal(a, o["y"])


def test_a_failing_run_among_runs_side_by_side_is_one_model_error(monkeypatch):
    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    monkeypatch.setattr(runner_mod, "side_by_side", lambda: 2)
    m = parse(HDR + "g (float[2,N] x) => (float[2,3] y) { y = Relu(x) }")
    runs = [{"x": np.ones((2, 3), np.float32)} for _ in range(6)]
    runs[4] = {"x": np.ones((2, 5), np.float32)}
    with pytest.raises(ModelError, match=r"declared \[2, 3\] but the model computes \[2, 5\]"):
        Runner(quiet=True).run(m, Feeds(runs))


def test_side_by_side_is_off_under_a_thread_cap_or_an_explicit_count(monkeypatch):
    monkeypatch.setenv("ONNXOPT_THREADS", "1")
    assert side_by_side() == 1
    monkeypatch.delenv("ONNXOPT_THREADS")
    assert Runner(threads=2).side == 1


def test_a_model_over_the_side_by_side_size_runs_on_one_session(monkeypatch):
    """Above ``SIDE_MAX_BYTES`` of weights a model keeps one session on onnxruntime's threads
    (each session beside it would hold its own buffers, or copy the weights)."""
    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    monkeypatch.setattr(runner_mod, "side_by_side", lambda: 2)
    monkeypatch.setattr(runner_mod, "SIDE_MAX_BYTES", {False: 0, True: 0})
    m = parse(
        HDR + "g (float[2,3] x) => (float[2,3] y) <float[3] w = {1.0, 2.0, 3.0}> { y = Mul(x, w) }"
    )
    runner = Runner(quiet=True)
    sess = runner.session(m)
    assert sess.get_session_options().intra_op_num_threads == 0
    runs = [{"x": np.full((2, 3), i, np.float32)} for i in range(4)]
    out = runner.run_session(sess, Feeds(runs))
    assert sess._onnxopt_side[2] == []
    assert [float(o["y"][0, 2]) for o in out] == [0.0, 3.0, 6.0, 9.0]


def test_a_failing_part_stops_the_other_parts_at_their_next_step():
    """``in_threads``: the first part's error is raised once the others have ended, and they
    end at their next check of ``stop`` (as a Ctrl-C would have them) instead of running on."""
    import threading
    import time

    from onnxopt.runner import in_threads

    stop = threading.Event()
    steps = []

    def part(k: int) -> int:
        if k == 0:
            time.sleep(0.05)
            raise ValueError("part 0 failed")
        while not stop.is_set() and len(steps) < 10_000:
            steps.append(k)
            time.sleep(0.001)
        return k

    with pytest.raises(ValueError, match="part 0 failed"):
        in_threads(part, [(0,), (1,)], stop)
    assert stop.is_set()
    assert len(steps) < 10_000
    assert in_threads(lambda a, b: a + b, [(1, 2), (3, 4)]) == [3, 7]


def test_side_for_reads_the_weights_of_a_model_its_bytes_or_its_path(monkeypatch, tmp_path):
    """Calibration and sensitivity go side by side only under the same size cap."""
    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    monkeypatch.setattr(runner_mod, "side_by_side", lambda: 2)
    m = parse(
        HDR + "g (float[2,3] x) => (float[2,3] y) <float[3] w = {1.0, 2.0, 3.0}> { y = Mul(x, w) }"
    )
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    for model in (m, m.SerializeToString(), str(path)):
        assert runner_mod.side_for(model) == 2
    monkeypatch.setattr(runner_mod, "SIDE_MAX_BYTES", {False: 0, True: 0})
    for model in (m, m.SerializeToString(), str(path)):
        assert runner_mod.side_for(model) == 1


def test_materialized_bytes_counts_weights_a_model_computes_at_run_time():
    """A ConstantOfShape of a constant shape is a weight made in every session (the onnx
    backend's light CNNs hold all theirs that way): it counts toward the side-by-side cap."""
    m = parse(
        HDR + "g (float[2,64] x) => (float[2,32] y) <int64[2] s = {64, 32}> "
        "{ w = ConstantOfShape <value = float[1] {0.5}> (s)  y = MatMul(x, w) }"
    )
    assert runner_mod.materialized_bytes(m) == 64 * 32 * 4
    plain = parse(HDR + "g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }")
    assert runner_mod.materialized_bytes(plain) == 0
