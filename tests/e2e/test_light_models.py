"""The classic CNN topologies onnx ships as light models (IR 3, opset 9, weights made by
ConstantOfShape) through cleanup, fusion, pruning and int8 quantization: every pass is kept.
They exercise old-IR exports (initializers listed as inputs), opset conversion before
quantizing, runtime-computed weights, Concat-heavy graphs (DenseNet, Inception), LRN
(AlexNet, ZFNet) and grouped convs with channel shuffles (ShuffleNet)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxopt.passes.registry import manager
from onnxopt.synth import synthesize

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SLOW = {"vgg19", "densenet121", "inception_v2", "resnet50"}  # 2-5 s each; the others ~1 s
MODELS = [
    pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
    for n in (
        "resnet50",
        "densenet121",
        "inception_v1",
        "inception_v2",
        "shufflenet",
        "squeezenet",
        "vgg19",
        "zfnet512",
        "bvlc_alexnet",
    )
]
PRUNED = {"resnet50", "densenet121", "inception_v1", "inception_v2", "squeezenet", "vgg19"}


@pytest.mark.parametrize("name", MODELS)
def test_light_model_pipeline(name: str) -> None:
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    pm = manager(
        ["cleanup", "fusion", "prune", "quantize-int8"],
        options={"prune": {"ratio": 0.3}},
        allow_slower=True,  # whether every pass is kept and correct; speed is gated elsewhere
    )
    out, rep = pm.run(model, synthesize(model, runs=4))
    status = {p.name: p.status for p in rep.passes}
    failed = {p.name: p.reason for p in rep.passes if p.status in ("rolled back", "error")}
    assert not failed, failed
    assert status["fold-constants"] == "kept" and status["quantize-int8"] == "kept"
    assert status["prune"] == ("kept" if name in PRUNED else "unchanged")
    onnx.checker.check_model(out)
    assert any(n.op_type == "QuantizeLinear" for n in out.graph.node)
    assert model.opset_import[0].version == 9  # the input model is left alone
