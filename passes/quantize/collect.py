"""Collecting calibration statistics: run the model with the observed tensors exposed as
outputs and stream them into :class:`~.calibrate.TensorStats`, in this process or split across
workers (``collect_stats_split``: the runs cut between concatenated groups, the parts merged
bit for bit)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import onnx

from onnxopt import phases
from onnxopt.model import model_bytes
from onnxopt.runner import contiguous, in_threads, side_for, side_threads

from .calibrate import DEFAULT_BINS, TensorStats, finite_range

logger = logging.getLogger(__name__)


def _batches(
    runs: list[dict[str, np.ndarray]], batch: int, dynamic_batch: bool
) -> Iterable[tuple[dict[str, np.ndarray], int]]:
    """Concatenate consecutive runs of equal shapes along axis 0 (dynamic batch only).

    Yields (feed, number of runs in it).
    """
    for idx in batch_groups(runs, batch, dynamic_batch):
        if len(idx) == 1:
            yield runs[idx[0]], 1
        else:
            yield _concatenated(runs, idx), len(idx)


def _concatenated(runs: list[dict[str, np.ndarray]], idx: list[int]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([runs[i][k] for i in idx]) for k in runs[idx[0]]}


def run_keeping(
    sess: Any, names: list[str], feed: dict[str, np.ndarray], keep: list[str] | None
) -> tuple[list[np.ndarray], dict[str, np.ndarray] | None]:
    """(``sess``'s values of ``names`` on ``feed``, its ``{name: value}`` of the ``keep``
    outputs, asked in the same call: the session computes the model's own outputs anyway);
    ``keep`` None: no second part."""
    extra = [k for k in keep if k not in set(names)] if keep is not None else []
    values = sess.run(names + extra, feed)
    if keep is None:
        return values, None
    got = dict(zip(names + extra, values, strict=True))
    return values[: len(names)], {k: got[k] for k in keep}


def batch_groups(
    runs: list[dict[str, np.ndarray]],
    batch: int,
    dynamic_batch: bool,
    alone: set[int] | frozenset = frozenset(),
) -> list[list[int]]:
    """The runs each onnxruntime call of :func:`collect_stats` concatenates (indices): at most
    ``batch`` consecutive runs of equal shapes, each run in ``alone`` by itself. Splitting
    ``runs`` between groups gives every worker the same calls, so statistics collected apart
    merge to the same values."""
    if not dynamic_batch or batch <= 1:
        return [[i] for i in range(len(runs))]
    groups: list[list[int]] = []
    sig = None
    for i, r in enumerate(runs):
        s = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(r.items()))
        if groups and s == sig and len(groups[-1]) < batch and i not in alone:
            groups[-1].append(i)
        else:
            groups.append([i])
        sig = None if i in alone else s
    return groups


def probe_model(
    base: onnx.ModelProto, tensors: list[str]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``base`` whose outputs carry ``tensors`` (those of If/Loop/Scan bodies are
    exposed over every iteration, see :mod:`.bodies`): (the model, {tensor: output name}).
    A mapped model's copy is its skeleton: the weights stay shared."""
    from .bodies import expose

    m = onnx.ModelProto()
    m.CopyFrom(base)
    return m, expose(m, tensors)


def open_session(
    model: bytes | str | onnx.ModelProto,
    *,
    spin: bool = True,
    threads: int = 0,
    optimized: bool = False,
) -> Any:
    """An onnxruntime session with graph optimizations off (a ModelProto's large weights are
    shared with it, not copied: :mod:`onnxopt.sessions`). ``spin=False``: its idle threads
    sleep between runs, for a caller that computes with BLAS between them (spinning, they
    took the cores BLAS's threads wait for). ``threads``: intra-op threads (0: onnxruntime's
    default). ``optimized``: onnxruntime's optimizations on, for a probe that exposes a few
    tensors (graph outputs, which no fusion removes) and whose statistics float noise does
    not move: the PP-OCRv5 recognizer's error-feedback probe ran 1.8x faster. A probe that
    exposes most of the graph gains little (every exposed tensor blocks the fusions around
    it and leaves onnxruntime's blocked layout through a reorder)."""
    import onnxruntime as ort

    from onnxopt import sessions

    def options() -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimized
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    if isinstance(model, onnx.ModelProto):
        # optimized: the weights copied, as the runner's optimized sessions do (onnxruntime's
        # folds cannot read weights shared with it)
        return sessions.build(model, options, copy_weights=optimized)
    return ort.InferenceSession(
        model, sessions.cap_threads(options()), providers=["CPUExecutionProvider"]
    )


@phases.timed(phases.CALIBRATION)
def collect_stats(
    model: bytes | str | onnx.ModelProto,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    *,
    bins: int = DEFAULT_BINS,
    batch: int = 8,
    dynamic_batch: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    outputs: dict[int, dict[str, np.ndarray]] | None = None,
    keep: list[str] = (),
    alone: set[int] | frozenset = frozenset(),
) -> dict[str, TensorStats]:
    """Run ``model`` (tensors already exposed as outputs) and stream their statistics.

    Args:
        model: a ModelProto, serialized model or path whose graph outputs include ``tensors``.
        tensors: names of the float tensors to observe.
        runs: feeds, one dict per run.
        bins: histogram bins per tensor.
        batch: runs concatenated per session call when the batch dimension is dynamic.
        dynamic_batch: whether runs may be concatenated along axis 0.
        progress: ``(what, done, total)`` callback.
        outputs: when given, gets ``{run index: {name: value}}`` of the ``keep`` outputs (the
            model's own, which the session computes anyway) for the runs it read alone (a run
            concatenated with others has none: a batched call is not the same arithmetic).
        alone: runs (indices) read by themselves, never concatenated.
    """
    total = len(runs)
    tensors = list(tensors)
    groups = batch_groups(runs, batch, dynamic_batch, alone)
    # the groups cut in contiguous parts, one session each, side by side (as the verification
    # runs go, :func:`onnxopt.runner.side_by_side`); the parts' statistics merge exactly
    side = max(1, min(side_for(model), len(groups)))
    lock = threading.Lock()
    done = [0]
    stop = threading.Event()  # set when another part fails, or on Ctrl-C

    def part(lo: int, hi: int) -> dict[str, TensorStats]:
        sess = open_session(model, threads=side_threads(side) if side > 1 else 0)
        stats = {t: TensorStats(t, bins) for t in tensors}
        for idx in groups[lo:hi]:
            if stop.is_set():
                break
            single = outputs is not None and len(idx) == 1
            feed = runs[idx[0]] if len(idx) == 1 else _concatenated(runs, idx)
            values, kept = run_keeping(sess, tensors, feed, list(keep) if single else None)
            if kept is not None:
                outputs[idx[0]] = kept
            for name, v in zip(tensors, values, strict=True):
                stats[name].update(v)
            del values
            with lock:
                done[0] += len(idx)
                if progress is not None:
                    progress("calibrating", min(done[0], total), total)
        return stats

    parts = in_threads(part, contiguous(len(groups), side), stop)
    stats = parts[0] if parts else {t: TensorStats(t, bins) for t in tensors}
    for other in parts[1:]:
        for t in tensors:
            stats[t].merge(other[t])
    return stats


@phases.timed(phases.CALIBRATION)
def collect_minmax(
    model: onnx.ModelProto, tensors: list[str], runs: list[dict[str, np.ndarray]]
) -> dict[str, tuple[float, float]]:
    """Each exposed tensor's (min, max) over ``runs``, non-finite values left out (a tensor
    with no finite value is left out): no histogram, for ranges whose values do not matter
    much (the latency profile's int8 models)."""
    sess = open_session(model)
    seen: dict[str, tuple[float, float]] = {}
    for feed in runs:
        for name, v in zip(tensors, sess.run(tensors, feed), strict=True):
            got = finite_range(v)
            if got is None:
                continue
            _, lo, hi = got
            if name in seen:
                lo, hi = min(lo, seen[name][0]), max(hi, seen[name][1])
            seen[name] = (lo, hi)
    return seen


def write_probe(base: onnx.ModelProto, tensors: list[str], path: str) -> None:
    """Write ``base`` with ``tensors`` added as graph outputs, without copying the model.

    The outputs are appended to ``base`` for the save and removed again; onnxruntime then
    reads the file itself, so no serialized copy stays alive in Python during calibration.
    """
    outs = base.graph.output
    n0 = len(outs)
    have = {v.name for v in outs}
    outs.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        for t in tensors
        if t not in have
    )
    try:
        big = model_bytes(base) > 1_800_000_000
        onnx.save_model(
            base,
            path,
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location="probe.onnx.data",
        )
    finally:
        del outs[n0:]


@phases.timed(phases.CALIBRATION)
def collect_stats_split(
    model: bytes,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    parallel: Callable,
    *,
    bins: int = DEFAULT_BINS,
    batch: int = 8,
    dynamic_batch: bool = False,
) -> dict[str, TensorStats]:
    """:func:`collect_stats` with the runs cut between concatenated groups into
    ``parallel.workers`` parts, each collected where ``parallel`` runs it, then merged: the
    same statistics, bit for bit (see :meth:`TensorStats.merge`)."""
    groups = batch_groups(runs, batch, dynamic_batch)
    args = [
        (model, tensors, [runs[i] for g in groups[a:b] for i in g], bins, batch, dynamic_batch)
        for a, b in contiguous(len(groups), int(getattr(parallel, "workers", 1)))
    ]
    merged = {t: TensorStats(t, bins) for t in tensors}
    for part in parallel(_part_stats, args):
        for t, st in part.items():
            merged[t].merge(st)
    return merged


def _part_stats(
    model: bytes, tensors: list[str], runs: list, bins: int, batch: int, dynamic: bool
) -> dict[str, TensorStats]:
    return collect_stats(model, tensors, runs, bins=bins, batch=batch, dynamic_batch=dynamic)
