"""What the pruning tests share: run the pass on a tiny graph, read its channel groups, and look
at the result (weight shapes, attributes, constants); models are in :mod:`.models`, running and
comparing models in :mod:`tests.helpers`."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxopt.contract import PassContext, PassResult
from onnxopt.data import Feeds
from onnxopt.passes.prune import Prune
from onnxopt.passes.prune.groups import Analysis, analyze
from onnxopt.passes.prune.plan import prepare
from tests.helpers import run


def prune(model: onnx.ModelProto, x: np.ndarray, **opts: Any) -> PassResult:
    """Prune a tiny hand-made graph: no width rounding unless asked (its groups are narrower
    than the hardware step ``round_to="auto"`` picks)."""
    feeds = Feeds([{"x": x}], synthesized=True, source="test")
    o = {"importance": "l2", "round_to": 1, **opts}
    return Prune.from_options(o).run_model(model, PassContext(feeds=feeds))


def analyze_groups(model: onnx.ModelProto) -> tuple[Analysis, dict[tuple[str, ...], Any]]:
    """The channel analysis of ``model`` and its groups by sorted producers."""
    _, graph = prepare(model)
    a = analyze(graph)
    by_producer = {tuple(sorted(g.producers)): g for g in a.groups.values()}
    return a, by_producer


def assert_closed(model: onnx.ModelProto, producer: str, text: str) -> None:
    """The group ``producer`` starts is closed with a reason containing ``text``, noted too."""
    a, groups = analyze_groups(model)
    g = next(g for g in groups.values() if producer in g.producers)
    assert not g.prunable and any(text in r for r in g.closed), g.closed
    assert any(text in n for n in a.notes)


def member_kinds(g: Any) -> set:
    return {(m.node, m.kind, m.index, m.axis, m.expand, m.unit) for m in g.members}


def weight_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """The shape of each node's input 1 when it is an initializer, by node name."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    return {n.name: inits.get(n.input[1]) for n in model.graph.node if len(n.input) > 1}


def attr_of(model: onnx.ModelProto, node: str, name: str) -> int:
    n = next(n for n in model.graph.node if n.name == node)
    return next(a.i for a in n.attribute if a.name == name)


def const_of(model: onnx.ModelProto, node: str, index: int) -> list:
    """The initializer a node reads at input ``index``, as a list."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    n = next(n for n in model.graph.node if n.name == node)
    return inits[n.input[index]].tolist()


def check(model: onnx.ModelProto) -> None:
    """onnx's full checker and strict shape inference."""
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of ``model`` on input ``x`` (onnxruntime, optimizations off)."""
    return run(model, {"x": x})[0]


def rand(shape: list[int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and the outputs of Constant nodes, by name."""
    out = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            out[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return out
