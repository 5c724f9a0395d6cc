"""Shared pieces of the fusion passes: a Pass that applies an explicit list of rules, and
small helpers the rules share (constant creation, attribute reading, shape reasoning)."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import (
    const_value,
    is_empty_tensor,
    make_constant,
    to_graph,
    to_model,
    unique_name,
)
from onnxopt.graph_shapes import annotate_shapes
from onnxopt.passes.fusion.pattern import Const, Op, Rule, Var
from onnxopt.passes.fusion.sweep import apply_rules, rules_pass_result

logger = logging.getLogger(__name__)


class FusionPass(Pass):
    """A pass that applies ``rules()`` with :func:`onnxopt.passes.fusion.pattern.apply_rules`."""

    exact: ClassVar[bool] = True
    tags: ClassVar[tuple[str, ...]] = ("fusion",)
    subgraphs: ClassVar[bool] = True
    #: every rule in this pass needs ``--target onnxruntime``
    contrib_only: ClassVar[bool] = False

    def rules(self) -> list[Rule]:  # pragma: no cover
        raise NotImplementedError

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Annotate shapes (rules need ranks), then apply the rules to ``graph`` in place."""
        if self.contrib_only and ctx.target != "onnxruntime":
            return PassResult.unchanged(
                f"{self.name}: com.microsoft contrib ops need --target onnxruntime"
            )
        note = annotate_shapes(graph)
        result = rules_pass_result(apply_rules(graph, self.rules(), ctx))
        if note:
            result.notes.append(f"{self.name}: {note}")
        return result

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        """Convenience for callers holding a ModelProto: the result's model is the rewrite."""
        graph = to_graph(model)
        result = self.run(graph, ctx)
        if result.changed:
            result.model = to_model(graph, like=model)
        return result


def const(graph: gs.Graph, base: str, value: np.ndarray) -> gs.Constant:
    """A new initializer with a name unused in ``graph``."""
    return make_constant(unique_name(graph, base), value)


def var(graph: gs.Graph, base: str, dtype: Any = None, shape: Any = None) -> gs.Variable:
    """A new intermediate tensor with a name unused in ``graph``."""
    return gs.Variable(unique_name(graph, base), dtype=dtype, shape=shape)


def other_users(t: gs.Tensor, allowed: list[gs.Node]) -> list[gs.Node]:
    """Consumers of ``t`` that are not in ``allowed``."""
    ids = {id(n) for n in allowed}
    return [u for u in t.outputs if id(u) not in ids]


def shared_const_reason(t: gs.Tensor, node: gs.Node) -> str | None:
    """Why constant ``t`` cannot be rewritten for ``node`` alone (shared), else None.

    Rewrites never edit a constant in place: they write a new one. A shared vector (a bias:
    one dimension or fewer) is therefore no obstacle, as its copy is small; deduplicated biases
    are common (raw exports write every zero bias alike). A shared weight would be duplicated,
    growing the model, so it declines.
    """
    users = other_users(t, [node])
    if users and len(static_shape(t) or [0, 0]) > 1:
        return f"constant '{t.name}' is shared with {users[0].op} '{users[0].name}'"
    return None


def static_shape(t: gs.Tensor) -> list[int] | None:
    """The tensor's shape when every dimension is a known int."""
    shape = getattr(t, "shape", None)
    if shape is None:
        v = const_value(t)
        return list(v.shape) if v is not None else None
    if all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return [int(d) for d in shape]
    return None


def rank(t: gs.Tensor) -> int | None:
    shape = getattr(t, "shape", None)
    if shape is None:
        v = const_value(t)
        return v.ndim if v is not None else None
    return len(shape)


#: a Conv or a ConvTranspose with a constant weight (``x``, ``w``; the node ``conv``)
CONV_OR_TRANSPOSE = Op(
    ("Conv", "ConvTranspose"), Var("x"), Const("w"), name="conv", exact_arity=False
)


def out_channels(conv: gs.Node, w: np.ndarray) -> int:
    """Output channels of a Conv (``W[O, C/g, k...]``) or ConvTranspose (``W[C, O/g, k...]``)."""
    if conv.op == "Conv":
        return int(w.shape[0])
    return int(w.shape[1]) * int(conv.attrs.get("group", 1))


def scale_out_channels(conv: gs.Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w`` (float64) with each output channel ``o`` of the Conv / ConvTranspose scaled by
    ``s[o]``: axis 0 of a Conv's weight; for a ConvTranspose, axis 1 within each group."""
    w64 = w.astype(np.float64)
    if conv.op == "Conv":
        return w64 * s.reshape(-1, *([1] * (w.ndim - 1)))
    group = int(conv.attrs.get("group", 1))
    cin, cpg = w.shape[0], w.shape[1]
    w6 = w64.reshape(group, cin // group, cpg, *w.shape[2:])
    return (w6 * s.reshape(group, 1, cpg, *([1] * (w.ndim - 2)))).reshape(w.shape)


def conv_bias(conv: gs.Node, channels: int) -> np.ndarray | None:
    """A Conv's / ConvTranspose's bias in float64: zeros when it has none, None when it is not
    a constant."""
    if len(conv.inputs) > 2 and not is_empty_tensor(conv.inputs[2]):
        b = const_value(conv.inputs[2])
        return None if b is None else b.astype(np.float64)
    return np.zeros(channels, dtype=np.float64)


def conv_bias_reason(conv: gs.Node) -> str:
    """Why a rewrite cannot write a new bias for ``conv`` ("" when it can): its bias is not a
    constant, or is a constant it may not rewrite alone (:func:`shared_const_reason`)."""
    if len(conv.inputs) > 2 and not is_empty_tensor(conv.inputs[2]):
        if const_value(conv.inputs[2]) is None:
            return "conv bias is not a constant"
        return shared_const_reason(conv.inputs[2], conv) or ""
    return ""


def float_dtype(a: np.ndarray) -> bool:
    return np.issubdtype(np.asarray(a).dtype, np.floating)


def int_list(node: gs.Node, attr: str, input_index: int) -> list[int] | None:
    """An int-list parameter given as attribute (old opsets) or constant input (new opsets)."""
    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    if len(node.inputs) > input_index and node.inputs[input_index].name:
        v = const_value(node.inputs[input_index])
        if v is None:
            return None
        return [int(x) for x in np.asarray(v).reshape(-1)]
    return []
