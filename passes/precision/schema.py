"""What the half-precision passes read from a model: the half type, tensor element types
(shape inference, subgraphs included) and which input and output of a node may hold the half
type according to its operator schema (onnx's, and onnxruntime's for ``com.microsoft``)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from onnxopt.model import light_model

FLOAT = TensorProto.FLOAT


@dataclass(frozen=True)
class HalfType:
    """float16 or bfloat16: its ONNX element type, range and conversion."""

    name: str
    elem: int
    #: largest finite value
    max: float
    #: smallest positive normal value
    tiny: float

    @property
    def type_str(self) -> str:
        return f"tensor({self.name})"

    def numpy(self) -> np.dtype:
        if self.elem == TensorProto.BFLOAT16:
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(np.float16)

    def convert(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.float32).astype(self.numpy())

    def tensor(self, a: np.ndarray, name: str) -> onnx.TensorProto:
        """A TensorProto of ``a`` in this type (bfloat16 needs its raw bits)."""
        h = self.convert(a)
        t = onnx.TensorProto(name=name, data_type=self.elem, dims=list(h.shape))
        t.raw_data = h.tobytes()
        return t


FLOAT16 = HalfType("float16", TensorProto.FLOAT16, 65504.0, 2.0**-14)
BFLOAT16 = HalfType("bfloat16", TensorProto.BFLOAT16, 3.3895313892515355e38, 2.0**-126)


def graphs(g: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``g`` and every subgraph in it, outer first."""
    yield g
    for n in g.node:
        for sub in subgraphs(n):
            yield from graphs(sub)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def element_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name (0 for non-tensors: sequences, optionals, maps)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(light_model(model))
    except Exception:  # noqa: BLE001
        inferred = light_model(model)
    types: dict[str, int] = {}
    for src in (inferred.graph, model.graph):
        for g in graphs(src):
            for v in [*g.input, *g.value_info, *g.output]:
                if v.name not in types or not types[v.name]:
                    t = v.type
                    types[v.name] = t.tensor_type.elem_type if t.HasField("tensor_type") else 0
            for t in g.initializer:
                types.setdefault(t.name, t.data_type)
            for n in g.node:
                if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                    for a in n.attribute:
                        if a.type == onnx.AttributeProto.TENSOR:
                            types.setdefault(n.output[0], a.t.data_type)
                        elif a.name in ("value_float", "value_floats"):
                            types.setdefault(n.output[0], FLOAT)
    return types


def _ort_schemas() -> dict[tuple[str, str], list]:
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as c

        schemas = c.get_all_operator_schema()
    except Exception:  # noqa: BLE001
        return {}
    out: dict[tuple[str, str], list] = {}
    for s in schemas:
        if s.domain == "com.microsoft":
            out.setdefault((s.domain, s.name), []).append(s)
    return out


@functools.lru_cache(maxsize=1)
def _contrib() -> dict[tuple[str, str], list]:
    return _ort_schemas()


@functools.lru_cache(maxsize=4096)
def _schema(op: str, domain: str, version: int):
    if domain in ("", "ai.onnx"):
        try:
            return onnx.defs.get_schema(op, version, "")
        except Exception:  # noqa: BLE001
            return None
    found = [s for s in _contrib().get((domain, op), []) if s.since_version <= version]
    return max(found, key=lambda s: s.since_version) if found else None


def _allowed(schema, formal) -> frozenset[str]:
    type_str = getattr(formal, "type_str", None) or getattr(formal, "typeStr", "")
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return frozenset(c.allowed_type_strs)
    return frozenset([type_str])


def slot_types(
    node: onnx.NodeProto, opsets: dict[str, int]
) -> tuple[list[frozenset[str]], list[frozenset[str]]] | None:
    """The types each input and output of ``node`` may have (None: no schema known)."""
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = opsets.get(domain, 0)
    schema = _schema(node.op_type, domain, version)
    if schema is None:
        return None

    def per(formals, count: int) -> list[frozenset[str]]:
        if not formals:
            return [frozenset()] * count
        return [_allowed(schema, formals[min(i, len(formals) - 1)]) for i in range(count)]

    return per(list(schema.inputs), len(node.input)), per(list(schema.outputs), len(node.output))


def opsets_of(model: onnx.ModelProto) -> dict[str, int]:
    out = {o.domain or "": o.version for o in model.opset_import}
    if "" in out:
        out["ai.onnx"] = out[""]
    return out
