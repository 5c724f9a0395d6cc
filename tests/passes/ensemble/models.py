"""Tiny hand-made members for the ensemble tests (onnx.helper graphs, seeded weights), and
outputs by name."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.helpers import session


def linear(
    seed: int,
    *,
    opset: int = 17,
    inp: str = "x",
    out: str = "logits",
    din: int = 4,
    classes: int = 3,
    dtype: int = TensorProto.FLOAT,
    scale: float = 1.0,
    bias: bool = True,
    name: str = "member",
) -> onnx.ModelProto:
    """``out = Relu(x W + b) `` with the same internal names in every member (W, b, h)."""
    r = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    w = (r.standard_normal((din, classes)) * scale).astype(np_dtype)
    b = (r.standard_normal(classes) if bias else np.zeros(classes)).astype(np_dtype)
    g = helper.make_graph(
        [
            helper.make_node("Gemm", [inp, "W", "b"], ["h"], name="gemm"),
            helper.make_node("Relu", ["h"], [out], name="relu"),
        ],
        name,
        [helper.make_tensor_value_info(inp, dtype, ["N", din])],
        [helper.make_tensor_value_info(out, dtype, ["N", classes])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def with_preprocessing(seed: int, din: int = 4, classes: int = 3) -> onnx.ModelProto:
    """``Gemm(Mul(x, 0.5), W_seed)``: the Mul and its constant are the same in every member."""
    r = np.random.default_rng(seed)
    g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "half"], ["xs"], name="pre"),
            helper.make_node("Gemm", ["xs", "W", "b"], ["logits"], name="gemm"),
        ],
        "pre",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", din])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
            numpy_helper.from_array(r.standard_normal((din, classes)).astype(np.float32), "W"),
            numpy_helper.from_array(r.standard_normal(classes).astype(np.float32), "b"),
        ],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def slow(
    seed: int, din: int = 4, classes: int = 3, width: int = 384, depth: int = 24
) -> onnx.ModelProto:
    """A deliberately expensive member: ``depth`` MatMul+Tanh layers of ``width``."""
    r = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(r.standard_normal((din, width)).astype(np.float32), "W_in"),
        numpy_helper.from_array(
            (r.standard_normal((width, classes)) / np.sqrt(width)).astype(np.float32), "W_out"
        ),
    ]
    nodes = [helper.make_node("MatMul", ["x", "W_in"], ["h0"])]
    for i in range(depth):
        inits.append(
            numpy_helper.from_array(
                (r.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"W{i}"
            )
        )
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{depth}", "W_out"], ["logits"]))
    g = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", din])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output by name (``tests.helpers.run`` returns them as a list)."""
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds), strict=True))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
