"""Runner: an output whose shape contradicts the model's declaration is a one-line ModelError
(onnxruntime only warns, and reports the inferred shape as if it were declared)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Feeds
from onnxopt.errors import ModelError
from onnxopt.runner import Runner, shape_disagrees
from tests.helpers import parse

HDR = '<ir_version: 8, opset_import: ["": 17]>'


def test_declared_output_shape_is_checked_on_every_run():
    m = parse(HDR + "g (float[2,N] x) => (float[2,3] y) { y = Relu(x) }")
    runner = Runner(quiet=True)
    assert runner.run(m, Feeds([{"x": np.ones((2, 3), np.float32)}]))[0]["y"].shape == (2, 3)
    with pytest.raises(
        ModelError, match=r"'y' is declared \[2, 3\] but the model computes \[2, 5\]"
    ):
        runner.run(m, Feeds([{"x": np.ones((2, 5), np.float32)}]))


def test_shape_disagrees_reads_only_positive_static_dims():
    a = np.zeros((2, 5))
    assert shape_disagrees([2, None], a) == ""
    assert shape_disagrees([0, 5], a) == ""  # 0: "unknown" in old exporters
    assert "declared [2, 4]" in shape_disagrees([2, 4], a)
    assert "declared [2]" in shape_disagrees([2], a)
    assert shape_disagrees(None, a) == ""


def test_a_search_worker_thread_cap_applies_where_the_count_was_left_to_onnxruntime(monkeypatch):
    """``$ONNXOPT_THREADS`` (set by the search's workers, which hold one CPU each) caps the
    sessions that leave the count at onnxruntime's default; an explicit count is kept."""
    m = parse(HDR + "g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }")

    def threads(runner: Runner) -> int:
        return runner.session(m).get_session_options().intra_op_num_threads

    monkeypatch.delenv("ONNXOPT_THREADS", raising=False)
    assert threads(Runner(quiet=True)) == 0
    monkeypatch.setenv("ONNXOPT_THREADS", "1")
    assert threads(Runner(quiet=True)) == 1
    assert threads(Runner(quiet=True, threads=2)) == 2
