"""Passes that read weight values read memory-mapped ones too: a large model's weights are
stubs over its file (``onnxopt.weights``) once loaded, and after any graph pass. Half precision
read them with numpy's own reader, which refuses the stubs' absolute paths, so on BERT-base
``--passes cleanup,fusion,convert-fp16`` ended with the pass in error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxopt import weights
from onnxopt.data import Feeds
from onnxopt.model import load_model
from onnxopt.passes.registry import manager
from onnxopt.verify import Budget
from tests.onnxopt.test_weights import H, chain

INT8 = {"latency_aware": False}
#: id -> (pass, its options, manager settings)
LOSSY = {
    "convert-fp16": ("convert-fp16", {}, {}),
    "convert-bf16": ("convert-bf16", {"min_weight_elements": 1}, {}),
    "quantize-int4": ("quantize-int4", {}, {"target": "onnxruntime"}),
    "quantize-int8": ("quantize-int8", INT8, {"allow_slower": True}),
    # SmoothQuant's statistics and AdaRound's Gram matrices run their own probe sessions
    "quantize-int8 smooth adaround": (
        "quantize-int8",
        {**INT8, "smooth": 0.5, "rounding": "adaround", "adaround_iterations": 20},
        {"allow_slower": True},
    ),
    "quantize-dynamic": ("quantize-dynamic", {}, {"allow_slower": True}),
}


@pytest.fixture
def mapped_chain(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "MAP_MIN_MODEL_BYTES", 10_000)
    monkeypatch.setattr(weights, "MAP_MIN_TENSOR_BYTES", 4096)
    src = tmp_path / "in.onnx"
    onnx.save_model(chain(), src, save_as_external_data=True, location="in.onnx.data")
    m = load_model(src)
    assert weights.is_mapped_model(m)
    return m


@pytest.mark.parametrize("case", list(LOSSY))
def test_a_lossy_pass_after_cleanup_reads_mapped_weights(mapped_chain, case) -> None:
    name, options, settings = LOSSY[case]
    rng = np.random.default_rng(0)
    feeds = Feeds([{"x": rng.standard_normal((2, H)).astype(np.float32)} for _ in range(8)])
    pm = manager(
        ["cleanup", name], options={name: options}, budget=Budget(min_cosine=0.9), **settings
    )
    _, rep = pm.run(mapped_chain, feeds)
    p = rep.passes[-1]
    assert p.status == "kept", (p.status, p.reason, p.notes)
    if "adaround" in case:
        assert p.details["adaround"]["layers"] == 3 and p.details["smoothing"]["matmuls"] == 3


def test_distillation_reads_mapped_weights_in_the_student_and_the_teacher(mapped_chain) -> None:
    """The student goes to torch and the teacher to onnxruntime with their weights mapped from
    the model's file: the converter read them with numpy's reader (refused: an absolute path)
    and the teacher's session was built from the proto's bytes (onnxruntime: "model format
    error"), so on BERT-base ``prune,distill`` ended with distill in error."""
    pytest.importorskip("torch")
    from onnxopt.onnx2torch.convert import to_torch
    from onnxopt.passes.distill.teacher import teacher_targets

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, H)).astype(np.float32)
    want = teacher_targets(mapped_chain, {"x": x}, ["r2"])["r2"]
    got = to_torch(mapped_chain).run({"x": x})["r2"]
    assert np.allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-4)
    feeds = Feeds([{"x": rng.standard_normal((2, H)).astype(np.float32)} for _ in range(8)])
    pm = manager(["cleanup", "distill"], options={"distill": {"epochs": 2}})
    _, rep = pm.run(mapped_chain, feeds)
    p = rep.passes[-1]
    assert p.status in ("kept", "unchanged"), (p.status, p.reason)
    assert any(n.startswith("distill: held-out loss") for n in p.notes), p.notes
