"""The verifier: exact passes on a bounded number of runs, the noise floor, the speed gate
for lossy passes made for speed, and metrics read from the output that holds the scores."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser

from onnxopt.bisection import Trial, bisect_sites
from onnxopt.contract import Pass, PassResult
from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.registry import manager
from onnxopt.runner import Runner
from onnxopt.summary import ModelSummary
from onnxopt.verifier import Stage, Verifier
from onnxopt.verify import Budget

RELU = parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
g (float[2,4] x) => (float[2,4] y) { y = Relu(x) }""")


def _feeds(n: int, shape=(2, 4), seed: int = 0) -> Feeds:
    rng = np.random.default_rng(seed)
    return Feeds([{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])


class ReluToMax(Pass):
    """Test-only exact pass: Relu(x) -> Max(x, 0)."""

    name = "test-relu-max"
    exact = True

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        for n in graph.nodes:
            if n.op == "Relu":
                n.op = "Max"
                n.inputs.append(gs.Constant("zero", np.zeros(1, np.float32)))
        return PassResult(changed=True, rewrites=1)


def test_exact_passes_are_verified_on_a_bounded_number_of_runs():
    out, rep = manager([ReluToMax()], exact_runs=3).run(RELU, _feeds(20))
    assert rep.passes[0].status == "kept"
    assert rep.verified_on == {"exact": 3, "lossy": 20}
    assert any("verified on 3 of 20 runs" in n for n in rep.notes)


def test_a_candidate_within_the_noise_floor_is_kept_with_a_note():
    runner = Runner()
    feeds = _feeds(2)
    v = Verifier(runner, feeds, exact_runs=None, budget=None)
    ref = runner.run(RELU, feeds)
    v.first = Stage(RELU, ref, ModelSummary.of(RELU))
    shifted = onnx.ModelProto()
    shifted.CopyFrom(RELU)
    node = shifted.graph.node[0]
    # y = Relu(x) + 1e-4: beyond the fixed tolerance (atol 1e-5 * max(1, |y|) + rtol 1e-4 |y|)
    shifted.graph.initializer.append(numpy_helper.from_array(np.float32([1e-4]), "eps"))
    node.output[0] = "r"
    shifted.graph.node.append(helper.make_node("Add", ["r", "eps"], ["y"]))
    assert v.verify(shifted, v.first, exact=True).stage is None  # no noise: rejected
    v.first.noise = {"y": 5e-5}  # the model's own float noise, as if measured
    checked = v.verify(shifted, v.first, exact=True)
    assert checked.stage is not None
    assert any("own float noise" in n for n in checked.notes)


def _tiny_gemm() -> onnx.ModelProto:
    """9 weights and 3 biases: int8 cannot pay for its quantize / dequantize."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "B")
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        [w, b],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_int8_that_is_not_faster_is_rolled_back_unless_allowed():
    model = _tiny_gemm()
    feeds = _feeds(16, shape=(1, 3))
    budget = Budget(min_cosine=0.9)
    # the pass's own latency-aware placement would leave this layer float; the manager's speed
    # gate is what is tested here
    opts = {"quantize-int8": {"latency_aware": False}}
    _, rep = manager(["quantize-int8"], options=opts, budget=budget).run(model, feeds)
    q = rep.passes[0]
    assert q.status == "rolled back" and q.reason.startswith("not faster"), q.reason
    assert "interleaved rounds" in q.reason and "--allow-slower" in q.reason
    out, rep = manager(["quantize-int8"], options=opts, budget=budget, allow_slower=True).run(
        model, feeds
    )
    assert rep.passes[0].status == "kept"
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)


def test_speed_is_judged_at_the_latency_batch():
    """``latency_batch``: the speed gate races the models on the runs stacked to that batch
    (the verdict is timing; where it was judged is not)."""
    model = _tiny_gemm()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    feeds = _feeds(16, shape=(1, 3))
    opts = {"quantize-int8": {"latency_aware": False}}
    pm = manager(["quantize-int8"], options=opts, budget=Budget(min_cosine=0.9), latency_batch=8)
    _, rep = pm.run(model, feeds)
    said = [rep.passes[0].reason, *rep.passes[0].notes]
    assert any("at batch 8" in s for s in said), said


def _classifier() -> onnx.ModelProto:
    """skl2onnx's layout: 'label' (int64 [N]) first, then 'probabilities' (float [N, 3])."""
    return parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[N,3] x) => (int64[N] label, float[N,3] probabilities) {
        probabilities = Softmax <axis = -1> (x)
        label = ArgMax <axis = 1, keepdims = 0> (x)
    }""")


def test_accuracy_reads_the_scores_output_and_names_it():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 3)).astype(np.float32)
    feeds = Feeds([{"x": x}], labels=[x.argmax(-1)])
    _, rep = manager(["cleanup"]).run(_classifier(), feeds)
    assert rep.metric_output == "probabilities" and rep.accuracy_original == 100.0
    _, rep = manager(["cleanup"], metric_output="label").run(_classifier(), feeds)
    assert rep.metric_output == "label" and rep.accuracy_original == 100.0
    with pytest.raises(OptionError, match="--metric-output 'nope'"):
        manager(["cleanup"], metric_output="nope").run(_classifier(), feeds)


def test_bisection_stops_at_its_time_budget():
    calls = []

    def trial(allowed):
        calls.append(allowed)
        return Trial(None, "fails")

    b = bisect_sites(["a", "b", "c", "d"], trial, max_trials=10, max_seconds=0.0)
    assert b.budget_spent and not calls and sorted(b.dropped) == ["a", "b", "c", "d"]


def test_bisection_never_retries_the_set_that_failed():
    """With the culprit in the second half, the halves joined to the good first half would be
    the failed candidate again: that site is dropped without re-running the pass."""
    calls = []

    def trial(allowed):
        calls.append(frozenset(allowed))
        return Trial(None, "fails") if "d" in allowed else Trial(object())

    b = bisect_sites(["a", "b", "c", "d"], trial, max_trials=10, why="over budget")
    assert frozenset("abcd") not in calls
    assert calls == [frozenset("ab"), frozenset("abc")]
    assert b.dropped == ["d"] and b.why == "over budget" and b.kept is not None
