"""``DistillConfig``: the distillation settings, typed and checked.

One configuration serves the ``distill`` pass (``config_class``), ``onnxopt distill`` and
:func:`onnxopt.passes.distill.trainer.distill`. Field defaults are the family's defaults; a
value that does not fit is a one-line :class:`~onnxopt.errors.OptionError` naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxopt.contract import PassConfig
from onnxopt.errors import OptionError

LOSSES = ("auto", "kl", "mse", "cosine")
BN_MODES = ("eval", "train")


def parse_feature(text: str) -> tuple[str, str]:
    """``"teacher_tensor:student_tensor"`` -> (teacher, student)."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise OptionError(f"--feature {text!r}: expected TEACHER_TENSOR:STUDENT_TENSOR")
    return a, b


@dataclass(frozen=True)
class DistillConfig(PassConfig):
    """Training settings (all have working defaults).

    Attributes:
        epochs: training epochs (at most; see ``patience``).
        lr: Adam learning rate (cosine decay over all steps).
        temperature: KL temperature T (the loss is scaled by T²).
        alpha: weight of the hard-label cross-entropy (needs labels), in [0, 1].
        loss: ``auto``, ``kl``, ``mse`` or ``cosine``.
        batch_size: samples per training step.
        val_fraction: held-out share for early stopping, in [0, 1).
        patience: epochs without held-out improvement before stopping.
        seed: seeds the split, the order, mixup and torch.
        bn_mode: BatchNormalization statistics, ``eval`` (stored) or ``train`` (batch, updated).
        features: ``(teacher tensor, student tensor)`` pairs to match, or ``"A:B"`` strings.
        feature_weight: weight of each feature loss.
        weight_decay: Adam weight decay.
        mixup: Beta(a, a) parameter of mixup (0: off).
        cache_dir: keep the teacher's targets here (memory-mapped) for reuse.
        parity_runs: runs of the data the torch/onnxruntime parity check uses.
        threads: torch and onnxruntime threads (0: their defaults).
        allow_synthetic: the pass only: distill even on synthesized inputs (they do not follow
            the real input distribution, so by default the pass declines).
    """

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
    features: tuple[tuple[str, str], ...] = ()
    feature_weight: float = 1.0
    weight_decay: float = 0.0
    mixup: float = 0.0
    cache_dir: str | None = None
    parity_runs: int = 4
    threads: int = 0
    allow_synthetic: bool = False

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None, *, where: str = "distill"
    ) -> DistillConfig:
        """Build from a ``{option: value}`` dict (CLI / recipe / pass options); an unknown key
        or a bad value is a one-line OptionError prefixed with ``where``."""
        return super().from_options(options, where=where)

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", _features(self.features))
        if self.loss not in LOSSES:
            raise OptionError(f"--loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise OptionError(f"--alpha must be in [0, 1], not {self.alpha}")
        if self.temperature <= 0 or self.lr <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise OptionError("--temperature, --lr, --epochs and batch size must be > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError(f"val_fraction must be in [0, 1), not {self.val_fraction}")
        if self.mixup < 0:
            raise OptionError(f"mixup must be >= 0 (Beta(a, a) parameter), not {self.mixup}")
        if self.bn_mode not in BN_MODES:
            raise OptionError(f"bn_mode must be 'eval' or 'train', not {self.bn_mode!r}")


def _features(value: Any) -> tuple[tuple[str, str], ...]:
    """``"A:B"``, a list of those, or of pairs -> a tuple of (teacher, student) pairs."""
    items = [value] if isinstance(value, str) else list(value or ())
    pairs = tuple(parse_feature(f) if isinstance(f, str) else tuple(f) for f in items)
    for p in pairs:
        if len(p) != 2:
            raise OptionError(f"features: {p!r} is not a (teacher tensor, student tensor) pair")
    return pairs
