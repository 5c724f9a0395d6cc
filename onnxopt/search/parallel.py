"""Where a pass's independent chunks of work run (``PassContext.parallel``): a pool of local
processes or Ray tasks.

The quantize pass splits calibration statistics
(:func:`~onnxopt.passes.quantize.collect.collect_stats_split`: runs cut between the groups
each onnxruntime call concatenates; histograms on power-of-two ranges merged exactly) across
``workers`` chunks; the result is bit for bit the single-process one
(tests/onnxopt/search/test_parallel.py). Per-layer sensitivities come from one instrumented
run and are not split.

A mapper is ``mapper(fn, [args, ...]) -> [fn(*args), ...]`` with a ``workers`` count.
``onnxopt search --executor ray`` gives the lossy passes a :class:`RayMap` (nested Ray tasks
from the worker running the trial).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class PoolMap:
    """Chunks in a fresh spawned process pool of ``workers`` processes (closed after each
    call)."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)

    def __call__(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        n = max(1, min(len(args), self.workers))
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(_star, [(fn, a) for a in args]))


class RayMap:
    """Chunks as Ray tasks (Ray initialized: a driver or a task's worker); the first argument,
    the same for every chunk (the model), goes to the object store once.

    Args:
        workers: how many chunks (default: the cluster's CPUs).
    """

    def __init__(self, workers: int | None = None) -> None:
        import ray

        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def __call__(self, fn: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
        import ray

        if not args:
            return []
        remote = ray.remote(max_retries=0)(fn)
        first = ray.put(args[0][0])
        same = all(a[0] is args[0][0] for a in args)
        refs = [remote.remote(first if same else a[0], *a[1:]) for a in args]
        return ray.get(refs)


def _star(item: tuple[Callable[..., Any], tuple[Any, ...]]) -> Any:
    fn, args = item
    return fn(*args)
