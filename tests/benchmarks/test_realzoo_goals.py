"""benchmarks/realzoo_goals.py: goal verdicts in REALZOO.md follow the measured rows."""

from __future__ import annotations

from benchmarks import realzoo_goals, realzoo_tables


def _race(ratio: float, slower: bool) -> dict:
    return {"in_ms": 1.0, "out_ms": ratio, "ratio": ratio, "slower": slower}


def test_speed_and_prune_verdicts():
    speed = {
        "a": {"optimize": _race(0.9, False)},
        "b": {"optimize": _race(1.3, True), "quantize": {"status": "ok", "lossy": "x: kept",
                                                        **_race(0.5, False)}},
    }  # fmt: skip
    md = "\n".join(realzoo_tables.speed(speed, ["a", "b"]))
    assert "**missed**: slower beyond noise: b (optimize 1.30x)" in md
    prune = {
        "m_dynamo_raw": {"status": "ok", "macs": [100, 70], "removed": 0.3, "lossy": "p: kept",
                         "top1": 1.0, **_race(0.8, False)},
        "m_dynamo": {"status": "ok", "macs": [100, 50], "removed": 0.5, "lossy": "p: kept",
                     "top1": 1.0, **_race(0.8, False)},
    }  # fmt: skip
    md = "\n".join(realzoo_tables.prune(prune))
    assert "**missed**" in md and "m_dynamo_raw 30 %" in md and "m_dynamo 50" not in md


def test_sign_test_and_goal_names():
    from onnxopt.timing import sign_test

    assert sign_test(5, 5) == 1 / 32 and sign_test(0, 5) == 1.0 and sign_test(0, 0) == 1.0
    assert set(realzoo_goals.GOALS) == {"cost", "speed", "ocr", "prune", "merge"}


def test_a_flagged_race_between_the_same_graph_is_noise_not_a_miss():
    """A race flags a model as slower, but the written model is its input's graph (no pass
    changed it): the table says so and the goal's verdict does not count it."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    def model(w: float, name: str) -> onnx.ModelProto:
        g = helper.make_graph(
            [helper.make_node("Mul", ["x", "w"], ["y"], name=name)],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
            [numpy_helper.from_array(np.full(2, w, np.float32), "w")],
        )
        return helper.make_model(g)

    assert realzoo_goals.same_graph(model(2.0, "a"), model(2.0, "renamed"))
    assert not realzoo_goals.same_graph(model(2.0, "a"), model(3.0, "a"))
    speed = {"a": {"optimize": {**_race(1.02, True), "same_graph": True}}}
    md = "\n".join(realzoo_tables.speed(speed, ["a"]))
    assert "same graph as its input: the race's noise" in md
    assert "**met**: slower beyond noise: none" in md and "a (optimize 1.02x)" in md
