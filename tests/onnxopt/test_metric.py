"""Task metrics: loading ``module:function`` / ``file.py:function``, one-line errors naming the
callable, and the budget that compares scores."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import MetricError, OptionError
from onnxopt.metric import TaskMetric, load_metric
from onnxopt.verify import Budget, Comparison


def mean_of_y(runs, labels) -> float:
    return float(np.mean([r["y"].mean() for r in runs]))


def test_load_by_module_and_by_file(tmp_path) -> None:
    m = load_metric("tests.onnxopt.test_metric:mean_of_y")
    assert m([{"y": np.ones(3)}], None) == 1.0 and str(m) == "tests.onnxopt.test_metric:mean_of_y"
    f = tmp_path / "my_metric.py"
    f.write_text("def score(runs, labels):\n    return len(runs) * 10\n")
    assert load_metric(f"{f}:score")([{}, {}], None) == 20.0


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("nocolon", "give module:function"),
        ("no_such_module_q:f", "cannot import 'no_such_module_q'"),
        ("tests.onnxopt.test_metric:nope", "has no attribute 'nope'"),
        ("tests.onnxopt.test_metric:np", "is not callable"),
        ("/no/such/file.py:f", "no such file"),
    ],
)
def test_bad_names_are_one_line_option_errors(spec: str, why: str) -> None:
    with pytest.raises(OptionError, match=why):
        load_metric(spec)


def test_errors_inside_the_callable_name_it() -> None:
    def boom(runs, labels):
        raise ValueError("shapes differ\nsecond line")

    with pytest.raises(MetricError) as e:
        TaskMetric(boom, "pkg:boom")([], None)
    assert str(e.value) == "--metric pkg:boom: ValueError: shapes differ"
    with pytest.raises(MetricError, match="not a finite number"):
        TaskMetric(lambda runs, labels: float("nan"), "pkg:nan")([], None)


def test_budget_holds_the_metric_drop() -> None:
    b = Budget(min_cosine=None, metric=TaskMetric(mean_of_y, "m"), max_metric_drop=2.0)
    assert b.check(Comparison(), metric=(98.0, 96.5)).ok
    v = b.check(Comparison(), metric=(98.0, 95.0))
    assert not v.ok and "m 95 is 3 below the original's 98 (budget 2)" in v.reason
    assert "m drop<=2" in b.describe()
