"""Teacher targets: onnxruntime outputs over the data, batched and cached on disk."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.passes.distill.config import DistillConfig
from onnxopt.passes.distill.trainer import distill
from tests.passes.distill.models import data, mlp


def test_teacher_targets_are_cached_on_disk(tmp_path) -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    cfg = DistillConfig(epochs=1, cache_dir=str(tmp_path))
    distill(student, teacher, data(64), cfg)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].endswith(".0.npy")
    stamp = (tmp_path / files[0]).stat().st_mtime_ns
    distill(student, teacher, data(64), cfg)  # cache hit: the file is not rewritten
    assert (tmp_path / files[0]).stat().st_mtime_ns == stamp


def test_targets_streamed_to_disk_equal_the_in_memory_ones(tmp_path) -> None:
    from onnxopt.passes.distill.teacher import teacher_targets

    teacher, x = mlp(32, seed=1), data(100)
    mem = teacher_targets(teacher, x, ["logits", "r"], batch=16)
    disk = teacher_targets(teacher, x, ["logits", "r"], batch=16, cache_dir=tmp_path)
    assert isinstance(disk["logits"], np.memmap) and len(list(tmp_path.iterdir())) == 2
    for k in mem:
        np.testing.assert_array_equal(np.asarray(disk[k]), mem[k])
