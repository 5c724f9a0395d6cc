"""The local process pool when a worker process dies (killed here with SIGKILL: a real crash
of the process, nothing mocked): the tasks that were running are re-run one at a time, and
only the one that dies alone is reported as crashed."""

from __future__ import annotations

import os
import signal
import time

import onnx
import pytest

from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.search.driver import Request, make_job
from onnxopt.search.executors import LocalExecutor, Task, TaskCrashed
from onnxopt.search.recipe import build_space
from onnxopt.synth import get_feeds
from onnxopt.verify import Budget


def _job(full_bench: float):
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    space = build_space({"search": {"full_bench": full_bench}, "prune": {"ratio": [0]}})
    req = Request(
        model=model,
        feeds=get_feeds(model, EXAMPLES / "digits_test.npz", batch=40),
        space=space,
        budget=Budget(),
        out=None,
    )
    return make_job(req)[0]


def _workers(ex: LocalExecutor) -> list[int]:
    return [p.pid for p in ex._pool._processes.values() if p.is_alive()]


def _wait(ex: LocalExecutor, tasks: list[Task], seconds: float = 120) -> list[Task]:
    done: list[Task] = []
    end = time.time() + seconds
    while len(done) < len(tasks) and time.time() < end:
        done += ex.wait([t for t in tasks if t not in done], 0.5)
    return done


@pytest.mark.slow
def test_a_dead_worker_is_reported_and_the_others_rerun(tmp_path):
    job = _job(full_bench=6.0)
    path = tmp_path / "m.onnx"
    path.write_bytes(job.model)
    ex = LocalExecutor(2)
    ex.start(job)
    try:
        tasks = [ex.submit(Task("eval", (str(path), 1), f"e{i}")) for i in range(2)]
        time.sleep(2.0)  # both are timing (6 s of interleaved rounds)
        os.kill(_workers(ex)[0], signal.SIGKILL)
        done = ex.wait(tasks, 10)  # the pool broke: what was running re-runs alone
        assert ex._alone or ex._suspect is not None
        time.sleep(2.0)  # a task runs alone in a one-worker pool: killed, it is the culprit
        (lone,) = _workers(ex)
        os.kill(lone, signal.SIGKILL)
        done += _wait(ex, [t for t in tasks if t not in done])
        assert len(done) == 2
        outcomes = []
        for t in done:
            try:
                outcomes.append(ex.result(t)[0]["status"])
            except TaskCrashed:
                outcomes.append("crashed")
        assert sorted(outcomes) == ["crashed", "ok"]
    finally:
        ex.close()
