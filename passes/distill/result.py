"""What distillation reports: per-epoch statistics, progress after each step, the result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import onnx


@dataclass
class EpochStats:
    """Held-out loss (and top-1 agreement with the teacher, accuracy with labels) after an
    epoch; epoch 0 is the untouched student."""

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
