"""The training loop: mixup with the teacher labelling the mixed inputs online."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.trainer import distill
from onnxopt.runner import Runner
from tests.passes.distill.models import FAST, data, embedding_classifier, kl, mlp


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


def test_mixup_is_turned_off_with_a_note_for_integer_inputs() -> None:
    ids = {"ids": np.random.default_rng(0).integers(0, 20, size=(96, 6)).astype(np.int64)}
    cfg = DistillConfig(epochs=2, lr=1e-2, batch_size=32, mixup=0.4)
    res = distill(embedding_classifier(4, seed=2), embedding_classifier(16, seed=1), ids, cfg)
    assert any("mixup off" in n and "ids" in n for n in res.notes)
