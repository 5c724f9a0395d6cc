"""One search from start to end, for the CLI and the Python API: the job (what every worker
needs), the cache, the executor, the run, the outputs.

The data: lossy passes learn from ``calib`` (``--calib-data``); without it, from every other
run, and trials are judged on the rest (as the PassManager does). The
metric: accuracy with labels; else top-1 agreement with the original when an output holds
class scores (``--max-accuracy-drop D`` then means agreement >= 100 - D %); else cosine.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import DataError, OptionError
from onnxopt.search import pareto
from onnxopt.search.cache import Cache, digest, feeds_digest
from onnxopt.search.executors import make_executor
from onnxopt.search.output import write_results
from onnxopt.search.scheduler import Search, SearchResult
from onnxopt.search.space import Space
from onnxopt.search.work import Job
from onnxopt.verify import Budget, metric_output

logger = logging.getLogger(__name__)

METRIC_NAMES = {
    "accuracy": "accuracy %",
    "agreement": "top-1 agreement with the original %",
    "cosine": "cosine x100",
}


@dataclass
class Request:
    """A search as the user asked for it."""

    model: onnx.ModelProto
    feeds: Feeds
    space: Space
    budget: Budget
    out: Path
    calib: Feeds | None = None
    constraints: pareto.Constraints = pareto.Constraints()
    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    resume: bool = False
    metric_output: str | None = None
    target: str = "onnx"
    name: str = "model"


def split_feeds(feeds: Feeds, calib: Feeds | None) -> tuple[Feeds, Feeds, str]:
    """(what passes learn from, what trials are judged on, a note)."""
    if calib is not None:
        return calib, feeds, f"passes learn from {calib.source}; trials judged on {feeds.source}"
    if len(feeds) < 2:
        raise DataError("a search needs at least 2 runs of --data (or --calib-data)")
    learn, judge = feeds.split(0.5, spread=True)
    return (
        learn,
        judge,
        (
            f"passes learn from {len(learn)} runs of {feeds.source} (every other one), trials "
            f"are judged on the other {len(judge)} (give --calib-data to use separate data)"
        ),
    )


def metric_and_budget(
    model: onnx.ModelProto, feeds: Feeds, budget: Budget, output: str | None
) -> tuple[str, Budget]:
    """The quality metric and the budget it is checked with."""
    if feeds.labels is not None:
        return "accuracy", budget
    from onnxopt.runner import Runner

    run = Runner(threads=1).run(model, feeds.subset(1))[0]
    name = metric_output(run, output)
    a = np.asarray(run[name])
    scores = a.dtype.kind == "f" and a.ndim >= 2 and a.shape[-1] > 1
    if not scores:
        if budget.max_accuracy_drop is not None:
            raise OptionError(
                "--max-accuracy-drop needs labels in --data or an output with class scores"
            )
        return "cosine", budget
    if budget.max_accuracy_drop is not None:
        drop = budget.max_accuracy_drop
        budget = replace(budget, max_accuracy_drop=None, min_top1_agreement=1.0 - drop / 100.0)
    return "agreement", budget


def bench_feed(model: onnx.ModelProto, run: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first run at batch 1 where the model's batch dimension is dynamic."""
    dynamic = {
        i.name
        for i in model.graph.input
        if i.type.tensor_type.shape.dim
        and not i.type.tensor_type.shape.dim[0].HasField("dim_value")
    }
    return {k: (v[:1] if k in dynamic and v.ndim else v) for k, v in run.items()}


def make_job(req: Request) -> tuple[Job, dict[str, Any]]:
    """The job every worker gets, and what the outputs say about it."""
    calib, verify, note = split_feeds(req.feeds, req.calib)
    metric, budget = metric_and_budget(req.model, verify, req.budget, req.metric_output)
    s = req.space.settings
    data = req.model.SerializeToString()
    key = digest(
        "root",
        hashlib.sha256(data).hexdigest(),
        feeds_digest(calib),
        feeds_digest(verify),
        budget.describe(),
        req.target,
        str(req.metric_output),
    )
    job = Job(
        key=key,
        model=data,
        calib=calib,
        verify=verify,
        budget=budget,
        metric=metric,
        bench_feed=bench_feed(req.model, verify.runs[0]),
        subset_runs=max(1, round(len(verify) * s.subset)),
        metric_output=req.metric_output,
        target=req.target,
        short_bench=s.short_bench,
        full_bench=s.full_bench,
        threads=s.threads,
        parallel=req.executor == "ray",
    )
    info = {
        "model": req.name,
        "metric": metric,
        "metric_name": METRIC_NAMES[metric],
        "budget": budget.describe(),
        "constraints": {
            "max_latency_ms": req.constraints.max_latency_ms,
            "max_size_mb": req.constraints.max_size_mb,
        },
        "objective": s.objective,
        "settings": s.__dict__,
        "space": {
            "source": req.space.source,
            "stages": req.space.describe(),
            "size": req.space.size,
        },
        "data": note,
    }
    return job, info


def run(
    req: Request, progress: Callable[[dict[str, Any]], None] | None = None
) -> tuple[SearchResult, dict[str, Path], dict[str, Any]]:
    """Run the search and write its outputs under ``req.out``.

    Returns (the result, {output: path}, the summary the outputs carry). Ctrl-C stops the
    workers and leaves the cache as it is (``--resume`` continues)."""
    job, info = make_job(req)
    cache = Cache(req.out, resume=req.resume)
    executor = make_executor(req.executor, workers=req.workers, address=req.ray_address)
    try:
        result = Search(req.space, job, executor, cache, req.constraints, progress).run()
    finally:
        executor.close()
        cache.close()
    base = next(
        (ts for ts in result.trials if ts.full and all(s.exact for s in ts.trial.steps)), None
    )
    if base is not None:
        info["original"] = {
            "quality": base.full.get("quality_original"),
            "latency_ms": base.full.get("latency_original_ms"),
        }
    info["quality_floor"] = _floor(job, info)
    info["summary"] = _summary(result, info)
    paths = write_results(result, req.out, info)
    return result, paths, info


def _floor(job: Job, info: dict[str, Any]) -> float | None:
    b = job.budget
    orig = (info.get("original") or {}).get("quality")
    if job.metric == "accuracy" and b.max_accuracy_drop is not None and orig is not None:
        return orig - b.max_accuracy_drop
    if job.metric == "agreement" and b.min_top1_agreement is not None:
        return 100.0 * b.min_top1_agreement
    if b.min_cosine is not None and job.metric != "accuracy":
        return 100.0 * b.min_cosine
    return None


def _summary(result: SearchResult, info: dict[str, Any]) -> str:
    n = len(result.trials)
    failed = sum(bool(t.error) for t in result.trials)
    c = result.chosen
    chosen = (
        f"chosen: {c['id']} ({c['label']}), {c['latency_ms']:.4g} ms, {info['metric_name']} "
        f"{c['quality']:.2f}"
        if c and c.get("quality") is not None
        else "no trial met every constraint"
    )
    return (
        f"{n} trials ({failed} failed), {len(result.front)} on the front, budget "
        f"{info['budget']}; {chosen}; {result.executor}; {result.seconds:.0f} s"
    )
