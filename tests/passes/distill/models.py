"""Tiny teachers and students for the distillation tests (onnx.helper graphs, seeded
weights), their data and the KL divergence between two models' outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.data import Feeds
from onnxopt.runner import Runner

#: a short, fast training run
FAST = {"epochs": 15, "lr": 1e-2, "batch_size": 32, "temperature": 2.0}


def mlp(hidden: int, seed: int, *, classes: int = 5, softmax: bool = False) -> onnx.ModelProto:
    """x[N,16] -> Gemm -> Relu -> Gemm -> logits[N,classes] (optionally Softmax)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, 16)) / 4).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((classes, hidden)) / np.sqrt(hidden) * 2).astype(np.float32)
    b2 = np.zeros(classes, np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node(
            "Gemm",
            ["r", "fc2.weight", "fc2.bias"],
            ["z" if softmax else "logits"],
            transB=1,
            name="fc2",
        ),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1, name="sm"))
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(a, n)
            for a, n in [(w1, "fc1.weight"), (b1, "fc1.bias"), (w2, "fc2.weight"), (b2, "fc2.bias")]
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def data(n: int = 320, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)}


def kl(teacher: onnx.ModelProto, student: onnx.ModelProto, x: dict[str, np.ndarray]) -> float:
    r = Runner()
    t = r.run(teacher, Feeds([x]))[0]["logits"].astype(np.float64)
    s = r.run(student, Feeds([x]))[0]["logits"].astype(np.float64)
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    ls = s - s.max(1, keepdims=True)
    ls -= np.log(np.exp(ls).sum(1, keepdims=True))
    return float((pt * (np.log(pt) - ls)).sum(1).mean())


def embedding_classifier(dim: int, seed: int) -> onnx.ModelProto:
    """ids[N,6] (int64) -> Gather(table) -> ReduceMean -> Gemm -> logits[N,5]."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((20, dim)).astype(np.float32)
    w = rng.standard_normal((5, dim)).astype(np.float32)
    b = np.zeros(5, np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
            helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0, name="mean"),
            helper.make_node("Gemm", ["m", "w", "b"], ["logits"], transB=1, name="fc"),
        ],
        "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for a, n in [(table, "table"), (w, "w"), (b, "b")]],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m
