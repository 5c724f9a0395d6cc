"""Executors: where the search's tasks run. ``local``: a process pool on this machine, one
worker per core. ``ray``: Ray tasks on a cluster (``--ray-address auto`` or ``HOST:PORT``), or
on a Ray instance started for the search and stopped after it.

Both run the functions of :mod:`.work` and ship the :class:`~.work.Job` (the original model
and the feeds) once: the pool's initializer gives it to each worker; Ray puts it in the object
store once and every task gets the reference. A step's model goes back to the driver for the
cache; with Ray its children receive the object reference, not a copy from the driver.

A task that kills its worker process (a crash in native code) is reported as
:class:`TaskCrashed`; the others go on. In the local pool such a crash breaks the pool: it is
rebuilt and the tasks that were running are re-run one at a time, so only the one that
crashes alone is reported.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.errors import OptionError, first_line
from onnxopt.search import work
from onnxopt.search.work import Job

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
#: seconds to wait for a Ray address to answer before giving up
CONNECT_TIMEOUT = 10.0


class TaskCrashed(Exception):
    """A task's worker process died (or Ray lost it) before it returned."""


@dataclass(eq=False)
class Task:
    """One submitted task: a step (returns an outcome and a model) or an evaluation."""

    kind: str  # "step" | "eval"
    args: tuple[Any, ...]
    label: str
    exclusive: bool = False
    handle: Any = None  # a Future, or Ray object references
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


class Executor:
    """The interface the scheduler uses (see :class:`LocalExecutor`, :class:`RayExecutor`)."""

    name = "base"
    slots = 1  # tasks at once
    exclusive_slots = 1  # full-rung evaluations at once: one per machine

    def start(self, job: Job) -> None:
        raise NotImplementedError

    def submit(self, task: Task) -> Task:
        raise NotImplementedError

    def wait(self, tasks: Sequence[Task], timeout: float) -> list[Task]:
        """The tasks among ``tasks`` that have finished (after at most ``timeout`` s)."""
        raise NotImplementedError

    def result(self, task: Task) -> tuple[dict[str, Any], bytes | None]:
        """(outcome, model bytes or None) of a finished task; :class:`TaskCrashed` if its
        worker died."""
        raise NotImplementedError

    def model_arg(self, path: Path, task: Task | None) -> Any:
        """What a task receives as a model: a path here, or an object reference."""
        return str(path)

    def describe(self) -> str:
        return f"{self.name}, {self.slots} workers"

    def close(self) -> None:
        """Stop everything this executor started (tasks still running are cancelled)."""


def make_executor(kind: str, *, workers: int | None = None, address: str | None = None) -> Executor:
    if kind not in EXECUTORS:
        raise OptionError(f"--executor must be one of {', '.join(EXECUTORS)}, not {kind!r}")
    if kind == "local":
        if address:
            raise OptionError("--ray-address needs --executor ray")
        return LocalExecutor(workers)
    return RayExecutor(address, workers)


# ------------------------------------------------------------------------------------------


class LocalExecutor(Executor):
    """A process pool (spawned workers, one library thread each) sized to the cores."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.slots = max(1, workers or os.cpu_count() or 1)
        self.exclusive_slots = 1
        self._pool: ProcessPoolExecutor | None = None
        self._job_bytes = b""
        self._alone: list[Task] = []  # tasks to re-run one at a time after a crash
        self._suspect: Task | None = None

    def start(self, job: Job) -> None:
        self._job_bytes = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        self._pool = self._new_pool()
        futures_wait([self._pool.submit(work.ping) for _ in range(self.slots)])

    def _new_pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        import multiprocessing as mp

        saved = {k: os.environ.get(k) for k in work.THREAD_ENV}
        os.environ.update(dict.fromkeys(work.THREAD_ENV, "1"))  # inherited by the workers
        try:
            return ProcessPoolExecutor(
                workers or self.slots,
                mp_context=mp.get_context("spawn"),
                initializer=work.init_worker,
                initargs=(self._job_bytes,),
            )
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, task: Task) -> Task:
        if self._suspect is not None or self._alone:
            self._alone.append(task)  # after a crash, one at a time until the culprit is known
            self._next_alone()
            return task
        return self._send(task)

    def _send(self, task: Task) -> Task:
        fn = work.run_step if task.kind == "step" else work.evaluate
        task.handle = self._pool.submit(fn, *task.args)
        task.started = time.perf_counter()
        return task

    def _next_alone(self) -> None:
        if self._suspect is None and self._alone:
            self._suspect = self._send(self._alone.pop(0))
        elif self._suspect is None and self._pool._max_workers < self.slots:
            self._pool.shutdown(wait=False)  # every suspect cleared: the full pool again
            self._pool = self._new_pool()

    def wait(self, tasks: Sequence[Task], timeout: float) -> list[Task]:
        live = [t for t in tasks if isinstance(t.handle, Future)]
        if not live:
            time.sleep(min(timeout, 0.05))
            return []
        done, _ = futures_wait([t.handle for t in live], timeout, FIRST_COMPLETED)
        finished = [t for t in live if t.handle in done]
        broken = [t for t in finished if isinstance(t.handle.exception(), BrokenProcessPool)]
        if broken:
            return self._recover(tasks, finished, broken)
        if self._suspect in finished:
            self._suspect = None
            self._next_alone()
        return finished

    def _recover(
        self, tasks: Sequence[Task], finished: list[Task], broken: list[Task]
    ) -> list[Task]:
        """The pool broke: the lone suspect crashed; or rebuild and re-run each one alone
        (in a one-worker pool, so a death while a suspect runs is that suspect's)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool(1)
        out = [t for t in finished if t not in broken]
        if self._suspect is not None and self._suspect in broken:
            self._suspect.extra["crashed"] = True
            out.append(self._suspect)
            self._suspect = None
        pending = [t for t in tasks if isinstance(t.handle, Future) and t not in out]
        for t in pending:
            t.handle = None
        self._alone = pending + [t for t in self._alone if t not in pending]
        self._next_alone()
        return out

    def result(self, task: Task) -> tuple[dict[str, Any], bytes | None]:
        if task.extra.get("crashed"):
            raise TaskCrashed("the worker process died while running it")
        value = task.handle.result()
        return value if task.kind == "step" else (value, None)

    def close(self) -> None:
        if self._pool is not None:
            procs = list((getattr(self._pool, "_processes", None) or {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:  # tasks still running (Ctrl-C): stop their workers now
                if p.is_alive():
                    p.terminate()
            self._pool = None


# ------------------------------------------------------------------------------------------


#: a task holds one CPU: its onnxruntime sessions (calibration, verification) start one
#: intra-op thread, not one per core of the machine (the local pool's initializer does the same)
WORKER_ENV = {"env_vars": {work.THREADS_ENV: "1"}}


class RayExecutor(Executor):
    """Ray tasks: on the cluster at ``address`` (``auto`` or ``HOST:PORT``), or on a local
    instance started here (``workers`` CPUs) and stopped by :meth:`close`."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.address = address
        self.workers = workers
        self._started = False
        self._job_ref: Any = None
        self._puts: dict[str, Any] = {}
        self._node_cpus = 1.0
        self._warming: list[Any] = []

    def start(self, job: Job) -> None:
        if not self.address:
            # a private instance on this machine: its traffic stays on the loopback interface
            # (read when Ray is imported)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray = _import_ray()
        self._connect(ray)
        resources = ray.cluster_resources()
        self.slots = max(1, int(resources.get("CPU", 1)))
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = [n["Resources"].get("CPU", 0) for n in nodes if n["Resources"].get("CPU", 0) > 0]
        self.exclusive_slots = max(1, len(cpus))
        self._node_cpus = min(cpus) if cpus else 1.0
        self._job_ref = ray.put(job)  # the model and the feeds: once, for every task
        self._step = ray.remote(num_returns=2, max_retries=0)(work.run_step)
        self._eval = ray.remote(max_retries=0)(work.evaluate)
        self._warm(ray, [n for n in nodes if n["Resources"].get("CPU", 0) > 0])

    def _warm(self, ray: Any, nodes: list[dict[str, Any]]) -> None:
        """One warm-up task per node, not waited for: while the root step runs on one node
        the others start their worker (0.8 s on the digits search's second node)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        warm = ray.remote(max_retries=0)(work.warm)
        self._warming = [
            warm.options(
                name="onnxopt-warm",
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=True),
            ).remote(self._job_ref)
            for n in nodes
        ]

    def _connect(self, ray: Any) -> None:
        if ray.is_initialized():
            return
        import logging as _logging

        if self.address:
            if self.address != "auto":
                _check_reachable(self.address)
            try:
                ray.init(
                    address=self.address,
                    logging_level=_logging.ERROR,
                    log_to_driver=False,
                    runtime_env=WORKER_ENV,
                )
            except Exception as e:  # noqa: BLE001 - Ray's errors vary by version
                raise OptionError(
                    f"--ray-address {self.address}: cannot join the Ray cluster ({first_line(e)})"
                ) from e
            return
        ray.init(
            num_cpus=self.workers or os.cpu_count(),
            include_dashboard=False,
            logging_level=_logging.ERROR,
            log_to_driver=False,
            runtime_env=WORKER_ENV,
        )
        self._started = True

    def submit(self, task: Task) -> Task:
        opts: dict[str, Any] = {"name": f"onnxopt-{task.kind}:{task.label}"[:120]}
        if task.exclusive:
            opts["num_cpus"] = self._node_cpus  # one full-rung evaluation per machine
        if task.kind == "step":
            task.handle = self._step.options(**opts).remote(*task.args, self._job_ref)
        else:
            task.handle = [self._eval.options(**opts).remote(*task.args, self._job_ref)]
        task.started = time.perf_counter()
        return task

    def wait(self, tasks: Sequence[Task], timeout: float) -> list[Task]:
        ray = _import_ray()
        if not tasks:
            time.sleep(min(timeout, 0.05))
            return []
        by_ref = {t.handle[0].hex(): t for t in tasks}
        ready, _ = ray.wait([t.handle[0] for t in tasks], num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait([t.handle[0] for t in tasks], num_returns=len(tasks), timeout=0)
            ready = more or ready
        return [by_ref[r.hex()] for r in ready]

    def result(self, task: Task) -> tuple[dict[str, Any], bytes | None]:
        ray = _import_ray()
        try:
            outcome = ray.get(task.handle[0])
            data = None
            if task.kind == "step" and outcome.get("status") == "kept":
                data = ray.get(task.handle[1])
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            raise TaskCrashed(first_line(e)) from e
        except ray.exceptions.RayTaskError as e:
            raise TaskCrashed(first_line(e)) from e
        return outcome, data

    def model_arg(self, path: Path, task: Task | None) -> Any:
        ray = _import_ray()
        if task is not None and task.kind == "step":
            return task.handle[1]  # the object the step's worker returned, not a copy
        key = str(path)
        if key not in self._puts:
            self._puts[key] = ray.put(Path(path).read_bytes())
        return self._puts[key]

    def describe(self) -> str:
        where = self.address or "a local Ray instance"
        return f"ray ({where}), {self.slots} CPUs on {self.exclusive_slots} node(s)"

    def close(self) -> None:
        ray = _import_ray()
        if self._started and ray.is_initialized():
            ray.shutdown()
        elif ray.is_initialized():
            ray.shutdown()  # disconnect this driver; the cluster keeps running
        self._started = False


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise OptionError("--executor ray needs Ray (pip install 'ray[default]')") from e
    return ray


def _check_reachable(address: str) -> None:
    """A one-line error, within CONNECT_TIMEOUT, when nothing answers at HOST:PORT."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OptionError(f"--ray-address {address!r}: expected 'auto' or HOST:PORT")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        raise OptionError(
            f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})"
        ) from e
