"""Calibration statistics and per-site sensitivities split across workers (a local process
pool or Ray tasks) and merged exactly: the result is bit for bit the single-process one.

- Statistics: the calibration runs are cut between the groups each onnxruntime call
  concatenates (:func:`~onnxopt.passes.quantize.calibrate.batch_groups`), so every worker makes
  the same calls as one process would; each returns its
  :class:`~onnxopt.passes.quantize.calibrate.TensorStats`, merged in order with
  :meth:`TensorStats.merge` (min, max, counts and histograms on power-of-two ranges merge
  exactly).
- Sensitivities: each site's SQNR with only that site quantized
  (:func:`~onnxopt.passes.quantize.fallback.rank_sites`) is independent of the others; the
  sites are cut into chunks, the values concatenated in site order and stably sorted, as
  ``rank_sites`` does.

A ``Mapper`` is ``map(fn, [args, ...]) -> [fn(*args), ...]``: :func:`pool_map` (processes on
this machine) or :func:`ray_map` (Ray tasks; the large shared argument goes to the object store
once).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from onnxopt.passes.quantize.calibrate import (
    DEFAULT_BINS,
    TensorStats,
    batch_groups,
    collect_stats,
    write_probe,
)
from onnxopt.passes.quantize.fallback import sqnr_db

Mapper = Callable[[Callable[..., Any], list[tuple[Any, ...]]], list[Any]]
Runs = list[dict[str, np.ndarray]]


def pool_map(workers: int | None = None) -> Mapper:
    """A Mapper over a fresh spawned process pool (closed after each call)."""

    def run(fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n = max(1, min(len(args), workers or os.cpu_count() or 1))
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_star, [(fn, a) for a in args]))

    return run


def ray_map(shared_first: bool = True) -> Mapper:
    """A Mapper over Ray tasks (Ray must be initialized); the first argument, the same for
    every call (the model), is put in the object store once."""

    def run(fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        import ray

        remote = ray.remote(max_retries=0)(fn)
        first = ray.put(args[0][0]) if shared_first and args else None
        refs = [remote.remote(first if first is not None else a[0], *a[1:]) for a in args]
        return ray.get(refs)

    return run


def _star(item: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = item
    return fn(*args)


def _chunks(n: int, parts: int) -> list[range]:
    """``parts`` contiguous, near-equal ranges over ``n`` items (empty ones dropped)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


# ------------------------------------------------------------------------------------------
# Calibration statistics


def probe_bytes(model: onnx.ModelProto, tensors: list[str]) -> bytes:
    """``model`` with ``tensors`` as extra outputs, serialized (what workers run)."""
    with tempfile.TemporaryDirectory(prefix="onnxopt_probe_") as tmp:
        path = os.path.join(tmp, "probe.onnx")
        write_probe(model, tensors, path)
        with open(path, "rb") as f:
            return f.read()


def _chunk_stats(
    probe: bytes, tensors: list[str], runs: Runs, bins: int, batch: int, dynamic: bool
) -> dict[str, TensorStats]:
    return collect_stats(probe, tensors, runs, bins=bins, batch=batch, dynamic_batch=dynamic)


def calibration_stats(
    probe: bytes,
    tensors: list[str],
    runs: Runs,
    *,
    mapper: Mapper,
    chunks: int,
    bins: int = DEFAULT_BINS,
    batch: int = 8,
    dynamic_batch: bool = False,
) -> dict[str, TensorStats]:
    """:func:`~onnxopt.passes.quantize.calibrate.collect_stats` over ``chunks`` workers:
    the same statistics, bit for bit.

    Args:
        probe: the serialized model with ``tensors`` as outputs (:func:`probe_bytes`).
        mapper: where the chunks run (:func:`pool_map`, :func:`ray_map`).
        chunks: how many parts the runs are cut into (between concatenated groups).
    """
    groups = batch_groups(runs, batch, dynamic_batch)
    args = []
    for part in _chunks(len(groups), chunks):
        idx = [i for g in part for i in groups[g]]
        args.append((probe, tensors, [runs[i] for i in idx], bins, batch, dynamic_batch))
    results = mapper(_chunk_stats, args)
    merged = {t: TensorStats(t, bins) for t in tensors}
    for part in results:
        for t, s in part.items():
            merged[t].merge(s)
    return merged


# ------------------------------------------------------------------------------------------
# Sensitivities


class Shipped:
    """An object whose ModelProto attributes travel serialized (protobuf messages do not
    pickle); :meth:`restore` rebuilds it on the worker."""

    def __init__(self, obj: Any, reset: Sequence[str] = ()) -> None:
        self.cls = type(obj)
        items = {k: (None if k in reset else v) for k, v in vars(obj).items()}
        self.protos = {k for k, v in items.items() if isinstance(v, onnx.ModelProto)}
        self.state = {k: v.SerializeToString() if k in self.protos else v for k, v in items.items()}

    def restore(self) -> Any:
        obj = self.cls.__new__(self.cls)
        for k, v in self.state.items():
            setattr(obj, k, onnx.load_from_string(v) if k in self.protos else v)
        return obj


def _chunk_sensitivity(
    build: Shipped, sites: Sequence[str], runs: Runs, reference: Runs, threads: int
) -> list[tuple[str, float]]:
    from onnxopt.data import Feeds
    from onnxopt.runner import Runner

    build = build.restore()
    runner, feeds = Runner(threads=threads), Feeds(list(runs))
    return [(s, sqnr_db(reference, runner.run(build({s}), feeds))) for s in sites]


def sensitivities(
    build: Any,
    sites: Sequence[str],
    runs: Runs,
    reference: Runs,
    *,
    mapper: Mapper,
    chunks: int,
    threads: int = 1,
) -> list[tuple[str, float]]:
    """:func:`~onnxopt.passes.quantize.fallback.rank_sites` over ``chunks`` workers: (site,
    SQNR dB), most sensitive first, equal to one process's with the same onnxruntime
    threads. ``build`` is the quantize pass's Builder (its models travel serialized)."""
    parts = _chunks(len(sites), chunks)
    shipped = Shipped(build, reset=("inserter",))  # the last build's state stays here
    args = [(shipped, [sites[i] for i in part], runs, reference, threads) for part in parts]
    out = [kv for part in mapper(_chunk_sensitivity, args) for kv in part]
    out.sort(key=lambda kv: kv[1])
    return out
