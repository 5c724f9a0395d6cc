"""Teacher targets for distillation: onnxruntime outputs over the unlabeled data, batched, and
cached on disk for large sets.

The cache key is ``sha1(teacher bytes, requested tensor names, input arrays)``; a hit skips
onnxruntime entirely. Targets larger than ``memory_limit`` bytes (or any targets when a
``cache_dir`` is given) are written as ``.npy`` files and memory-mapped, so a large set never has
to fit in RAM twice. Intermediate teacher tensors (``--feature A:B``) are exposed by adding them as
graph outputs of a copy of the teacher.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds, input_specs
from onnxopt.errors import DataError, OnnxoptError

logger = logging.getLogger(__name__)

#: above this many bytes of targets, keep them on disk (memory-mapped)
MEMORY_LIMIT = 256 * 2**20


def stack_runs(feeds: Feeds) -> dict[str, np.ndarray]:
    """Concatenate the runs' inputs along axis 0 into one array per input (N samples).

    Raises:
        DataError: runs differ in shape beyond the batch axis (cannot form one sample set).
    """
    if not feeds.runs:
        raise DataError("distillation needs data: no runs")
    out: dict[str, np.ndarray] = {}
    for name in feeds.runs[0]:
        parts = [np.asarray(r[name]) for r in feeds.runs]
        if parts[0].ndim == 0 or len({p.shape[1:] for p in parts}) > 1:
            raise DataError(
                f"input '{name}': runs have different shapes {sorted({p.shape for p in parts})[:3]};"
                " distillation needs samples that stack along the batch axis"
            )
        out[name] = np.concatenate(parts, axis=0)
    return out


def static_batch(model: onnx.ModelProto) -> int | None:
    """The model's fixed batch size (dim 0 of its first input), or None when dynamic."""
    specs = input_specs(model)
    if specs and specs[0].shape and isinstance(specs[0].shape[0], int):
        return int(specs[0].shape[0])
    return None


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the intermediate tensors ``names``."""
    if not names:
        return model  # nothing to add: no copy
    out = onnx.ModelProto()
    out.CopyFrom(model)
    produced = {o for n in out.graph.node for o in n.output}
    have = {o.name for o in out.graph.output}
    missing = [n for n in names if n not in produced and n not in have]
    if missing:
        raise OnnxoptError(f"--feature: the teacher has no tensor(s) {missing}")
    for n in names:
        if n not in have:
            out.graph.output.append(onnx.ValueInfoProto(name=n))
    return out


def _key(teacher: bytes, names: Sequence[str], inputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha1(teacher)
    h.update("\0".join(names).encode())
    for k in sorted(inputs):
        a = np.ascontiguousarray(inputs[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def teacher_targets(
    teacher: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    *,
    batch: int = 256,
    cache_dir: str | os.PathLike | None = None,
    memory_limit: int = MEMORY_LIMIT,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """The teacher's tensors ``names`` for every sample of ``inputs``.

    Args:
        teacher: the teacher model.
        inputs: input name -> array of N samples (axis 0).
        names: graph outputs and/or intermediate tensors to return.
        batch: samples per onnxruntime call (the teacher's fixed batch size wins).
        cache_dir: keep targets here (memory-mapped ``.npy``), reused by later runs.
        memory_limit: above this many bytes, targets go to disk even without ``cache_dir``.
        threads: onnxruntime intra-op threads (0 = default).

    Returns:
        name -> array with N rows (np.memmap when on disk).
    """
    with_targets = _with_targets(teacher, names)
    key = _key(with_targets.SerializeToString(), names, inputs)
    folder = Path(cache_dir) if cache_dir is not None else None
    if folder is not None and all((folder / f"{key}.{i}.npy").exists() for i in range(len(names))):
        logger.info("teacher targets: cache hit %s", folder / key)
        return {n: np.load(folder / f"{key}.{i}.npy", mmap_mode="r") for i, n in enumerate(names)}
    n_samples = next(iter(inputs.values())).shape[0]
    fixed = static_batch(teacher)
    step = fixed or batch
    if fixed and n_samples % fixed:
        raise DataError(f"{n_samples} samples do not split into the teacher's batch of {step}")
    store = _TargetStore(names, n_samples, folder, key, memory_limit)
    sess = _session(with_targets, threads)
    for start in range(0, n_samples, step):
        feed = {k: np.ascontiguousarray(v[start : start + step]) for k, v in inputs.items()}
        store.add(start, start + step, sess.run(list(names), feed))
    return store.finish()


def _with_targets(teacher: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """The teacher, also returning those of ``names`` that are not graph outputs."""
    return with_outputs(
        teacher, [n for n in names if n not in {o.name for o in teacher.graph.output}]
    )


def _session(model: onnx.ModelProto, threads: int) -> Any:
    """A quiet onnxruntime CPU session (``threads`` intra-op threads, 0 = default). Built by
    :func:`onnxopt.sessions.build`: a large model's weights are mapped from its file, and its
    proto holds stubs for them, which onnxruntime refuses to read from serialized bytes
    ("model format error" on BERT-base); ``build`` hands them over as arrays, copied into
    the session: its graph optimizations fold constants (a position embedding's Gather), and
    onnxruntime reads a folded initializer's bytes from the proto, not from a shared array."""
    import onnxruntime as ort

    from onnxopt import sessions

    def options() -> Any:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        return so

    return sessions.build(model, options, copy_weights=True)


class _TargetStore:
    """Collects the teacher's targets batch by batch: in memory, or memory-mapped ``.npy``
    files in ``folder`` from the batch on which the expected total exceeds ``memory_limit``
    (from the first batch when a cache folder is given)."""

    def __init__(
        self, names: Sequence[str], n: int, folder: Path | None, key: str, memory_limit: int
    ) -> None:
        self.names, self.n, self.folder, self.key = list(names), n, folder, key
        self.memory_limit = memory_limit
        self.chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self.stores: dict[str, np.ndarray] = {}

    def add(self, start: int, stop: int, values: Sequence[np.ndarray]) -> None:
        if self.stores:  # streaming to disk
            for name, v in zip(self.names, values, strict=True):
                self.stores[name][start:stop] = v
            return
        for name, v in zip(self.names, values, strict=True):
            self.chunks[name].append(v)
        expected = sum(a.nbytes for c in self.chunks.values() for a in c) * self.n / stop
        if self.folder is not None or expected > self.memory_limit:
            self.folder = self.folder or Path(tempfile.gettempdir()) / "onnxopt-distill-cache"
            self.folder.mkdir(parents=True, exist_ok=True)
            self.stores = _open_stores(self.folder, self.key, self.names, values, self.n)
            for name in self.names:
                self.stores[name][:stop] = np.concatenate(self.chunks[name], axis=0)
                self.chunks[name] = []

    def finish(self) -> dict[str, np.ndarray]:
        """name -> array with N rows (np.memmap when on disk)."""
        if not self.stores:
            return {name: np.concatenate(c, axis=0) for name, c in self.chunks.items()}
        return _finish_stores(self.folder, self.key, self.names, self.stores)


def _tmp(folder: Path, key: str, i: int) -> Path:
    return folder / f".{key}.{i}.{os.getpid()}.npy"


def _open_stores(
    folder: Path, key: str, names: Sequence[str], first: Sequence[np.ndarray], n: int
) -> dict[str, np.ndarray]:
    return {
        name: np.lib.format.open_memmap(
            _tmp(folder, key, i), mode="w+", dtype=v.dtype, shape=(n, *v.shape[1:])
        )
        for i, (name, v) in enumerate(zip(names, first, strict=True))
    }


def _finish_stores(
    folder: Path, key: str, names: Sequence[str], stores: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    out = {}
    for i, name in enumerate(names):
        stores[name].flush()
        final = folder / f"{key}.{i}.npy"
        os.replace(_tmp(folder, key, i), final)
        out[name] = np.load(final, mmap_mode="r")
    stores.clear()
    logger.info("teacher targets cached in %s (%s)", folder, key)
    return out


class OnlineTeacher:
    """The teacher in onnxruntime, called on each training batch (for augmented inputs).

    Args:
        teacher: the teacher model.
        names: graph outputs and/or intermediate tensors to return.
        threads: onnxruntime intra-op threads (0 = default).
    """

    def __init__(self, teacher: onnx.ModelProto, names: Sequence[str], threads: int = 0) -> None:
        self.names = list(names)
        self.fixed = static_batch(teacher)
        self.sess = _session(_with_targets(teacher, names), threads)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """name -> the teacher's values for the samples of ``inputs`` (axis 0)."""
        n = next(iter(inputs.values())).shape[0]
        step = self.fixed or n
        if n % step:
            raise DataError(f"{n} samples do not split into the teacher's batch of {step}")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.names}
        for start in range(0, n, step):
            feed = {k: np.ascontiguousarray(v[start : start + step]) for k, v in inputs.items()}
            for k, v in zip(self.names, self.sess.run(self.names, feed), strict=True):
                parts[k].append(v)
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}
