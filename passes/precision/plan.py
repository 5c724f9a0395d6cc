"""Which nodes of a model run in half precision, and why the others stay float32.

Each node with a float32 input or output is decided once (subgraphs of If/Loop/Scan included):

1. it stays float32 with a reason when: the user names it (``block_nodes``); its op is on the
   block list (:mod:`.blocklist`); it has no known schema, or sequence/optional-typed slots;
   one of its float tensors leaves the half type's range on the calibration data; it reads a
   constant that the half type cannot hold; it is a Cast to an integer type, or does arithmetic
   on integers cast to float (shape and index computations: float16 holds integers exactly only
   up to 2,048); or the pipeline's bisection left it out (``ctx.allow``);
2. otherwise it converts: every float32 slot whose schema allows the half type takes it, the
   others stay float32 (Resize's ``scales``, LayerNormalization's ``Mean``).

Control-flow nodes keep float32 at their own slots; their bodies are decided node by node.
Ranges are measured for the main graph's tensors only: inside If/Loop/Scan bodies the block
list, the constant checks and the bisection stand guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.weights import array as tensor_array

from .blocklist import CONTROL_FLOW, blocked
from .config import HalfConfig
from .schema import FLOAT, HalfType, graphs, opsets_of, slot_types, subgraphs

#: a constant whose conversion loses more than this share of its norm stays float32
CONST_LOSS = 1e-2
INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.BOOL,
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
    }
)
BISECTION = (
    "left in float32 by the pipeline's bisection: the model failed verification with it in "
    "half precision"
)


@dataclass
class Plan:
    """The decisions: per converted node (by name) which input and output slots take the half
    type; per kept node its reason; the constants that must stay float32."""

    half: dict[str, tuple[list[bool], list[bool]]] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    bad_constants: dict[str, str] = field(default_factory=dict)
    sites: list[str] = field(default_factory=list)
    #: ``compute="weights"``: the constants stored in the half type (these are the sites)
    weights: list[str] = field(default_factory=list)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed or duplicate-named nodes (subgraphs too) a deterministic unique name."""
    seen: set[str] = set()
    for gi, g in enumerate(graphs(model.graph)):
        for i, n in enumerate(g.node):
            if not n.name or n.name in seen:
                base = n.name or n.op_type
                name = f"{base}_{i}" if gi == 0 else f"{base}_g{gi}_{i}"
                while name in seen:
                    name += "_"
                n.name = name
            seen.add(n.name)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every float32 initializer and Constant output of every graph, by name."""
    out: dict[str, np.ndarray] = {}
    for g in graphs(model.graph):
        for t in g.initializer:
            if t.data_type == FLOAT:
                out[t.name] = tensor_array(t)
        for n in g.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                a = n.attribute[0] if n.attribute else None
                if (
                    a is not None
                    and a.type == onnx.AttributeProto.TENSOR
                    and a.t.data_type == FLOAT
                ):
                    out[n.output[0]] = tensor_array(a.t)
                elif a is not None and a.name in ("value_float", "value_floats"):
                    out[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a), np.float32)
    return out


def constant_problem(value: np.ndarray, half: HalfType) -> str:
    """Why ``value`` cannot be held in ``half`` ("" when it can)."""
    v = np.asarray(value, np.float32)
    finite = v[np.isfinite(v)]
    if finite.size and float(np.max(np.abs(finite))) > half.max:
        return f"holds {float(np.max(np.abs(finite))):.3g}, beyond {half.name}'s range"
    norm = float(np.linalg.norm(finite)) if finite.size else 0.0
    if norm > 0:
        loss = float(np.linalg.norm(finite - half.convert(finite).astype(np.float32))) / norm
        if loss > CONST_LOSS:
            return (
                f"loses {loss:.0%} of its norm in {half.name} (values below its smallest "
                f"normal number {half.tiny:.2g})"
            )
    return ""


def integer_derived(model: onnx.ModelProto, types: dict[str, int]) -> set[str]:
    """Float tensors computed from integers cast to float (and constants) only."""
    derived: set[str] = set()
    consts = {t.name for g in graphs(model.graph) for t in g.initializer}
    for g in graphs(model.graph):
        for n in g.node:
            if n.op_type == "Constant":
                consts.update(n.output)
                continue
            floats = [i for i in n.input if i and types.get(i) == FLOAT]
            if n.op_type == "Cast":
                if n.input and types.get(n.input[0]) in INTEGER_TYPES:
                    derived.update(o for o in n.output if types.get(o) == FLOAT)
                continue
            if n.op_type in CONTROL_FLOW or not floats:
                continue
            if all(i in derived or i in consts for i in floats) and any(
                i in derived for i in floats
            ):
                derived.update(o for o in n.output if types.get(o) == FLOAT)
    return derived


class Planner:
    """Decides every node of ``model`` (see the module docstring)."""

    def __init__(self, model, config: HalfConfig, half: HalfType, types, ranges, ctx) -> None:
        self.model, self.c, self.half, self.types = model, config, half, types
        self.ranges = ranges or {}
        self.limit = half.max / config.headroom
        self.ctx = ctx
        self.opsets = opsets_of(model)
        self.derived = integer_derived(model, types)
        self.plan = Plan()
        self.values = constants(model)
        for name, value in self.values.items():
            why = constant_problem(value, half)
            if why:
                self.plan.bad_constants[name] = why

    def run(self) -> Plan:
        if self.c.compute == "weights":
            return self._weights()
        for g in graphs(self.model.graph):
            for n in g.node:
                self._node(n)
        return self.plan

    def _weights(self) -> Plan:
        """``compute="weights"``: the large float32 constants are the sites."""
        for name, value in self.values.items():
            if value.size < self.c.min_weight_elements or name in self.plan.bad_constants:
                continue
            if self.ctx.allow(name):
                self.plan.weights.append(name)
            else:
                self.plan.kept[name] = BISECTION
        self.plan.sites = list(self.plan.weights)
        return self.plan

    def _node(self, n: onnx.NodeProto) -> None:
        if n.op_type in CONTROL_FLOW and subgraphs(n):
            return  # float32 at its own slots; its bodies are decided node by node
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            return  # a constant: converted with its readers (see .rewrite)
        if n.op_type == "Cast" and _cast_is_boundary(n, self.types):
            return  # between float32 and another float type: a precision boundary already
        fin = [bool(i) and self.types.get(i) == FLOAT for i in n.input]
        fout = [self.types.get(o) == FLOAT for o in n.output]
        if not any(fin) and not any(fout):
            return
        why, slots = self._why(n, fin, fout)
        if not why and slots is not None:
            ins = [f and self.half.type_str in a for f, a in zip(fin, slots[0])]
            outs = [f and self.half.type_str in a for f, a in zip(fout, slots[1])]
            if not any(ins) and not any(outs):
                return  # its schema allows no half slot: nothing to convert
            if not self.ctx.allow(n.name):
                self.plan.kept[n.name] = BISECTION
                return
            self.plan.half[n.name] = (ins, outs)
            self.plan.sites.append(n.name)
        elif why:
            self.plan.kept[n.name] = why

    def _why(self, n: onnx.NodeProto, fin: list[bool], fout: list[bool]):
        c = self.c
        if n.name in c.block_nodes:
            return "in block_nodes", None
        why = blocked(n.op_type, c.block_ops, c.allow_ops)
        if why:
            return f"{n.op_type}: {why}", None
        slots = slot_types(n, self.opsets)
        if slots is None:
            return f"no schema for {n.domain or 'ai.onnx'}::{n.op_type}", None
        names = [i for i in n.input if i] + list(n.output)
        if any(self.types.get(x, 1) == 0 for x in names):
            return "sequence, map or optional values are left alone", None
        for x, f in zip(n.input, fin):
            if f and x in self.plan.bad_constants:
                return f"reads constant '{x}', which {self.plan.bad_constants[x]}", None
        if n.op_type == "ConstantOfShape":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            why = constant_problem(tensor_array(value), self.half) if value else ""
            if why:
                return f"its value {why}", None
        for x, f in [*zip(n.input, fin), *zip(n.output, fout)]:
            r = self.ranges.get(x) if f else None
            if r is not None and r > self.limit:
                return (
                    f"'{x}' reaches {r:.3g} on the calibration data (over {self.half.name}'s "
                    f"{self.half.max:.5g} / headroom {c.headroom:g})"
                ), None
        to = next((a.i for a in n.attribute if a.name == "to"), 0)
        if n.op_type == "Cast" and to in INTEGER_TYPES:
            return (
                f"Cast to an integer type: {self.half.name} holds integers exactly only to "
                f"{_exact_integers(self.half)}"
            ), None
        if any(o in self.derived for o in n.output):
            return (
                "arithmetic on integers cast to float (shape or index computation): "
                f"{self.half.name} holds integers exactly only to {_exact_integers(self.half)}"
            ), None
        return "", slots


def _exact_integers(half: HalfType) -> str:
    return "2,048" if half.elem == onnx.TensorProto.FLOAT16 else "256"


def _cast_is_boundary(n: onnx.NodeProto, types: dict[str, int]) -> bool:
    """A Cast from or to a float type other than float32 (a converted model's boundary)."""
    to = next((a.i for a in n.attribute if a.name == "to"), 0)
    src = types.get(n.input[0]) if n.input else 0
    floats = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
    return to in floats or src in floats
