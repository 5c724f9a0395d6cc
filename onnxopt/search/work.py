"""What a worker runs: one step of a trial (a verified batch of exact passes, or one lossy
pass) and one evaluation of a candidate (quality against the original, latency, size).

The same functions run in a local process pool and as Ray tasks. Everything they share (the
original model, the feeds, the budget, the settings) is one :class:`Job`, shipped to each
worker once (a pool initializer, or one ``ray.put``); a worker parses it once and keeps the
original's reference outputs (:class:`Memo`).

Quality is read with onnxruntime's optimizations on and one intra-op thread, as the model is
deployed and timed, so a trial's numbers do not depend on the machine's core count:

- ``accuracy``: top-1 accuracy (%) against the labels; the budget's accuracy drop is
  ``accuracy(original) - accuracy(candidate)``;
- ``agreement``: top-1 agreement (%) with the original (class scores, no labels);
- ``cosine``: the smallest cosine similarity of any float output to the original, x100.

Latency is the median of timed runs at batch 1 (a short bench in the cheap rung; in the full
rung the candidate and the original run in interleaved rounds, :func:`onnxopt.timing.race`).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import first_line
from onnxopt.sessions import THREADS_ENV
from onnxopt.verify import Budget

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "agreement", "cosine")
#: threads the libraries a pass uses may start (one task per core); onnxruntime's sessions
#: follow ``THREADS_ENV`` (:func:`onnxopt.sessions.cap_threads`)
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Job:
    """Everything a trial needs besides its steps, shipped to every worker once.

    Attributes:
        key: the search's root key (names the job in a worker's memo).
        model: the original, serialized.
        calib: the runs lossy passes learn from.
        verify: the runs candidates are judged on (the cheap rung uses the first
            ``subset_runs``).
        budget: the user's budget against the original.
        metric: ``accuracy``, ``agreement`` or ``cosine`` (see the module docstring).
        bench_feed: the input latency is measured on (batch 1 where the batch is dynamic).
    """

    key: str
    model: bytes
    calib: Feeds
    verify: Feeds
    budget: Budget
    metric: str
    bench_feed: dict[str, np.ndarray]
    subset_runs: int = 1
    metric_output: str | None = None
    target: str = "onnx"
    exact_runs: int = 8
    short_bench: float = 0.3
    full_bench: float = 1.5
    threads: int = 1
    #: lossy passes may split their data-parallel work across the cluster (Ray tasks)
    parallel: bool = False


class Memo:
    """A worker's parsed job and the original's outputs, kept across its tasks."""

    def __init__(self, job: Job) -> None:
        from onnxopt.runner import Runner

        self.job = job
        self.original = onnx.load_from_string(job.model)
        self.runner = Runner(threads=1, cache_size=2)
        self._ref: dict[int, tuple[list[dict[str, np.ndarray]], float | None]] = {}

    def feeds(self, rung: int) -> Feeds:
        j = self.job
        return j.verify.subset(j.subset_runs) if rung == 0 else j.verify

    def reference(self, rung: int) -> tuple[list[dict[str, np.ndarray]], float | None]:
        """The original's outputs on the rung's runs, and its accuracy (with labels)."""
        if rung not in self._ref:
            feeds = self.feeds(rung)
            out = self.runner.run(self.original, feeds, optimized=True)
            self._ref[rung] = (out, self._accuracy(out, feeds))
        return self._ref[rung]

    def _accuracy(self, out: list[dict[str, np.ndarray]], feeds: Feeds) -> float | None:
        from onnxopt.verify import accuracy

        if feeds.labels is None:
            return None
        return accuracy(out, feeds.labels, self.job.metric_output)


_MEMO: dict[str, Memo] = {}


def memo(job: Job) -> Memo:
    """This process's :class:`Memo` of ``job`` (built on first use)."""
    m = _MEMO.get(job.key)
    if m is None:
        _MEMO.clear()  # one search at a time per worker
        m = _MEMO[job.key] = Memo(job)
    return m


def init_worker(job_bytes: bytes) -> None:
    """Process-pool initializer: one thread per library, then the job, parsed once. The
    worker is a process of its own: its warnings (a pass's notes say the same) stay quiet."""
    for k in (*THREAD_ENV, THREADS_ENV):
        os.environ[k] = "1"
    logging.basicConfig(level=logging.ERROR)
    memo(pickle.loads(job_bytes))


def ping() -> str:
    """A no-op task (starts a pool's workers)."""
    return node_name()


def warm(job: Job) -> str:
    """Start a worker before it has work: the process, the passes' imports and the job's memo
    (a Ray node otherwise pays them when the first step reaches it, after the root step)."""
    from onnxopt.passes import registry  # noqa: F401 - imported for its side effect

    memo(job)
    return node_name()


def node_name() -> str:
    """The machine a task ran on: Ray's node IP and id when in Ray, else the host name."""
    ray = sys.modules.get("ray")  # a Ray worker has it; a local pool's worker never imports it
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        return f"{ray.util.get_node_ip_address()} ({ctx.get_node_id()[:8]})"
    return socket.gethostname()


def _job(job: Job | None) -> Job:
    if job is not None:
        return job
    if len(_MEMO) != 1:
        raise RuntimeError("no job: the worker was not initialized")
    return next(iter(_MEMO.values())).job


def _model(data: bytes | str) -> tuple[onnx.ModelProto, bytes]:
    if isinstance(data, str):
        with open(data, "rb") as f:
            data = f.read()
    return onnx.load_from_string(data), data


# ------------------------------------------------------------------------------------------
# One step


def run_step(
    parent: bytes | str, step: dict[str, Any], job: Job | None = None
) -> tuple[dict[str, Any], bytes | None]:
    """Apply one step to ``parent`` (bytes, or a path on this machine).

    Returns (outcome, the new model's bytes, or None when unchanged or failed). A failure is an
    outcome with ``status: "error"`` and the error's first line, never an exception: the search
    records it and goes on.
    """
    t0 = time.perf_counter()
    out: dict[str, Any] = {"node": node_name(), "pid": os.getpid()}
    try:
        m = memo(_job(job))
        model, _ = _model(parent)
        if step["exact"]:
            new, info = _exact_step(model, step, m)
        else:
            new, info = _lossy_step(model, step, m)
        out.update(info)
        data = new.SerializeToString() if new is not None else None
    except Exception as e:  # noqa: BLE001 - a crashing trial is recorded, not raised
        logger.debug("step %s failed", step, exc_info=True)
        out.update(status="error", error=f"{type(e).__name__}: {first_line(e)}")
        data = None
    out["seconds"] = time.perf_counter() - t0
    return out, data


def _exact_step(
    model: onnx.ModelProto, step: dict[str, Any], m: Memo
) -> tuple[onnx.ModelProto | None, dict[str, Any]]:
    """A batch of exact passes through the PassManager (verified, rolled back if needed)."""
    from onnxopt.passes import registry

    j = m.job
    pm = registry.manager(
        step["passes"], options=step["options"], target=j.target, exact_runs=j.exact_runs
    )
    new, report = pm.run(model, j.verify.subset(j.exact_runs))
    changed = any(p.kept for p in report.passes)
    info = {
        "status": "kept" if changed else "unchanged",
        "rewrites": sum(p.rewrites for p in report.passes if p.kept),
        "report": report.to_dict(),
        "notes": [
            f"{p.name}: {p.status}" + (f" ({p.reason})" if p.reason else "") for p in report.failed
        ],
        "summary": report.final,
    }
    return (new if changed else None), info


def _lossy_step(
    model: onnx.ModelProto, step: dict[str, Any], m: Memo
) -> tuple[onnx.ModelProto | None, dict[str, Any]]:
    """One lossy pass, learning from the calibration runs, with the original as its
    reference (teacher); the candidate is checked (onnx checker, strict shape inference)."""
    from onnxopt.contract import PassContext
    from onnxopt.model import structural_check
    from onnxopt.passes import registry
    from onnxopt.report import summary_dict
    from onnxopt.summary import ModelSummary

    j = m.job
    (p,) = registry.resolve(step["passes"], step["options"])
    ctx = PassContext(
        feeds=j.calib,
        target=j.target,
        original=m.original,
        budget=j.budget,
        runner=m.runner,
        parallel=_cluster_map() if j.parallel else None,
        # a trial's model must not depend on timing (the same trial gives the same model on
        # every executor): the search times whole models itself, so passes do not time layers
        allow_slower=True,
    )
    result, new = p.apply(model, ctx)
    info: dict[str, Any] = {
        "status": "kept" if result.changed else "unchanged",
        "rewrites": result.rewrites,
        "notes": list(result.notes),
        "details": _jsonable(result.details),
    }
    if not result.changed:
        return None, info
    inferred = structural_check(new)
    info["summary"] = summary_dict(ModelSummary.of(new, inferred))
    return new, info


def _cluster_map() -> Any:
    """Ray tasks for a pass's chunks when this worker is part of a Ray cluster, else None."""
    try:
        import ray

        if ray.is_initialized():
            from onnxopt.search.parallel import RayMap

            return RayMap()
    except ImportError:  # pragma: no cover - ray is in the dev extra
        pass
    return None


def _jsonable(obj: Any) -> Any:
    import json

    try:
        json.dumps(obj)
        return obj
    except (TypeError, ValueError):
        return json.loads(json.dumps(obj, default=str))


# ------------------------------------------------------------------------------------------
# One evaluation


def evaluate(model_data: bytes | str, rung: int, job: Job | None = None) -> dict[str, Any]:
    """Quality against the original, feasibility under the budget, latency and size of one
    candidate. Rung 0: the first ``subset_runs`` runs and a short bench; rung 1: every run and
    interleaved rounds with the original. Errors are returned as ``status: "error"``."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"rung": rung, "node": node_name(), "pid": os.getpid()}
    try:
        m = memo(_job(job))
        model, data = _model(model_data)
        out.update(_quality(model, rung, m))
        out.update(_speed(model, rung, m))
        out["size_mb"] = len(data) / 1e6
        out["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded, the search goes on
        logger.debug("evaluation failed", exc_info=True)
        out.update(status="error", error=f"{type(e).__name__}: {first_line(e)}")
    out["seconds"] = time.perf_counter() - t0
    return out


def _quality(model: onnx.ModelProto, rung: int, m: Memo) -> dict[str, Any]:
    from onnxopt.summary import ModelSummary
    from onnxopt.verify import compare

    j = m.job
    ref, ref_acc = m.reference(rung)
    feeds = m.feeds(rung)
    outputs = m.runner.run(model, feeds, optimized=True)
    m.runner.clear()
    cmp = compare(ref, outputs)
    acc = m._accuracy(outputs, feeds)
    verdict = j.budget.check(cmp, (ref_acc, acc) if acc is not None else None)
    top1 = cmp.top1
    quality = {
        "accuracy": acc,
        "agreement": None if top1 is None else 100.0 * top1,
        "cosine": 100.0 * cmp.cosine,
    }[j.metric]
    original = {"accuracy": ref_acc, "agreement": 100.0, "cosine": 100.0}[j.metric]
    return {
        "quality": quality,
        "quality_original": original,
        "accuracy": acc,
        "accuracy_original": ref_acc,
        "cosine": cmp.cosine,
        "top1": top1,
        "max_abs": cmp.max_abs,
        "feasible": bool(verdict),
        "why": verdict.reason,
        "runs": len(feeds),
        "macs": ModelSummary.of(model).flops,
    }


def _speed(model: onnx.ModelProto, rung: int, m: Memo) -> dict[str, Any]:
    from onnxopt.timing import race

    j = m.job
    if rung == 0:
        return {"latency_ms": short_bench(model, j.bench_feed, j.short_bench, j.threads)}
    r = race(  # rounds until full_bench seconds (longer while unsure), however fast the model
        m.original,
        model,
        j.bench_feed,
        threads=j.threads,
        seconds=j.full_bench,
        min_rounds=8,
        max_rounds=1_000_000,
    )
    return {
        "latency_ms": r.b_ms,
        "latency_original_ms": r.a_ms,
        "speedup": 1.0 / r.ratio if r.ratio > 0 else None,
        "rounds": r.rounds,
        "faster_in_rounds": r.b_wins,
    }


def short_bench(
    model: onnx.ModelProto, feed: dict[str, np.ndarray], seconds: float, threads: int
) -> float:
    """Median latency (ms) over ``seconds`` of timed runs (at least 5) after 3 warm-up runs."""
    from onnxopt.timing import model_session

    sess = model_session(model, threads=threads)
    for _ in range(3):
        sess.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t = time.perf_counter_ns()
        sess.run(None, feed)
        times.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.median(times))
