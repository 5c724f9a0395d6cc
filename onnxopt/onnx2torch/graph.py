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


#: ops with a body the interpreter runs (a Loop only with a constant trip count)
CONTROL_OPS = ("If", "Loop")


@dataclass
class Body:
    """A subgraph as the interpreter runs it: its nodes, formal inputs, outputs and its own
    initializers (outer names are read from the enclosing scope)."""

    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    initializers: list[onnx.TensorProto]


def nodes_of(g: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[Node]:
    """The graph's nodes in an executable order (unnamed ones named ``<op>_<index>``); an If's
    branches and a Loop's body become :class:`Body` attributes. ``outer``: names of enclosing
    scopes (for a body)."""
    return [
        Node(
            n.name or f"{n.op_type}_{i}",
            n.op_type,
            list(n.input),
            list(n.output),
            node_attrs(n, outer | _defined(g)),
        )
        for i, n in enumerate(toposort(g, outer))
    ]


def _defined(g: onnx.GraphProto) -> frozenset[str]:
    names = {v.name for v in g.input} | {t.name for t in g.initializer}
    return frozenset(names | {o for n in g.node for o in n.output})


def outer_reads(g: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define (its outer-scope inputs)."""
    defined = set(_defined(g))
    out: set[str] = set()
    for n in g.node:
        out.update(i for i in _reads(n) if i and i not in defined)
    return out


def _reads(n: onnx.NodeProto) -> list[str]:
    """What a node needs before it runs: its inputs and the outer names its bodies read."""
    out = list(n.input)
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.extend(outer_reads(a.g))
    return out


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


def node_attrs(node: onnx.NodeProto, scope: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A node's attributes as Python values (tensors as arrays, strings decoded, the bodies of
    If and Loop as :class:`Body`; ``scope``: the names visible to those bodies).

    Raises:
        ModelError: another op with a subgraph (Scan, ...), which the converter refuses.
    """
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.GraphProto) and node.op_type in CONTROL_OPS:
            v = Body(
                nodes_of(v, scope),
                [i.name for i in v.input],
                [o.name for o in v.output],
                list(v.initializer),
            )
        elif isinstance(v, onnx.GraphProto) or (
            isinstance(v, list) and v and isinstance(v[0], onnx.GraphProto)
        ):
            raise ModelError(
                f"node '{node.name}' ({node.op_type}) has a subgraph: the torch converter runs "
                "If (both branches) and Loop (constant trip count) bodies only"
            )
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


def toposort(g: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> list[onnx.NodeProto]:
    """Nodes in an executable order (exported graphs usually are already); a node with a body
    waits for the outer names its body reads."""
    known = {v.name for v in g.input} | {t.name for t in g.initializer} | {""} | set(outer)
    pending = list(g.node)
    order: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in known for i in _reads(n)):
                order.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in known})[:5]
            raise ModelError(f"graph has a cycle or undefined inputs: {missing}")
        pending = rest
    return order
