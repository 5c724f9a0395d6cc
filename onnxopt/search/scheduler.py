"""The search: the trial tree, successive halving, the cache, progress.

Trials share prefixes, so the search runs a tree, not a list: a node is one step (a batch of
exact passes or one lossy pass with its options) applied to its parent's model. A node is
ready once its parent is done; its content key (the job, the parent's model hash, the step)
then finds it in the cache, or it runs, once even when several nodes share the key, and its
model goes to the cache and to its children. A step that fails fails every trial below it,
with its error; the others go on. ``computed["steps_cached"]`` counts the steps whose result
came from the cache (a resumed search, or an identical step of another trial).

Successive halving, two rungs: every candidate is first evaluated cheaply (accuracy on a
subset of the runs, a short latency bench), alongside the steps still running. The best
``max(min_full, ceil(n / eta))`` of them (those within every constraint first, then by Pareto
rank, then by latency) and the baseline are then evaluated in full, one per machine at a
time so timings do not share cores: every run, and latency in interleaved rounds with the
original. The front and the choice come from the full results. Identical models (a step that
changed nothing) are evaluated once.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.search import pareto
from onnxopt.search.cache import Cache, digest, step_key
from onnxopt.search.executors import Executor, Task, TaskCrashed
from onnxopt.search.space import Space, Step, Trial
from onnxopt.search.work import Job

logger = logging.getLogger(__name__)

#: how often (s) the progress sink hears from a running search
TICK = 0.5


@dataclass(eq=False)
class Node:
    """One step of the trial tree (the root is the original model)."""

    key: str  # the path from the root (which trials share this node)
    step: Step | None
    parent: Node | None
    state: str = "pending"  # pending | running | done | error
    ckey: str = ""  # the content key: the parent's model, the step (set once the parent is done)
    outcome: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    arg: Any = None
    digest: str = ""
    cached: bool = False


@dataclass(eq=False)
class TrialState:
    trial: Trial
    leaf: Node
    cheap: dict[str, Any] | None = None
    full: dict[str, Any] | None = None
    error: str = ""
    promoted: bool = False

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.full is not None:
            return "done"
        if self.cheap is not None:
            return "cheap done"
        return "building" if self.leaf.state != "done" else "evaluating"

    def point(self) -> dict[str, Any] | None:
        """The result the front uses (the full one), with the trial's identity."""
        if self.full is None or self.full.get("status") != "ok":
            return None
        return {"id": self.trial.id, "label": self.trial.label(), **self.full}


@dataclass
class SearchResult:
    trials: list[TrialState]
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    nodes: dict[str, Node]
    computed: dict[str, int]
    seconds: float
    executor: str


class Search:
    """Runs a :class:`~.space.Space` on an executor, with a cache.

    Args:
        space: the validated space.
        job: what every task needs (shipped once by the executor).
        executor: started by :meth:`run` and closed by the caller.
        cache: the search folder's cache (resumed or new).
        constraints: latency / size limits the choice must meet besides the budget.
        progress: ``callable(snapshot dict)``, called about every :data:`TICK` seconds.
    """

    def __init__(
        self,
        space: Space,
        job: Job,
        executor: Executor,
        cache: Cache,
        constraints: pareto.Constraints | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.space = space
        self.job = job
        self.executor = executor
        self.cache = cache
        self.constraints = constraints or pareto.Constraints()
        self.progress = progress
        self.nodes: dict[str, Node] = {}
        self.trials: list[TrialState] = []
        self.evals: dict[str, dict[str, Any] | None] = {}  # eval key -> record (None: running)
        self.computed = {"steps": 0, "evals": 0, "steps_cached": 0, "evals_cached": 0}
        self._durations: list[float] = []
        self._started = False
        self._last_tick = 0.0
        self.phase = "starting"

    # ----------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        t0 = time.perf_counter()
        self._build_tree()
        running: list[Task] = []
        try:
            self.phase = "cheap"
            self._loop(running, self._fill_cheap)
            promoted = self._promote()
            self.phase = "full"
            self._loop(running, lambda r: self._fill_full(r, promoted))
        finally:
            self.phase = "stopped"
            self._tick(running, force=True)
        points = [p for p in (t.point() for t in self.trials) if p is not None]
        unique = list({p["digest"]: p for p in reversed(points)}.values())[::-1]
        front = pareto.front(unique)
        chosen = pareto.choose(unique, self.constraints, self.space.settings.objective)
        return SearchResult(
            self.trials,
            front,
            chosen,
            self.nodes,
            dict(self.computed),
            time.perf_counter() - t0,
            self.executor.describe(),
        )

    def _loop(self, running: list[Task], fill: Callable[[list[Task]], None]) -> None:
        while True:
            fill(running)
            if not running:
                return
            for task in self.executor.wait(running, TICK):
                running.remove(task)
                self._durations.append(time.perf_counter() - task.started)
                self._finish(task)
            self._tick(running)

    # ----------------------------------------------------------------------------------------
    # The tree

    def _build_tree(self) -> None:
        j = self.job
        root = Node(j.key, None, None, state="done")
        root.path = self.cache.put_model(j.key, j.model)
        root.digest = hashlib.sha256(j.model).hexdigest()
        self.nodes[root.key] = root
        for trial in self.space.trials():
            node = root
            for step in trial.steps:
                key = step_key(node.key, step.canonical())
                if key not in self.nodes:
                    self.nodes[key] = self._node(key, step, node)
                node = self.nodes[key]
            self.trials.append(TrialState(trial, node))

    def _node(self, key: str, step: Step, parent: Node) -> Node:
        return Node(key, step, parent)

    def _from_cache(self, node: Node) -> bool:
        """Settle a ready node from the cache (a resumed search); False when not cached."""
        node.ckey = self._content_key(node)
        rec = self.cache.steps.get(node.ckey)
        if rec is None:
            return False
        node.cached = True
        self.computed["steps_cached"] += 1
        self._settle(node, rec)
        if node.state == "error":
            self._fail_below(node)
        return True

    def _content_key(self, node: Node) -> str:
        """``sha256(job, parent model, step)``: equal for any two nodes that apply the same
        step to the same model, whatever the path to it (a prune ratio that rounds to the
        same widths as another shares its children's results)."""
        return digest("step", self.job.key, node.parent.digest, node.step.canonical())

    def _settle(self, node: Node, outcome: dict[str, Any]) -> None:
        """Record a finished step's outcome on its node."""
        node.outcome = outcome
        parent = node.parent
        if outcome.get("status") == "error":
            node.state = "error"
        elif outcome.get("status") == "kept":
            node.state, node.path, node.digest = (
                "done",
                self.cache.model_path(node.ckey),
                outcome["digest"],
            )
        else:  # unchanged: the parent's model
            node.state, node.path, node.digest, node.arg = (
                "done",
                parent.path,
                parent.digest,
                parent.arg,
            )

    def _error_of(self, node: Node) -> str:
        n: Node | None = node
        while n is not None and n.outcome.get("status") != "error":
            n = n.parent
        if n is None or n.step is None:
            return "an earlier step failed"
        return f"{n.step.label()}: {n.outcome.get('error', 'failed')}"

    # ----------------------------------------------------------------------------------------
    # Filling the slots

    def _fill_cheap(self, running: list[Task]) -> None:
        free = self.executor.slots - len(running)
        busy = {t.extra["node"].ckey for t in running if t.kind == "step"}
        for node in self.nodes.values():  # parents come before their children
            if node.state != "pending" or node.parent.state != "done":
                continue
            if self._from_cache(node) or node.ckey in busy:
                continue  # known, or being computed for another node: the cache will have it
            if free > 0:
                running.append(self._submit(self._step_task(node)))
                busy.add(node.ckey)
                free -= 1
        for ts in self.trials:
            if free <= 0:
                return
            if ts.cheap is None and not ts.error and ts.leaf.state == "done":
                task = self._eval_task(ts, 0)
                if task is not None:
                    running.append(self._submit(task))
                    free -= 1

    def _fill_full(self, running: list[Task], promoted: list[TrialState]) -> None:
        free = self.executor.exclusive_slots - len(running)
        for ts in promoted:
            if free <= 0:
                return
            if ts.full is None and not ts.error:
                task = self._eval_task(ts, 1, exclusive=True)
                if task is not None:
                    running.append(self._submit(task))
                    free -= 1

    def _start(self) -> None:
        """Start the executor on first use (a resumed search with everything cached starts
        no worker)."""
        if not self._started:
            self.executor.start(self.job)
            self._started = True

    def _submit(self, task: Task) -> Task:
        return self.executor.submit(task)

    def _step_task(self, node: Node) -> Task:
        self._start()
        node.state = "running"
        parent = node.parent
        if parent.arg is None:
            parent.arg = self.executor.model_arg(parent.path, None)
        task = Task("step", (parent.arg, node.step.to_json()), node.step.label())
        task.extra["node"] = node
        return task

    def _eval_key(self, ts: TrialState, rung: int) -> str:
        j = self.job
        settings = f"{rung}|{j.subset_runs}|{j.short_bench}|{j.full_bench}|{j.threads}|{j.metric}"
        return digest("eval", ts.leaf.digest, settings, j.key)

    def _eval_task(self, ts: TrialState, rung: int, exclusive: bool = False) -> Task | None:
        """A task evaluating ``ts``'s model, or None when its result is known or running."""
        key = self._eval_key(ts, rung)
        if key in self.cache.evals and key not in self.evals:
            self.evals[key] = self.cache.evals[key]
            self.computed["evals_cached"] += 1
        if key in self.evals:
            rec = self.evals[key]
            if rec is not None:
                self._set_eval(ts, rung, rec)
            return None
        self._start()
        self.evals[key] = None
        leaf = ts.leaf
        if leaf.arg is None:
            leaf.arg = self.executor.model_arg(leaf.path, None)
        task = Task("eval", (leaf.arg, rung), f"{ts.trial.id} rung {rung}", exclusive=exclusive)
        task.extra["key"] = key
        return task

    def _set_eval(self, ts: TrialState, rung: int, rec: dict[str, Any]) -> None:
        rec = {**rec, "digest": ts.leaf.digest}
        if rung == 0:
            ts.cheap = rec
        else:
            ts.full = rec
        if rec.get("status") == "error":
            ts.error = f"evaluation: {rec.get('error')}"

    # ----------------------------------------------------------------------------------------
    # Results

    def _finish(self, task: Task) -> None:
        try:
            outcome, data = self.executor.result(task)
        except TaskCrashed as e:
            outcome, data = {"status": "error", "error": f"worker crashed: {e}"}, None
        if task.kind == "step":
            self._finish_step(task, outcome, data)
        else:
            self._finish_eval(task, outcome)

    def _finish_step(self, task: Task, outcome: dict[str, Any], data: bytes | None) -> None:
        node: Node = task.extra["node"]
        self.computed["steps"] += 1
        if outcome.get("status") == "kept":
            if data is None:
                outcome = {**outcome, "status": "error", "error": "the step returned no model"}
            else:
                self.cache.put_model(node.ckey, data)
                outcome["digest"] = hashlib.sha256(data).hexdigest()
        self.cache.put_step(node.ckey, outcome)
        self._settle(node, outcome)
        if node.state == "done" and outcome.get("status") == "kept":
            node.arg = self.executor.model_arg(node.path, task)
        if node.state == "error":
            self._fail_below(node)

    def _fail_below(self, node: Node) -> None:
        for n in self.nodes.values():
            p = n.parent
            while p is not None and p is not node:
                p = p.parent
            if p is node and n.state == "pending":
                n.state = "error"
        for ts in self.trials:
            if ts.leaf.state == "error" and not ts.error:
                ts.error = self._error_of(ts.leaf)

    def _finish_eval(self, task: Task, outcome: dict[str, Any]) -> None:
        key = task.extra["key"]
        self.computed["evals"] += 1
        self.evals[key] = outcome
        self.cache.put_eval(key, outcome)
        rung = task.args[1]
        for ts in self.trials:
            if ts.leaf.state == "done" and self._eval_key(ts, rung) == key:
                self._set_eval(ts, rung, outcome)

    def _promote(self) -> list[TrialState]:
        """The trials verified in full: the most promising cheap results, and the baseline."""
        seen: dict[str, TrialState] = {}
        for ts in self.trials:
            if ts.cheap is not None and ts.cheap.get("status") == "ok":
                seen.setdefault(ts.leaf.digest, ts)
        points = [{**ts.cheap, "ts": ts} for ts in seen.values()]
        s = self.space.settings
        k = max(s.min_full, math.ceil(len(points) / s.eta))
        chosen = [p["ts"] for p in pareto.promote(points, k, self.constraints)]
        baseline = next((ts for ts in self.trials if all(st.exact for st in ts.trial.steps)), None)
        if baseline is not None and baseline.cheap is not None and baseline not in chosen:
            chosen.append(baseline)
        digests = {ts.leaf.digest for ts in chosen}
        for ts in self.trials:
            ts.promoted = ts.leaf.digest in digests and ts.cheap is not None
        return chosen

    # ----------------------------------------------------------------------------------------
    # Progress

    def _tick(self, running: list[Task], force: bool = False) -> None:
        now = time.perf_counter()
        if self.progress is None or (not force and now - self._last_tick < TICK):
            return
        self._last_tick = now
        self.progress(self.snapshot(running))

    def snapshot(self, running: list[Task]) -> dict[str, Any]:
        """What a progress display shows: counts, what runs, the best so far, time left."""
        done = sum(ts.status in ("done", "cheap done", "error") for ts in self.trials)
        steps_left = sum(n.state in ("pending", "running") for n in self.nodes.values())
        evals_left = sum(ts.cheap is None and not ts.error for ts in self.trials)
        full_left = sum(ts.promoted and ts.full is None and not ts.error for ts in self.trials)
        if self.phase == "cheap":
            full_left = max(
                self.space.settings.min_full, math.ceil(len(self.trials) / self.space.settings.eta)
            )
        avg = sum(self._durations) / len(self._durations) if self._durations else None
        eta = None
        if avg is not None:
            eta = (steps_left + evals_left) * avg / self.executor.slots
            eta += full_left * (self.job.full_bench * 2 + avg) / self.executor.exclusive_slots
        return {
            "phase": self.phase,
            "trials": len(self.trials),
            "done": done,
            "failed": sum(bool(ts.error) for ts in self.trials),
            "running": [t.label for t in running],
            "best": self._best_so_far(),
            "eta_s": eta,
            "computed": dict(self.computed),
        }

    def _best_so_far(self) -> dict[str, Any] | None:
        points = []
        for ts in self.trials:
            rec = ts.full if ts.full is not None else ts.cheap
            if rec is not None and rec.get("status") == "ok":
                points.append({"id": ts.trial.id, "label": ts.trial.label(), **rec})
        return pareto.choose(points, self.constraints, self.space.settings.objective)
