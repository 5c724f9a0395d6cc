"""Distillation: a short run lowers held-out KL, write-back keeps the graph, errors are clear."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.contract import PassContext  # noqa: E402
from onnxopt.data import Feeds, synthesize  # noqa: E402
from onnxopt.errors import OnnxoptError, OptionError  # noqa: E402
from onnxopt.onnx2torch.convert import UnsupportedOpsError  # noqa: E402
from onnxopt.passes.distill import PASSES  # noqa: E402
from onnxopt.passes.distill.distill import Distill  # noqa: E402
from onnxopt.passes.distill.trainer import DistillConfig, distill  # noqa: E402
from onnxopt.verify import Runner  # noqa: E402


def mlp(hidden: int, seed: int, *, classes: int = 5, softmax: bool = False) -> onnx.ModelProto:
    """x[N,16] -> Gemm -> Relu -> Gemm -> logits[N,classes] (optionally Softmax)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, 16)) / 4).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((classes, hidden)) / np.sqrt(hidden) * 2).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"],
                         ["z" if softmax else "logits"], transB=1, name="fc2"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1, name="sm"))
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(a, n) for a, n in
         [(w1, "fc1.weight"), (b1, "fc1.bias"), (w2, "fc2.weight"), (b2, "fc2.bias")]],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def data(n: int = 320, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def kl(teacher: onnx.ModelProto, student: onnx.ModelProto, x: dict[str, np.ndarray]) -> float:
    r = Runner()
    t = r.run(teacher, Feeds([x]))[0]["logits"].astype(np.float64)
    s = r.run(student, Feeds([x]))[0]["logits"].astype(np.float64)
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    ls = s - s.max(1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(1, keepdims=True))
    return float((pt * (np.log(pt) - ls)).sum(1).mean())


FAST = {"epochs": 15, "lr": 1e-2, "batch_size": 32, "temperature": 2.0}


def test_short_run_lowers_heldout_kl_and_keeps_structure() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    res = distill(student, teacher, data(), DistillConfig(**FAST))
    assert res.after.val_loss < 0.5 * res.before.val_loss
    assert res.best_epoch > 0 and res.parity_max_abs < 1e-4
    held = data(200, seed=9)  # fresh samples never seen in training
    assert kl(teacher, res.model, held) < 0.6 * kl(teacher, student, held)
    out = res.model
    assert [n.SerializeToString() for n in out.graph.node] == [
        n.SerializeToString() for n in student.graph.node]
    assert [(t.name, list(t.dims), t.data_type) for t in out.graph.initializer] == [
        (t.name, list(t.dims), t.data_type) for t in student.graph.initializer]
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


def test_teacher_targets_are_cached_on_disk(tmp_path) -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    cfg = DistillConfig(epochs=1, cache_dir=str(tmp_path))
    distill(student, teacher, data(64), cfg)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".0.npy")
    stamp = (tmp_path / files[0]).stat().st_mtime_ns
    distill(student, teacher, data(64), cfg)  # cache hit: the file is not rewritten
    assert (tmp_path / files[0]).stat().st_mtime_ns == stamp


def test_unsupported_op_in_student_is_a_clear_error() -> None:
    student = mlp(6, seed=2)
    student.graph.node[1].op_type = "Shrink"
    with pytest.raises(UnsupportedOpsError, match=r"unsupported op\(s\) Shrink \(x1\)"):
        distill(student, mlp(32, seed=1), data(64), DistillConfig(epochs=1))


def test_bad_options_are_rejected() -> None:
    with pytest.raises(OptionError, match="--loss"):
        DistillConfig.from_options({"loss": "hinge"})
    with pytest.raises(OptionError, match="unknown option"):
        DistillConfig.from_options({"epoch": 3})
    with pytest.raises(OptionError, match="labels"):
        distill(mlp(6, 2), mlp(32, 1), data(64), DistillConfig(epochs=1, alpha=0.5))


# ------------------------------------------------------------------------------------ the pass


def test_pass_distills_against_the_original() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    feeds = Feeds([data(320)], source="test")
    ctx = PassContext(feeds=feeds, options=dict(FAST), original=teacher)
    res = Distill().run_model(student, ctx)
    assert res.changed and res.model is not None and res.rewrites == 4
    assert any("held-out loss" in n for n in res.notes)
    assert PASSES == [Distill] and Distill.tags == ("distill",) and not Distill.exact


def test_pass_declines_without_a_real_student_or_data() -> None:
    teacher = mlp(32, seed=1)
    real = Feeds([data(64)], source="test")
    same = Distill().run_model(teacher, PassContext(feeds=real, original=teacher))
    assert not same.changed and "student is the original" in same.notes[0]
    fake = synthesize(teacher, shapes={"x": [4, 16]}, runs=2)
    synth = Distill().run_model(mlp(6, 2), PassContext(feeds=fake, original=teacher))
    assert not synth.changed and "synthesized" in synth.notes[0]


def test_pass_reports_bad_options_as_pass_errors() -> None:
    from onnxopt.contract import PassError

    ctx = PassContext(feeds=Feeds([data(64)]), options={"loss": "hinge"}, original=mlp(32, 1))
    with pytest.raises(PassError, match="--loss"):
        Distill().run_model(mlp(6, 2), ctx)


def test_errors_are_onnxopt_errors() -> None:
    assert issubclass(UnsupportedOpsError, OnnxoptError)


# ------------------------------------------------------------------------------------- mixup


def test_mixup_teacher_labels_mixed_inputs_and_lowers_heldout_kl() -> None:
    from onnxopt.passes.distill.teacher import OnlineTeacher

    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    x = data(8)
    online = OnlineTeacher(teacher, ["logits"])(x)["logits"]
    ref = Runner().run(teacher, Feeds([x]))[0]["logits"]
    np.testing.assert_allclose(online, ref, rtol=1e-5, atol=1e-6)
    res = distill(student, teacher, data(), DistillConfig(**FAST, mixup=0.4))
    assert res.best_epoch > 0 and res.after.val_loss < 0.5 * res.before.val_loss
    held = data(200, seed=9)
    assert kl(teacher, res.model, held) < 0.6 * kl(teacher, student, held)
    assert not any("mixup off" in n for n in res.notes)


def test_mixup_mixes_hard_labels_and_rejects_negative_strength() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    labels = np.random.default_rng(3).integers(0, 5, size=320)
    cfg = DistillConfig(**FAST, mixup=0.4, alpha=0.3)
    res = distill(student, teacher, data(), cfg, labels=labels)
    assert res.after.val_loss < res.before.val_loss
    with pytest.raises(OptionError, match="mixup"):
        DistillConfig.from_options({"mixup": -1.0})


def embedding_classifier(dim: int, seed: int) -> onnx.ModelProto:
    """ids[N,6] (int64) -> Gather(table) -> ReduceMean -> Gemm -> logits[N,5]."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((20, dim)).astype(np.float32)
    w = rng.standard_normal((5, dim)).astype(np.float32)
    b = np.zeros(5, np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
            helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0, name="mean"),
            helper.make_node("Gemm", ["m", "w", "b"], ["logits"], transB=1, name="fc"),
        ],
        "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for a, n in [(table, "table"), (w, "w"), (b, "b")]],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_mixup_is_turned_off_with_a_note_for_integer_inputs() -> None:
    ids = {"ids": np.random.default_rng(0).integers(0, 20, size=(96, 6)).astype(np.int64)}
    cfg = DistillConfig(epochs=2, lr=1e-2, batch_size=32, mixup=0.4)
    res = distill(embedding_classifier(4, seed=2), embedding_classifier(16, seed=1), ids, cfg)
    assert any("mixup off" in n and "ids" in n for n in res.notes)
