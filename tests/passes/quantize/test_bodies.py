"""Static int8 inside bodies: tensors exposed over every iteration, sites quantized there."""

from __future__ import annotations

import numpy as np
import onnx

from benchmarks.big_models_extra import build_loop_cell
from onnxopt.data import Feeds
from onnxopt.passes.quantize.bodies import expose
from onnxopt.passes.quantize.collect import collect_stats
from onnxopt.passes.registry import manager
from onnxopt.verify import Budget
from tests.onnxopt.test_subgraphs import if_model


def test_loop_tensors_are_seen_on_every_iteration(tmp_path) -> None:
    m = onnx.load(str(build_loop_cell(tmp_path / "cell.onnx", hidden=8, steps=5)))
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    out = expose(probe, ["s2", "h_in"])
    runs = [{"xs": np.ones((5, 1, 8), np.float32)}]
    stats = collect_stats(probe, list(out.values()), runs)
    assert stats[out["s2"]].count == 5 * 8  # every iteration of the run


def test_if_branch_tensor_exposed_with_an_empty_twin() -> None:
    m = if_model()
    out = expose(m, ["t_c"])
    x = np.ones((1, 3, 8, 8), np.float32)
    stats = collect_stats(m, [out["t_c"]], [{"x": x, "c": np.array(False)}])
    assert stats[out["t_c"]].empty  # the else branch ran: nothing seen
    stats = collect_stats(m, [out["t_c"]], [{"x": x, "c": np.array(True)}])
    assert stats[out["t_c"]].count == 4 * 8 * 8


def test_int8_applies_inside_the_loop_body(tmp_path) -> None:
    m = onnx.load(str(build_loop_cell(tmp_path / "cell.onnx")))
    rng = np.random.default_rng(1)
    feeds = Feeds([{"xs": rng.standard_normal((8, 1, 64)).astype(np.float32)} for _ in range(32)])
    out, rep = manager(["quantize-int8"], budget=Budget(min_cosine=0.99), allow_slower=True).run(
        m, feeds
    )
    p = rep.passes[-1]
    assert p.status == "kept", p.reason
    ops = [n.op_type for n in out.graph.node[0].attribute[0].g.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 4
    assert rep.final_vs_original.cosine >= 0.99
