"""What a model's graph says about its inputs, for synthesizing them (:mod:`onnxopt.synth`):
the sizes its constant weights pin, the value ranges of the integer inputs that index a table,
and fixed values for the inputs an op reads as a parameter (:mod:`onnxopt.synth_values`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxopt.data import InputSpec
from onnxopt.synth_values import NONZERO, value_for

#: the range of an integer input that indexes nothing
SMALL_RANGE = (0, 2)

#: ops that pass an integer tensor's values through unchanged (followed to find indexing ops)
PASS_THROUGH = frozenset(
    {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose"}
)

#: unary ops whose output has the input's shape (followed to find the op that pins a dim)
SAME_SHAPE = frozenset(
    {
        "Cast",
        "Identity",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Neg",
        "Abs",
        "Exp",
        "Log",
        "Sqrt",
        "Erf",
        "Softplus",
        "LeakyRelu",
        "Elu",
        "Selu",
        "HardSigmoid",
        "HardSwish",
        "Clip",
        "Dropout",
    }
)


def pinned_dims(model: onnx.ModelProto, specs: list[InputSpec]) -> dict[tuple[str, int], int]:
    """(input, axis) -> the size a direct reader (through same-shape unary ops) requires."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, t in enumerate(node.input):
            consumers.setdefault(t, []).append((node, i))
    consts = _constant_shapes(model)
    out: dict[tuple[str, int], int] = {}
    for s in specs:
        todo, seen = [s.name], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for node, i in consumers.get(t, []):
                if node.op_type in SAME_SHAPE and i == 0:
                    todo.extend(node.output[:1])
                    continue
                for axis, size in _pins(node, i, s.rank, consts).items():
                    if not isinstance(s.shape[axis], int) and size > 0:
                        out.setdefault((s.name, axis), size)
    return out


def _constant_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Shapes of the initializers and of the Constant nodes' tensors."""
    out = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = list(a.t.dims)
    return out


def _pins(
    node: onnx.NodeProto, i: int, rank: int, consts: Mapping[str, list[int]]
) -> dict[int, int]:
    """Axes of input ``i`` of ``node`` (of rank ``rank``) whose size a constant operand fixes."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    other = [consts.get(t) for t in node.input]
    op = node.op_type if node.domain in ("", "ai.onnx") else ""
    if op == "MatMul" and i == 0 and len(node.input) > 1 and other[1]:
        w = other[1]
        return {rank - 1: w[-2] if len(w) >= 2 else w[0]}
    if op == "Gemm" and i == 0 and other[1] and rank == 2:
        w = other[1]
        return {0 if attrs.get("transA", 0) else 1: w[1] if attrs.get("transB", 0) else w[0]}
    if op == "Conv" and i == 0 and other[1] and rank >= 3:
        return {1: other[1][1] * int(attrs.get("group", 1))}
    if op == "LayerNormalization" and i == 0 and other[1]:
        scale = other[1]
        return {rank - len(scale) + k: d for k, d in enumerate(scale)}
    if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
        c = other[1 - i]
        if c is not None and len(c) <= rank:
            return {rank - len(c) + k: d for k, d in enumerate(c) if d > 1}
    return {}


def index_ranges(
    model: onnx.ModelProto, names: Iterable[str]
) -> dict[str, tuple[tuple[int, int], str]]:
    """For each integer input, the value range its readers accept, with the reason."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, t in enumerate(node.input):
            consumers.setdefault(t, []).append((node, i))
    sizes = _static_sizes(model)
    out = {}
    for name in names:
        bound, why = None, ""
        for node, i in _readers(name, consumers):
            b = _index_bound(node, i, sizes)
            if b is not None and (bound is None or b < bound):
                bound, why = b, f"indexes {node.op_type} '{node.name or node.output[0]}' (size {b})"
        if bound:
            out[name] = ((0, bound), why)
        elif any((n.op_type, i) in NONZERO for n, i in _readers(name, consumers)):
            out[name] = ((1, 3), "a divisor (1 or 2)")
        else:
            out[name] = (SMALL_RANGE, "indexes nothing (0 or 1)")
    return out


def fixed_values(
    model: onnx.NodeProto, specs: list[InputSpec], dims: dict[str, list[int]]
) -> dict[str, tuple[np.ndarray, str]]:
    """Inputs that an op reads as a shape, axes, a count or a ratio, with a value valid for
    it (only static-shaped inputs: the value's size must not depend on the size set)."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, t in enumerate(node.input):
            consumers.setdefault(t, []).append((node, i))
    sizes = _static_sizes(model)
    out = {}
    for s in specs:
        if any(not isinstance(d, int) for d in s.shape) or s.dtype.kind not in "iufb":
            continue
        for node, i in _readers(s.name, consumers):
            value = value_for(node, i, sizes, s.dtype, dims[s.name])
            if value is not None:
                out[s.name] = (value, f"read by {node.op_type} as its input {i}")
                break
    return out


def _readers(
    name: str, consumers: Mapping[str, list[tuple[onnx.NodeProto, int]]]
) -> list[tuple[onnx.NodeProto, int]]:
    """The nodes that read ``name``'s values, through value-preserving ops."""
    out, todo, seen = [], [name], set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for node, i in consumers.get(t, []):
            if node.op_type in PASS_THROUGH and i == 0 and node.domain in ("", "ai.onnx"):
                todo.extend(node.output)
            else:
                out.append((node, i))
    return out


def _index_bound(node: onnx.NodeProto, i: int, sizes: Mapping[str, list[int]]) -> int | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Gather", "GatherElements") and i == 1:
        shape = sizes.get(node.input[0])
        axis = int(attrs.get("axis", 0))
        if shape and -len(shape) <= axis < len(shape) and shape[axis] > 0:
            return int(shape[axis])
    if node.op_type == "GatherND" and i == 1:
        shape = sizes.get(node.input[0])
        batch = int(attrs.get("batch_dims", 0))
        if shape and len(shape) > batch and shape[batch] > 0:
            return int(min(shape[batch:]))  # conservative: every indexed axis accepts it
    return None


def _static_sizes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of initializers and of values whose shape inference knows them."""
    from onnxopt.model import infer_shapes_light

    out: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
    try:
        inferred = infer_shapes_light(model)
    except Exception:
        inferred = model
    g = inferred.graph
    for v in list(g.input) + list(g.value_info):
        dims = v.type.tensor_type.shape.dim
        if v.type.HasField("tensor_type") and all(d.HasField("dim_value") for d in dims):
            out.setdefault(v.name, [int(d.dim_value) for d in dims])
    return out
