"""The graph generator: deterministic, and every motif builds valid graphs that onnxruntime
runs, under every opset, float type and shape mode, with the declared output shapes right."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt.data import Feeds
from onnxopt.runner import Runner
from tests.fuzz import feeds
from tests.fuzz.generator import MIN_OPSET, MOTIFS, generate, newest_opset, opsets
from tests.fuzz.oracle import declared_mismatch


def test_same_seed_same_graph():
    a, b = generate(7), generate(7)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert generate(8).model.SerializeToString() != a.model.SerializeToString()


def test_opsets_reach_the_newest_onnxruntime_runs():
    assert opsets()[0] == MIN_OPSET == 13
    assert newest_opset() >= 21 and newest_opset() <= onnx.defs.onnx_opset_version()


@pytest.mark.parametrize("motif", sorted(MOTIFS))
def test_motif_builds_valid_runnable_graphs(motif):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    runner = Runner(threads=1, quiet=True)
    for i, (opset, ftype, dyn) in enumerate(
        [(13, "float32", ""), (17, "float16", "batch"), (newest_opset(), "float32", "all")]
    ):
        case = generate(i, motifs=[motif, motif], opset=opset, float_type=ftype, dynamic=dyn)
        onnx.checker.check_model(case.model, full_check=True)
        onnx.shape_inference.infer_shapes(case.model, strict_mode=True, data_prop=True)
        runs = [
            r for _, r in feeds.adversarial(case.inputs, specials=case.specials, dynamic=bool(dyn))
        ]
        for out in runner.run(case.model, Feeds(runs)):
            assert not declared_mismatch(case.model, out), case.describe()
            assert all(np.asarray(v).dtype.kind in "fiub" for v in out.values())
