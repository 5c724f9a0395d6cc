"""Where a run's time goes (onnxopt.phases): exclusive seconds per phase, the recording
thread only, nested runs counted by the outer one too; a pipeline's report carries them."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np

from onnxopt import phases
from onnxopt.metric import TaskMetric
from onnxopt.pipeline import PassManager
from onnxopt.verify import Budget
from tests.onnxopt.test_pipeline import Scale, feeds, model


def test_nested_phases_count_once_each_and_other_is_the_rest() -> None:
    with phases.recording() as rec:
        with phases.phase(phases.CHECKING):
            time.sleep(0.02)
            with phases.phase(phases.METRIC):
                time.sleep(0.05)
        time.sleep(0.03)
    b = rec.breakdown()
    assert 0.05 <= b[phases.METRIC] < 0.09
    assert 0.02 <= b[phases.CHECKING] < 0.05  # its own time, without the metric's
    assert 0.03 <= b[phases.OTHER] < 0.07
    assert abs(sum(b.values()) - rec.seconds) < 0.005
    assert list(b) == [phases.CHECKING, phases.METRIC, phases.OTHER]  # the report's order
    assert rec.calls == {phases.CHECKING: 1, phases.METRIC: 1}
    assert phases.line(b, rec.calls).startswith("task metric 0.1 s (1 call)")


def test_other_threads_and_no_recorder_count_nothing() -> None:
    with phases.phase(phases.TIMING):  # no recorder: nothing happens
        pass
    with phases.recording() as rec:
        t = threading.Thread(target=lambda: phases.timed(phases.TIMING)(time.sleep)(0.03))
        t.start()
        t.join()
    assert phases.TIMING not in rec.breakdown()


def test_a_run_inside_a_phase_counts_for_the_outer_recorder_too() -> None:
    with phases.recording() as outer:
        with phases.phase(phases.CHECKING):
            with phases.recording() as inner:
                with phases.phase(phases.CALIBRATION):
                    time.sleep(0.04)
    assert inner.breakdown()[phases.CALIBRATION] >= 0.04
    b = outer.breakdown()
    assert b[phases.CALIBRATION] >= 0.04 and b[phases.CHECKING] < 0.02


def test_a_pipeline_reports_its_time_per_phase_with_the_task_metric() -> None:
    def slow_score(runs, labels):
        time.sleep(0.05)
        return float(np.mean([r["y"].mean() for r in runs]))

    data = feeds()
    data = replace(data, labels=[np.array([i]) for i in range(len(data.runs))])
    budget = Budget(min_cosine=None, metric=TaskMetric(slow_score, "t:s"), max_metric_drop=50.0)
    _, rep = PassManager([Scale(0.001)], budget=budget).run(model(), data)
    b = rep.time_breakdown
    assert b[phases.METRIC] >= 0.1  # the original's score and the candidate's
    assert b[phases.CHECKING] > 0 and b[phases.OTHER] >= 0
    assert abs(sum(b.values()) - rep.seconds) < 0.05
    assert rep.to_dict()["time_breakdown"] == b
    assert rep.time_calls[phases.METRIC] == 2 and "task metric" in phases.line(b)
