"""Knowledge distillation on ONNX: train a student's initializers to reproduce a teacher.

Only the two ONNX files and unlabeled inputs are needed. The student runs in torch through
:mod:`onnxopt.onnx2torch.convert` (checked against onnxruntime before training); the teacher runs in
onnxruntime (:mod:`onnxopt.passes.distill.teacher`). Trained values go back into the student's
initializers by name: structure, names and opset are untouched.

Loss per matched output (student s, teacher t, temperature T):

- ``kl`` (classifiers): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over rows of the last
  axis; a teacher output that already is a probability vector is used as ``log t``;
- ``mse``: ``mean((s − t)²)``; ``cosine``: ``mean(1 − cos(s, t))`` along the last axis;
- ``auto``: ``kl`` for float outputs of rank 2 with more than one column, else ``mse``;
- hard labels (``alpha > 0``): ``L = α · CE(s, y) + (1 − α) · L_distill``;
- features (``A:B``, teacher tensor A, student tensor B): ``w · mean((P·B − A)²) / mean(A²)``,
  where P is a learned 1×1 channel projection when the channel counts differ (not written back).

Mixup (``mixup = a > 0``, see :mod:`onnxopt.passes.distill.train`): training batches become
``λ·x_i + (1 − λ)·x_π(i)``, ``λ ~ Beta(a, a)``, labelled by the teacher itself on the fly.

Optimizer: Adam with cosine decay over all steps; the held-out split (``val_fraction``) picks the
best epoch and stops after ``patience`` epochs without improvement; everything is seeded.

This module runs the steps; the settings are :class:`~.config.DistillConfig`, the teacher's
targets :mod:`.teacher`, the training loop :mod:`.train` (torch), the losses :mod:`.losses` and
what comes back :mod:`.result`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

from onnxopt import phases
from onnxopt.data import Feeds
from onnxopt.errors import DataError, OptionError
from onnxopt.model import load_model
from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.result import DistillProgress, DistillResult
from onnxopt.passes.distill.teacher import stack_runs, static_batch, teacher_targets

logger = logging.getLogger(__name__)


@phases.timed(phases.TRAINING)
def distill(
    student: Any,
    teacher: Any,
    data: Feeds | Mapping[str, np.ndarray],
    config: DistillConfig | None = None,
    *,
    labels: np.ndarray | None = None,
    progress: Callable[[DistillProgress], None] | None = None,
) -> DistillResult:
    """Distill ``teacher`` into ``student`` over unlabeled ``data``.

    Args:
        student: the student model (path, bytes or ModelProto); its structure is kept.
        teacher: the teacher model (path, bytes or ModelProto).
        data: Feeds, or a dict input name -> array of samples (axis 0).
        config: training settings.
        labels: one integer label per sample (hard-label term, held-out accuracy).
        progress: called after every step with a :class:`DistillProgress`.

    Returns:
        a :class:`DistillResult` whose ``model`` is the student with trained initializers.

    Raises:
        OnnxoptError: unsupported ops, parity failure, bad data or options.
    """
    import torch

    t0 = time.perf_counter()
    cfg = config or DistillConfig()
    student_m, teacher_m = load_model(student), load_model(teacher)
    feeds = data if isinstance(data, Feeds) else Feeds([dict(data)], source="arrays")
    inputs = stack_runs(feeds)
    labels = _labels(labels, feeds, next(iter(inputs.values())).shape[0])
    if cfg.alpha > 0 and labels is None:
        raise OptionError(
            "distill: --alpha > 0 needs labels (--labels or a 'labels' key in --data)"
        )
    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _distill(student_m, teacher_m, feeds, inputs, labels, cfg, progress, t0)
    finally:
        torch.set_num_threads(saved_threads)


def _labels(labels: np.ndarray | None, feeds: Feeds, n: int) -> np.ndarray | None:
    """The given labels, else the feeds' own; one int64 per sample."""
    if labels is None and feeds.labels is not None:
        labels = feeds.stacked_labels()
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if labels.shape[0] != n:
        raise DataError(f"{labels.shape[0]} labels for {n} samples")
    return labels


def _distill(
    student_m: onnx.ModelProto,
    teacher_m: onnx.ModelProto,
    feeds: Feeds,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    cfg: DistillConfig,
    progress: Callable[[DistillProgress], None] | None,
    t0: float,
) -> DistillResult:
    import torch

    from onnxopt.onnx2torch.convert import check_parity

    torch.manual_seed(cfg.seed)
    module, parity = _student_module(student_m, feeds, cfg)
    trainer = _trainer(module, student_m, teacher_m, inputs, labels, cfg)
    before = trainer.evaluate(0)
    history, best = trainer.fit(progress)
    after = trainer.evaluate(best)
    out, names = _write_back(module, student_m, cfg)
    check_parity(module, out, feeds.runs[:2])  # the written model computes what was trained
    notes = list(trainer.notes)
    if after.val_loss > before.val_loss:
        notes.append(
            f"held-out loss did not improve ({before.val_loss:.4g} -> {after.val_loss:.4g})"
        )
    return DistillResult(
        out,
        history,
        best,
        before,
        after,
        parity,
        names,
        trainer.loss_kinds,
        time.perf_counter() - t0,
        notes,
    )


def _student_module(
    student_m: onnx.ModelProto, feeds: Feeds, cfg: DistillConfig
) -> tuple[Any, float]:
    """The student as a torch module, checked against onnxruntime; returns it and the largest
    difference seen."""
    from onnxopt.onnx2torch.convert import check_parity, to_torch

    module = to_torch(student_m, bn_mode=cfg.bn_mode)
    if not module.keys:
        raise OptionError("distill: the student has no trainable float initializers")
    return module, check_parity(module, student_m, feeds.runs[: cfg.parity_runs])


def _trainer(
    module: Any,
    student_m: onnx.ModelProto,
    teacher_m: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    cfg: DistillConfig,
) -> Any:
    """A :class:`~onnxopt.passes.distill.train.Trainer` with the teacher's targets (and the
    teacher itself when mixup needs it online)."""
    from onnxopt.passes.distill.teacher import OnlineTeacher
    from onnxopt.passes.distill.train import Trainer

    pairs = match_outputs(student_m, teacher_m)
    t_names = [t for _, t in pairs] + [a for a, _ in cfg.features]
    targets = teacher_targets(
        teacher_m,
        inputs,
        t_names,
        batch=max(cfg.batch_size, 256),
        cache_dir=cfg.cache_dir,
        threads=cfg.threads,
    )
    online = OnlineTeacher(teacher_m, t_names, threads=cfg.threads) if cfg.mixup > 0 else None
    return Trainer(
        module,
        cfg,
        pairs,
        inputs,
        targets,
        labels,
        student_batch=static_batch(student_m),
        teacher=online,
    )


def _write_back(
    module: Any, student_m: onnx.ModelProto, cfg: DistillConfig
) -> tuple[onnx.ModelProto, list[str]]:
    """The student with the trained values (and, with ``bn_mode="train"``, the updated
    BatchNormalization statistics); returns it and the initializers written."""
    from onnxopt.onnx2torch.convert import write_back

    names = list(module.keys)
    if cfg.bn_mode == "train":
        names += [
            t.name
            for nd in student_m.graph.node
            if nd.op_type == "BatchNormalization"
            for t in student_m.graph.initializer
            if t.name in nd.input[3:5]
        ]
    return write_back(student_m, module.initializer_values(), names=names), names


def match_outputs(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[tuple[str, str]]:
    """(student output, teacher output) pairs: by name when all names match, else by position."""
    s = [o.name for o in student.graph.output]
    t = [o.name for o in teacher.graph.output]
    if set(s) <= set(t):
        return [(x, x) for x in s]
    if len(s) != len(t):
        raise DataError(f"student outputs {s} and teacher outputs {t} cannot be matched")
    return list(zip(s, t, strict=True))
