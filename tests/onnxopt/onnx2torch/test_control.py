"""If and Loop in the torch converter; what it refuses, with a clear message."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxopt.errors import ModelError, OnnxoptError
from onnxopt.onnx2torch import to_torch
from tests.helpers import run
from tests.onnxopt.test_subgraphs import if_model, loop_model


def test_if_runs_the_branch_its_condition_selects() -> None:
    m = if_model()
    mod = to_torch(m)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    for c in (True, False):
        got = mod(torch.from_numpy(x), torch.tensor(c))[0].detach().numpy()
        np.testing.assert_allclose(got, run(m, {"x": x, "c": np.array(c)})[0], atol=1e-4)


def test_loop_with_a_constant_trip_count() -> None:
    m = loop_model()
    mod = to_torch(m)
    x = np.arange(4, dtype=np.float32)
    got = [t.detach().numpy() for t in mod(torch.from_numpy(x))]
    for a, b in zip(got, run(m, {"x": x}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_loop_with_a_run_time_trip_count_is_refused() -> None:
    m = loop_model()
    del m.graph.initializer[2]  # "n"
    m.graph.input.append(onnx.helper.make_tensor_value_info("n", onnx.TensorProto.INT64, []))
    with pytest.raises(ModelError, match="trip count is computed at run time"):
        to_torch(m)


def test_scan_is_refused_by_name() -> None:
    m = loop_model()
    m.graph.node[1].op_type = "Scan"
    with pytest.raises(OnnxoptError, match="Scan"):
        to_torch(m)
