"""The judge of quantized candidates (fallback.py): the budget, accuracy and a task metric;
whole-model SQNR."""

from __future__ import annotations

import math

import numpy as np

from onnxopt.data import Feeds
from onnxopt.metric import TaskMetric
from onnxopt.passes.quantize.fallback import Judge, sqnr_db
from onnxopt.runner import Runner
from onnxopt.verify import Budget
from tests.helpers import parse

SCALE = """
<ir_version: 8, opset_import: ["": 17]>
g (float[4,3] x) => (float[4,3] y) {
    y = Mul (x, k)
}
"""


def _scaled(k: float):
    return parse(SCALE, {"k": np.array(k, np.float32)})


def _mean_score(runs, labels) -> float:
    return float(np.mean([r["y"].mean() for r in runs]))


def test_judge_checks_the_task_metric() -> None:
    feeds = Feeds([{"x": np.ones((4, 3), np.float32)} for _ in range(3)])
    runner = Runner()
    reference = runner.run(_scaled(1.0), feeds)
    budget = Budget(min_cosine=None, metric=TaskMetric(_mean_score, "mean"), max_metric_drop=0.1)
    judge = Judge(runner, feeds, reference, budget)
    ok, why, head = judge.score(_scaled(0.95))
    assert ok and math.isclose(head, 0.95, rel_tol=1e-6)
    ok, why, head = judge.score(_scaled(0.8))
    assert not ok and "mean 0.8 is 0.2 below the original's 1" in why
    assert judge.evaluations == 2


def test_sqnr() -> None:
    a = [{"y": np.ones(4, np.float32)}]
    assert sqnr_db(a, a) == math.inf
    b = [{"y": np.full(4, 1.1, np.float32)}]
    assert math.isclose(sqnr_db(a, b), 20.0, rel_tol=1e-4)


class _Spy(Runner):
    """A Runner that records the optimization level of every run."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: list[bool] = []

    def run(self, model, feeds, *, optimized: bool = False):
        self.levels.append(optimized)
        return super().run(model, feeds, optimized=optimized)


def test_judge_holds_the_candidate_deployed_then_literal() -> None:
    """A candidate over budget is refused on the deployed run alone (the cheap one for a QDQ
    model); one within it is also checked as the literal graph, as the verifier will."""
    feeds = Feeds([{"x": np.full((4, 3), i + 1.0, np.float32)} for i in range(3)])
    runner = _Spy()
    reference = runner.run(_scaled(1.0), feeds)
    budget = Budget(min_cosine=None, metric=TaskMetric(_mean_score, "mean"), max_metric_drop=0.1)
    judge = Judge(runner, feeds, reference, budget)
    runner.levels.clear()
    ok, why, _ = judge.score(_scaled(0.8))
    assert not ok and "optimizations on" in why and runner.levels == [True]
    runner.levels.clear()
    ok, _, _ = judge.score(_scaled(0.99))
    assert ok and runner.levels == [True, False]
    assert [h["ok"] for h in judge.history] == [False, True]
    # scored on the literal graph alone (the search after a refused confirmation): its row
    ok, _, _ = judge.literal_score(_scaled(0.97), "3 in float")
    assert ok and [(h["label"], h["ok"]) for h in judge.history][-1] == ("3 in float", True)
    ok, _, _ = judge.literal_score(_scaled(0.5), "3 in float")  # a recorded one: marked
    assert not ok and len(judge.history) == 3 and not judge.history[-1]["ok"]


def test_judge_wants_the_cosine_budget_on_each_half_of_the_runs() -> None:
    """A candidate within the cosine budget on the pooled runs but not on one half of them is
    refused (it sits within sampling noise of the budget); one within it on both passes."""
    rng = np.random.default_rng(0)
    feeds = Feeds([{"x": rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(16)])
    runner = Runner()
    reference = runner.run(_scaled(1.0), feeds)
    judge = Judge(runner, feeds, reference, Budget(min_cosine=0.99))

    def outputs(level: float) -> list[dict[str, np.ndarray]]:
        """The reference with noise on the first half of the runs only."""
        out = [dict(r) for r in reference]
        for r in out[:8]:
            r["y"] = r["y"] + level * rng.standard_normal(r["y"].shape).astype(np.float32)
        return out

    ok, why, head, *_ = judge._verdict(outputs(0.16))
    assert head >= 0.99 and not ok and "first half" in why
    ok, why, head, *_ = judge._verdict(outputs(0.05))
    assert ok, why


def test_the_halves_cosines_need_no_second_comparison(monkeypatch) -> None:
    """The halves' cosines come from the pooled comparison's per-run dot products: one
    comparison a verdict, with the same verdicts as comparing each half again."""
    from onnxopt.passes.quantize import fallback

    rng = np.random.default_rng(1)
    feeds = Feeds([{"x": rng.standard_normal((4, 3)).astype(np.float32)} for _ in range(16)])
    runner = Runner()
    reference = runner.run(_scaled(1.0), feeds)
    judge = Judge(runner, feeds, reference, Budget(min_cosine=0.99))
    calls: list[int] = []
    real = fallback.compare
    monkeypatch.setattr(fallback, "compare", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = [dict(r) for r in reference]
    for r in out[8:]:  # noise on the second half only
        r["y"] = r["y"] + 0.16 * rng.standard_normal(r["y"].shape).astype(np.float32)
    ok, why, head, *_ = judge._verdict(out)
    assert not ok and "second half" in why and calls == [1]
    assert real(reference[8:], out[8:]).cosine < 0.99 <= head
