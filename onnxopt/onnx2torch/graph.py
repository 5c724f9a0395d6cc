"""The ONNX side of the converter, without torch: the nodes in an executable order with their
attributes as Python values, which initializers train, and ParameterDict-safe keys.

Trainable initializers are float, have more than one element and are not an operand: the
input slots in :data:`NON_TRAINABLE_SLOTS` (a Pow exponent, Clip bounds, BatchNormalization
statistics, shape and index operands) hold hyper-parameters, not weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.errors import ModelError

#: input slots that are operands (hyper-parameters) rather than weights: never trained
NON_TRAINABLE_SLOTS: dict[str, set[int]] = {
    "Pow": {1},
    "Clip": {1, 2},
    "BatchNormalization": {3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Reshape": {1},
    "Expand": {1},
    "Slice": {1, 2, 3, 4},
    "Range": {0, 1, 2},
}

FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
)


@dataclass
class OpEnv:
    """What an op function may know besides its inputs and attributes."""

    opset: int
    bn_mode: str = "eval"
    training: bool = False
    num_outputs: int = 1


@dataclass
class Node:
    """One node as the interpreter executes it."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]


def nodes_of(g: onnx.GraphProto) -> list[Node]:
    """The graph's nodes in an executable order (unnamed ones named ``<op>_<index>``)."""
    return [
        Node(n.name or f"{n.op_type}_{i}", n.op_type, list(n.input), list(n.output), node_attrs(n))
        for i, n in enumerate(toposort(g))
    ]


def sanitize(name: str, taken: set[str]) -> str:
    """A ParameterDict-safe key for ``name`` (no dots, unique within ``taken``)."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    if key[0].isdigit():
        key = "_" + key
    base, i = key, 1
    while key in taken:
        key = f"{base}_{i}"
        i += 1
    taken.add(key)
    return key


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (tensors as arrays, strings decoded).

    Raises:
        ModelError: the node has a subgraph (not supported).
    """
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, (onnx.GraphProto, list)) and v and isinstance(v[0], onnx.GraphProto):
            raise ModelError(f"node '{node.name}' ({node.op_type}) has a subgraph")
        elif isinstance(v, onnx.GraphProto):
            raise ModelError(f"node '{node.name}' ({node.op_type}) has a subgraph")
        out[a.name] = v
    return out


def trainable_names(model: onnx.ModelProto) -> set[str]:
    """The initializers to train by default (see the module docstring)."""
    blocked: set[str] = set()
    for n in model.graph.node:
        for slot in NON_TRAINABLE_SLOTS.get(n.op_type, ()):
            if slot < len(n.input):
                blocked.add(n.input[slot])
    out = set()
    for t in model.graph.initializer:
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        if t.data_type in FLOAT_TYPES and numel > 1 and t.name not in blocked:
            out.add(t.name)
    return out


def toposort(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an executable order (exported graphs usually are already)."""
    known = {v.name for v in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in n.input):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in known})[:5]
            raise ModelError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    return order
