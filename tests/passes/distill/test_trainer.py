"""Distillation: a short run lowers held-out KL, write-back keeps the graph, errors are clear."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.errors import OnnxoptError, OptionError
from onnxopt.onnx2torch.convert import UnsupportedOpsError
from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.trainer import distill
from tests.passes.distill.models import FAST, data, kl, mlp


def test_short_run_lowers_heldout_kl_and_keeps_structure() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    res = distill(student, teacher, data(), DistillConfig(**FAST))
    assert res.after.val_loss < 0.5 * res.before.val_loss
    assert res.best_epoch > 0 and res.parity_max_abs < 1e-4
    held = data(200, seed=9)  # fresh samples never seen in training
    assert kl(teacher, res.model, held) < 0.6 * kl(teacher, student, held)
    out = res.model
    assert [n.SerializeToString() for n in out.graph.node] == [
        n.SerializeToString() for n in student.graph.node
    ]
    assert [(t.name, list(t.dims), t.data_type) for t in out.graph.initializer] == [
        (t.name, list(t.dims), t.data_type) for t in student.graph.initializer
    ]
    assert out.opset_import == student.opset_import and out.graph.input == student.graph.input
    assert sorted(res.updated) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]


def test_probability_outputs_and_hard_labels() -> None:
    teacher, student = mlp(32, seed=1, softmax=True), mlp(6, seed=2, softmax=True)
    x = data()
    labels = np.random.default_rng(3).integers(0, 5, size=len(x["x"]))
    res = distill(student, teacher, x, DistillConfig(**FAST, alpha=0.3), labels=labels)
    assert res.losses == {"logits": "kl"}
    assert res.after.val_accuracy is not None
    assert res.after.val_loss < res.before.val_loss


def test_mse_loss_and_feature_matching_with_projection() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    cfg = DistillConfig(**FAST, loss="mse", features=[("r", "r")])
    res = distill(student, teacher, data(), cfg)
    assert res.losses == {"logits": "mse"}
    assert any("6->32 channel projection" in n for n in res.notes)
    assert res.after.val_loss < res.before.val_loss


def test_unsupported_op_in_student_is_a_clear_error() -> None:
    student = mlp(6, seed=2)
    student.graph.node[1].op_type = "Shrink"
    with pytest.raises(UnsupportedOpsError, match=r"unsupported op\(s\) Shrink \(x1\)"):
        distill(student, mlp(32, seed=1), data(64), DistillConfig(epochs=1))


def test_alpha_without_labels_is_rejected() -> None:
    with pytest.raises(OptionError, match="labels"):
        distill(mlp(6, 2), mlp(32, 1), data(64), DistillConfig(epochs=1, alpha=0.5))


def test_errors_are_onnxopt_errors() -> None:
    assert issubclass(UnsupportedOpsError, OnnxoptError)
