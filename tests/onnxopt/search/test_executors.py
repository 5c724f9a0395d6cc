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


def _until(cond, seconds: float = 60) -> bool:
    """Poll ``cond`` until it holds (a pool's state, not a fixed sleep: a loaded machine
    spawns workers late)."""
    end = time.time() + seconds
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_dead_worker_is_reported_and_the_others_rerun(tmp_path):
    job = _job(full_bench=6.0)
    path = tmp_path / "m.onnx"
    path.write_bytes(job.model)
    ex = LocalExecutor(2)
    ex.start(job)
    try:
        tasks = [ex.submit(Task("eval", (str(path), 1), f"e{i}")) for i in range(2)]
        # both are running (6 s of interleaved rounds each) in their own worker
        assert _until(lambda: all(t.handle.running() for t in tasks) and len(_workers(ex)) == 2)
        time.sleep(0.5)
        assert not any(t.handle.done() for t in tasks), "a task ended before the kill"
        os.kill(_workers(ex)[0], signal.SIGKILL)
        done = ex.wait(tasks, 10)  # the pool broke: what was running re-runs alone
        assert ex._alone or ex._suspect is not None, f"no re-run after the crash: {done}"
        # a task runs alone in a one-worker pool: killed while it runs, it is the culprit
        suspect = ex._suspect
        assert suspect is not None
        assert _until(lambda: len(_workers(ex)) == 1 and suspect.handle.running())
        time.sleep(0.5)
        assert not suspect.handle.done(), "the suspect ended before the kill"
        (lone,) = _workers(ex)
        os.kill(lone, signal.SIGKILL)
        done += _wait(ex, [t for t in tasks if t not in done])
        assert len(done) == 2, f"finished: {[t.label for t in done]}"
        outcomes = []
        for t in done:
            try:
                outcomes.append(ex.result(t)[0]["status"])
            except TaskCrashed:
                outcomes.append("crashed")
        assert sorted(outcomes) == ["crashed", "ok"]
    finally:
        ex.close()
