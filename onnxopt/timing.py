"""Timing one onnxruntime session: session options as the benchmarks use them, and
:func:`measure` (latencies, session creation time, memory). :mod:`onnxopt.bench` runs it per
model and batch, in this process or in a fresh one (:mod:`onnxopt.bench_worker`)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from onnxopt.errors import ModelError

#: progress callback: (what, done, total)
Progress = Callable[[str, float, float], None]


def session_options(threads: int = 0, optimization: str = "all") -> Any:
    """onnxruntime SessionOptions: ``threads`` intra-op threads (0: onnxruntime's choice), one
    inter-op thread, graph optimizations ``disable|basic|extended|all``, quiet logs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return so


def session(model: Any, *, threads: int = 0, optimization: str = "all") -> Any:
    """A CPU session for a path, bytes or ModelProto with :func:`session_options`."""
    import onnxruntime as ort

    data = (
        model.SerializeToString()
        if hasattr(model, "SerializeToString")
        else (model if isinstance(model, bytes) else str(model))
    )
    return ort.InferenceSession(
        data, session_options(threads, optimization), providers=["CPUExecutionProvider"]
    )


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(
    path: str,
    runs_feeds: list[dict[str, np.ndarray]],
    *,
    provider: str,
    threads: int,
    optimization: str,
    warmup: int,
    runs: int,
    seconds: float | None,
    progress: Progress | None = None,
    isolated: bool = False,
) -> dict[str, Any]:
    """Time one session on ``runs_feeds`` (cycled). Returns latencies and memory numbers."""
    import onnxruntime as ort

    base = _rss_mb()
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(
            path, session_options(threads, optimization), providers=[provider]
        )
    except Exception as e:
        raise ModelError(
            f"{path}: onnxruntime cannot create a session ({str(e).strip().splitlines()[-1][:200]})"
        ) from e
    session_ms = (time.perf_counter() - t0) * 1e3
    samples = [_rss_mb()]
    k = len(runs_feeds)
    for i in range(warmup):
        sess.run(None, runs_feeds[i % k])
    samples.append(_rss_mb())
    lat: list[float] = []
    start = last = time.perf_counter()
    total = seconds if seconds is not None else float(runs)
    i = 0
    while True:
        feed = runs_feeds[i % k]
        t = time.perf_counter_ns()
        sess.run(None, feed)
        lat.append((time.perf_counter_ns() - t) / 1e6)
        i += 1
        now = time.perf_counter()
        done = (now - start) if seconds is not None else float(i)
        if progress is not None and (now - last > 0.1 or done >= total):
            progress("run", min(done, total), total)
            last = now
        if (seconds is None and i >= runs) or (
            seconds is not None and now - start >= seconds and i >= 3
        ):
            break
    samples.append(_rss_mb())
    if isolated:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        method = "fresh subprocess: ru_maxrss peak; session = peak - RSS before the session"
    else:
        peak = max(samples)
        method = "in-process RSS delta (psutil samples; approximate)"
    return {
        "latencies_ms": lat,
        "session_ms": session_ms,
        "peak_rss_mb": peak,
        "session_rss_mb": max(0.0, peak - base),
        "memory_method": method,
    }


# --------------------------------------------------------------------------- API
