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
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import DataError, OptionError
from onnxopt.model import load_model
from onnxopt.passes.distill.teacher import stack_runs, static_batch, teacher_targets

logger = logging.getLogger(__name__)

LOSSES = ("auto", "kl", "mse", "cosine")


@dataclass
class DistillConfig:
    """Training settings (all have working defaults)."""

    epochs: int = 30
    lr: float = 2e-3
    temperature: float = 4.0
    alpha: float = 0.0
    loss: str = "auto"
    batch_size: int = 64
    val_fraction: float = 0.1
    patience: int = 8
    seed: int = 0
    bn_mode: str = "eval"
    features: list[tuple[str, str]] = field(default_factory=list)
    feature_weight: float = 1.0
    weight_decay: float = 0.0
    mixup: float = 0.0
    cache_dir: str | None = None
    parity_runs: int = 4
    threads: int = 0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> DistillConfig:
        """Build from a ``{option: value}`` dict (CLI / recipe); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise OptionError(
                f"distill: unknown option(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        opts = dict(options)
        if isinstance(opts.get("features"), str):
            opts["features"] = [opts["features"]]
        if "features" in opts:
            opts["features"] = [
                parse_feature(f) if isinstance(f, str) else tuple(f) for f in opts["features"]
            ]
        cfg = cls(**opts)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise OptionError(
                f"distill: --loss must be one of {', '.join(LOSSES)}, not {self.loss!r}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"distill: --alpha must be in [0, 1], not {self.alpha}")
        if self.temperature <= 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise OptionError("distill: --temperature, --lr, --epochs and batch size must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError(f"distill: val_fraction must be in [0, 1), not {self.val_fraction}")
        if self.mixup < 0:
            raise OptionError(
                f"distill: mixup must be >= 0 (Beta(a, a) parameter), not {self.mixup}"
            )
        if self.bn_mode not in ("eval", "train"):
            raise OptionError(f"distill: bn_mode must be 'eval' or 'train', not {self.bn_mode!r}")


def parse_feature(text: str) -> tuple[str, str]:
    """``"teacher_tensor:student_tensor"`` -> (teacher, student)."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise OptionError(f"--feature {text!r}: expected TEACHER_TENSOR:STUDENT_TENSOR")
    return a, b


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    val_loss: float
    val_agreement: float | None = None
    val_accuracy: float | None = None


@dataclass
class DistillProgress:
    """What a progress callback receives after every step."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    val_loss: float | None
    val_agreement: float | None


@dataclass
class DistillResult:
    """The distilled student and how training went."""

    model: onnx.ModelProto
    history: list[EpochStats]
    best_epoch: int
    before: EpochStats
    after: EpochStats
    parity_max_abs: float
    updated: list[str]
    losses: dict[str, str]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "best_epoch": self.best_epoch,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "epochs_run": len(self.history),
            "parity_max_abs": self.parity_max_abs,
            "updated_initializers": len(self.updated),
            "losses": self.losses,
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
        }


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
    cfg.validate()
    student_m, teacher_m = load_model(student), load_model(teacher)
    feeds = data if isinstance(data, Feeds) else Feeds([dict(data)], source="arrays")
    inputs = stack_runs(feeds)
    n = next(iter(inputs.values())).shape[0]
    if labels is None and feeds.labels is not None:
        labels = feeds.stacked_labels()
    if labels is not None:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        if labels.shape[0] != n:
            raise DataError(f"{labels.shape[0]} labels for {n} samples")
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

    from onnxopt.onnx2torch.convert import check_parity, to_torch, write_back
    from onnxopt.passes.distill.teacher import OnlineTeacher
    from onnxopt.passes.distill.train import Trainer

    torch.manual_seed(cfg.seed)
    module = to_torch(student_m, bn_mode=cfg.bn_mode)
    if not module.keys:
        raise OptionError("distill: the student has no trainable float initializers")
    parity = check_parity(module, student_m, feeds.runs[: cfg.parity_runs])

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
    trainer = Trainer(
        module,
        cfg,
        pairs,
        inputs,
        targets,
        labels,
        student_batch=static_batch(student_m),
        teacher=online,
    )
    before = trainer.evaluate(0)
    history, best = trainer.fit(progress)
    after = trainer.evaluate(best)
    names = list(module.keys)
    if cfg.bn_mode == "train":
        names += [
            t.name
            for nd in student_m.graph.node
            if nd.op_type == "BatchNormalization"
            for t in student_m.graph.initializer
            if t.name in nd.input[3:5]
        ]
    out = write_back(student_m, module.initializer_values(), names=names)
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


def match_outputs(student: onnx.ModelProto, teacher: onnx.ModelProto) -> list[tuple[str, str]]:
    """(student output, teacher output) pairs: by name when all names match, else by position."""
    s = [o.name for o in student.graph.output]
    t = [o.name for o in teacher.graph.output]
    if set(s) <= set(t):
        return [(x, x) for x in s]
    if len(s) != len(t):
        raise DataError(f"student outputs {s} and teacher outputs {t} cannot be matched")
    return list(zip(s, t, strict=True))


def kl_loss(s: Any, t: Any, temperature: float, t_is_prob: bool) -> Any:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over rows of the last axis."""
    import torch.nn.functional as F

    c = s.shape[-1]
    s2, t2 = s.reshape(-1, c), t.reshape(-1, c)
    if t_is_prob:
        t2 = t2.clamp_min(1e-12).log()
    log_ps = F.log_softmax(s2 / temperature, dim=-1)
    log_pt = F.log_softmax(t2 / temperature, dim=-1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * temperature**2


def looks_like_probabilities(a: np.ndarray) -> bool:
    """Rows of the last axis are non-negative and sum to 1 (a Softmax output)."""
    sample = np.asarray(a[: min(len(a), 256)], dtype=np.float64)
    return bool(
        sample.size and (sample >= 0).all() and np.allclose(sample.sum(axis=-1), 1.0, atol=1e-3)
    )


def default_loss(arr: np.ndarray) -> str:
    return "kl" if arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[-1] > 1 else "mse"


def steps_per_epoch(n: int, batch: int) -> int:
    return max(1, math.ceil(n / batch))
