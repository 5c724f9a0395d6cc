"""``distill``: retrain the current model (student) to reproduce the pipeline's original (teacher).

A lossy pass for ``--passes prune,distill,quantize-int8``: the student is the model as the
earlier passes left it, the teacher is ``ctx.original`` and the data is ``ctx.feeds`` (labels,
when present, only feed the held-out accuracy unless ``alpha`` > 0). Only initializer values
change; the pass manager judges the result by the user's budget like any lossy pass.

Configuration: :class:`~onnxopt.passes.distill.config.DistillConfig` (``epochs``, ``lr``,
``temperature``, ``alpha``, ``loss``, ``batch_size``, ``features``, ``bn_mode``, ``patience``,
``seed``, ...; ``allow_synthetic``, default False, is read by the pass only).

Declines (unchanged, with a note): no teacher, synthesized feeds (distilling on random inputs
teaches nothing about the real input distribution), or a student identical to the teacher.
"""

from __future__ import annotations

import hashlib
import logging

import onnx

from onnxopt.contract import Pass, PassContext, PassError, PassResult
from onnxopt.errors import OnnxoptError
from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.result import DistillProgress, DistillResult
from onnxopt.passes.distill.trainer import distill

logger = logging.getLogger(__name__)


def _weights_digest(model: onnx.ModelProto) -> str:
    h = hashlib.sha1()
    for n in model.graph.node:
        h.update(n.SerializeToString())
    for t in model.graph.initializer:
        h.update(t.SerializeToString())
    return h.hexdigest()


class Distill(Pass):
    """Knowledge distillation from the pipeline's original model into the current one."""

    name = "distill"
    exact = False
    summary = "train the current model's weights to match the original (teacher) outputs"
    tags = ("distill",)
    needs_model = True
    needs_data = True

    config_class = DistillConfig
    config: DistillConfig

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        import importlib.util

        if importlib.util.find_spec("torch") is None:  # torch is an extra, not a dependency
            return PassResult.unchanged(
                "needs PyTorch, which is not installed: pip install torch==2.13.0"
            )
        declined = self._declined(model, ctx)
        if declined:
            return PassResult.unchanged(declined)

        def report(p: DistillProgress) -> None:
            done = (p.epoch - 1) * p.steps + p.step
            val = "" if p.val_loss is None else f", held-out {p.val_loss:.4f}"
            ctx.report_progress(
                f"distill epoch {p.epoch} loss {p.loss:.4f}{val}", done, p.epochs * p.steps
            )

        try:
            res = distill(model, ctx.original, ctx.feeds, self.config, progress=report)
        except OnnxoptError as e:
            raise PassError(f"distill: {e}") from e
        notes = _notes(res)
        if res.best_epoch == 0:
            return PassResult(changed=False, rewrites=0, notes=notes, details=res.to_dict())
        return PassResult(
            changed=True,
            rewrites=len(res.updated),
            notes=notes,
            details=res.to_dict(),
            model=res.model,
        )

    def _declined(self, model: onnx.ModelProto, ctx: PassContext) -> str | None:
        """Why the pass leaves ``model`` alone, or None."""
        if ctx.original is None:
            return "distill: no teacher (the pipeline gave no original model)"
        if ctx.feeds is None or len(ctx.feeds) == 0:
            return "distill: no data; pass --data with unlabeled inputs"
        if ctx.feeds.synthesized and not self.config.allow_synthetic:
            return (
                "distill: skipped on synthesized inputs (they do not follow the real input "
                "distribution); pass --data"
            )
        if _weights_digest(model) == _weights_digest(ctx.original):
            return (
                "distill: the student is the original model; run it after prune or another "
                "lossy pass"
            )
        return None


def _notes(res: DistillResult) -> list[str]:
    b, a = res.before, res.after
    notes = [
        f"distill: held-out loss {b.val_loss:.4g} -> {a.val_loss:.4g} "
        f"(best epoch {res.best_epoch} of {len(res.history)}, {res.seconds:.1f}s)"
    ]
    if a.val_agreement is not None and b.val_agreement is not None:
        notes.append(
            f"distill: top-1 agreement with the teacher {b.val_agreement:.2%} -> "
            f"{a.val_agreement:.2%} on held-out data"
        )
    return notes + [f"distill: {n}" for n in res.notes]


PASSES = [Distill]

__all__ = ["PASSES", "Distill"]
