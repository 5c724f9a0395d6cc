"""The distillation training loop (see :mod:`onnxopt.passes.distill.trainer` for the losses).

A student exported with a fixed batch size (dim 0 of its input is a number) is run in chunks of
that size and the gradients of one step are accumulated over the chunks, so reshapes with a
hard-coded batch still hold. Samples that do not fill a whole chunk are left out (noted).

Mixup (``mixup = a > 0``): each training batch is replaced by ``x' = λ·x_i + (1 − λ)·x_π(i)``
with ``λ ~ Beta(a, a)`` per sample and π a random permutation of the batch, and the teacher
(onnxruntime, :class:`~onnxopt.passes.distill.teacher.OnlineTeacher`) labels the mixed inputs itself.
The student so matches the teacher's function between the training points as well as on them
("consistent teaching", Beyer et al. 2022), which is what a small unlabeled set lacks. Hard
labels, when used, are mixed the same way (soft targets ``λ·y_i + (1 − λ)·y_π(i)``). The
held-out split is never mixed.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnxopt.errors import OptionError
from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.losses import default_loss, kl_loss, looks_like_probabilities
from onnxopt.passes.distill.result import DistillProgress, EpochStats

logger = logging.getLogger(__name__)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


@dataclass
class Batch:
    """One step's student inputs, teacher targets and (int or soft) labels, as tensors."""

    feeds: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None

    def part(self, lo: int, hi: int) -> Batch:
        return Batch(
            {k: v[lo:hi] for k, v in self.feeds.items()},
            {k: v[lo:hi] for k, v in self.targets.items()},
            None if self.labels is None else self.labels[lo:hi],
        )


class Trainer:
    """Owns the split, the losses, the optimizer and the best-epoch snapshot."""

    def __init__(
        self,
        module: Any,
        cfg: DistillConfig,
        pairs: list[tuple[str, str]],
        inputs: Mapping[str, np.ndarray],
        targets: Mapping[str, np.ndarray],
        labels: np.ndarray | None,
        *,
        student_batch: int | None,
        teacher: Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
    ) -> None:
        self.module, self.cfg, self.pairs = module, cfg, pairs
        self.inputs, self.targets, self.labels = inputs, targets, labels
        self.notes: list[str] = []
        n = next(iter(inputs.values())).shape[0]
        rng = np.random.default_rng(cfg.seed)
        self.rng = rng
        perm = rng.permutation(n)
        n_val = int(round(n * cfg.val_fraction)) if n >= 2 else 0
        if cfg.val_fraction > 0 and n >= 2:
            n_val = max(1, n_val)
        self.chunk = student_batch
        if self.chunk:
            n_val = (n_val // self.chunk) * self.chunk if n_val >= self.chunk else 0
        self.val_idx, self.train_idx = np.sort(perm[:n_val]), perm[n_val:]
        if self.chunk and len(self.train_idx) % self.chunk:
            keep = len(self.train_idx) - len(self.train_idx) % self.chunk
            self.notes.append(
                f"{len(self.train_idx) - keep} samples left out: the student's "
                f"batch is fixed to {self.chunk}"
            )
            self.train_idx = self.train_idx[:keep]
        if len(self.val_idx) == 0:
            self.val_idx = np.sort(self.train_idx)
            self.notes.append("no held-out split (too few samples): early stopping uses train data")
        self.teacher = teacher
        self.mixup = cfg.mixup if teacher is not None else 0.0
        if cfg.mixup > 0 and teacher is None:
            self.notes.append("mixup off: no teacher to label the mixed inputs")
        ints = [k for k, v in inputs.items() if v.dtype.kind != "f"]
        if self.mixup > 0 and ints:
            self.mixup = 0.0
            self.notes.append(f"mixup off: input(s) {ints} are not float and cannot be mixed")
        self.loss_kinds: dict[str, str] = {}
        self._prob: dict[str, bool] = {}
        for s, t in pairs:
            kind = cfg.loss if cfg.loss != "auto" else default_loss(np.asarray(targets[t][:1]))
            self.loss_kinds[s] = kind
            self._prob[s] = kind == "kl" and looks_like_probabilities(targets[t])
        self.proj = self._projections()
        params = list(module.params.values()) + list(self.proj.parameters())
        self.opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batch = cfg.batch_size
        if self.chunk:
            self.batch = max(self.chunk, (cfg.batch_size // self.chunk) * self.chunk)
        total = cfg.epochs * max(1, math.ceil(len(self.train_idx) / self.batch))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        )

    # ---------------------------------------------------------------------------------------
    def _feeds(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(v[idx])) for k, v in self.inputs.items()}

    def _batch(self, idx: np.ndarray) -> Batch:
        """Inputs, teacher targets and labels of samples ``idx`` (mixed when mixup is on)."""
        names = [t for _, t in self.pairs] + [a for a, _ in self.cfg.features]
        if self.mixup <= 0 or self.teacher is None:
            return Batch(
                self._feeds(idx),
                {n: _tensor(self.targets[n][idx]) for n in names},
                None if self.labels is None else torch.from_numpy(self.labels[idx]),
            )
        perm = self.rng.permutation(len(idx))
        lam = self.rng.beta(self.mixup, self.mixup, size=len(idx)).astype(np.float32)
        mixed = {}
        for k, v in self.inputs.items():
            a = np.asarray(v[idx])
            w = lam.reshape((-1,) + (1,) * (a.ndim - 1))
            mixed[k] = (w * a + (1 - w) * a[perm]).astype(a.dtype)
        got = self.teacher(mixed)
        labels = None
        if self.labels is not None and self.cfg.alpha > 0:
            eye = np.eye(self.targets[self.pairs[0][1]].shape[-1], dtype=np.float32)
            y = self.labels[idx]
            labels = torch.from_numpy(lam[:, None] * eye[y] + (1 - lam[:, None]) * eye[y[perm]])
        return Batch(
            {k: torch.from_numpy(v) for k, v in mixed.items()},
            {n: _tensor(got[n]) for n in names},
            labels,
        )

    def _projections(self) -> torch.nn.ModuleDict:
        """1x1 channel projections for features whose channel counts differ."""
        proj = torch.nn.ModuleDict()
        self._proj_key: dict[int, str] = {}
        if not self.cfg.features:
            return proj
        idx = self.train_idx[: self.chunk or 2]
        with torch.no_grad():
            got = self.module.run(self._feeds(idx), capture=[b for _, b in self.cfg.features])
        for i, (a, b) in enumerate(self.cfg.features):
            ts, ss = tuple(self.targets[a].shape[1:]), tuple(got[b].shape[1:])
            if ts == ss:
                continue
            if len(ts) != len(ss) or ts[1:] != ss[1:]:
                raise OptionError(
                    f"--feature {a}:{b}: shapes {list(ts)} and {list(ss)} differ "
                    "beyond the channel axis"
                )
            lin = torch.nn.Linear(ss[0], ts[0], bias=False)
            self._proj_key[i] = f"p{i}"
            proj[f"p{i}"] = lin
            self.notes.append(f"feature {a}:{b}: learned {ss[0]}->{ts[0]} channel projection")
        return proj

    # ---------------------------------------------------------------------------------------
    def _output_loss(
        self, out: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        total = torch.zeros(())
        for s, t in self.pairs:
            ys, yt = out[s], targets[t]
            kind = self.loss_kinds[s]
            if kind == "kl":
                ys_l = ys.clamp_min(1e-12).log() if self._prob[s] else ys
                total = total + kl_loss(ys_l, yt, self.cfg.temperature, self._prob[s])
            elif kind == "cosine":
                total = total + (1 - F.cosine_similarity(ys.float(), yt.float(), dim=-1)).mean()
            else:
                total = total + F.mse_loss(ys.float(), yt.float())
        return total

    def _loss(self, batch: Batch) -> torch.Tensor:
        cfg = self.cfg
        capture = [b for _, b in cfg.features]
        out = self.module.run(batch.feeds, capture=capture)
        loss = self._output_loss(out, batch.targets)
        if cfg.alpha > 0 and batch.labels is not None:
            s = self.pairs[0][0]
            logits = out[s].reshape(-1, out[s].shape[-1])
            if self._prob.get(s):
                logits = logits.clamp_min(1e-12).log()
            loss = cfg.alpha * F.cross_entropy(logits, batch.labels) + (1 - cfg.alpha) * loss
        for i, (a, b) in enumerate(cfg.features):
            fs, ft = out[b], batch.targets[a]
            if i in self._proj_key:
                fs = self.proj[self._proj_key[i]](fs.movedim(1, -1)).movedim(-1, 1)
            loss = loss + cfg.feature_weight * F.mse_loss(fs, ft) / ft.pow(2).mean().clamp_min(
                1e-12
            )
        return loss

    def _chunks(self, batch: Batch, n: int) -> list[tuple[Batch, int]]:
        """``batch`` cut into the student's fixed batch size (with each part's length)."""
        size = self.chunk or n
        if size >= n:
            return [(batch, n)]
        return [(batch.part(i, i + size), min(size, n - i)) for i in range(0, n, size)]

    # ---------------------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> EpochStats:
        """Held-out output loss, top-1 agreement with the teacher and accuracy (with labels)."""
        self.module.eval()
        losses, agree, correct, count = 0.0, 0, 0, 0
        s, t = self.pairs[0]
        kl_first = self.loss_kinds[s] == "kl"
        with torch.no_grad():
            step = self.chunk or 256
            for i in range(0, len(self.val_idx), step):
                idx = self.val_idx[i : i + step]
                b = Batch(self._feeds(idx), {n: _tensor(v[idx]) for n, v in self.targets.items()})
                out = self.module.run(b.feeds)
                losses += float(self._output_loss(out, b.targets)) * len(idx)
                if kl_first:
                    ps = out[s].reshape(-1, out[s].shape[-1]).argmax(-1).numpy()
                    pt = np.asarray(self.targets[t][idx]).reshape(len(ps), -1).argmax(-1)
                    agree += int((ps == pt).sum())
                    if self.labels is not None and len(ps) == len(idx):
                        correct += int((ps == self.labels[idx]).sum())
                    count += len(ps)
        n = max(1, len(self.val_idx))
        return EpochStats(
            epoch,
            float("nan"),
            losses / n,
            agree / count if count else None,
            100.0 * correct / count if count and self.labels is not None else None,
        )

    def _snapshot(self) -> dict[str, Any]:
        return {
            "module": copy.deepcopy(self.module.state_dict()),
            "proj": copy.deepcopy(self.proj.state_dict()),
        }

    def fit(
        self, progress: Callable[[DistillProgress], None] | None
    ) -> tuple[list[EpochStats], int]:
        """Train; restores the best held-out epoch (0 = the untouched student)."""
        cfg = self.cfg
        best = self.evaluate(0)
        best_state, best_epoch, waited = self._snapshot(), 0, 0
        history: list[EpochStats] = []
        steps = max(1, math.ceil(len(self.train_idx) / self.batch))
        last_val: EpochStats | None = None
        for epoch in range(1, cfg.epochs + 1):
            self.module.train()
            order = self.rng.permutation(self.train_idx)
            running = 0.0
            for k in range(steps):
                idx = order[k * self.batch : (k + 1) * self.batch]
                if len(idx) == 0:
                    continue
                self.opt.zero_grad(set_to_none=True)
                value = 0.0
                for part, size in self._chunks(self._batch(idx), len(idx)):
                    loss = self._loss(part) * (size / len(idx))
                    loss.backward()
                    value += float(loss.detach())
                self.opt.step()
                self.sched.step()
                running += value
                if progress is not None:
                    progress(
                        DistillProgress(
                            epoch,
                            cfg.epochs,
                            k + 1,
                            steps,
                            value,
                            None if last_val is None else last_val.val_loss,
                            None if last_val is None else last_val.val_agreement,
                        )
                    )
            stats = self.evaluate(epoch)
            stats.train_loss = running / steps
            history.append(stats)
            last_val = stats
            logger.info(
                "distill epoch %d: train %.4g, held-out %.4g",
                epoch,
                stats.train_loss,
                stats.val_loss,
            )
            if stats.val_loss < best.val_loss - 1e-6 * abs(best.val_loss):
                best, best_state, best_epoch, waited = stats, self._snapshot(), epoch, 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    self.notes.append(f"early stop after epoch {epoch} (best {best_epoch})")
                    break
        self.module.load_state_dict(best_state["module"])
        self.proj.load_state_dict(best_state["proj"])
        return history, best_epoch
