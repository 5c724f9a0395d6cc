"""What a model is made of: ops, parameters, MACs (multiply-accumulates) and bytes.

MACs count Conv, ConvTranspose, Gemm, MatMul and their quantized / contrib forms from static
shapes (inferred on the weight-free copy); a dynamic dimension counts as 1 and marks the count
incomplete.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.model import default_opset, infer_shapes_light, model_bytes


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str | None]

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass
class ModelSummary:
    """What a model is made of. ``flops`` counts multiply-accumulates (MACs)."""

    nodes: int
    params: int
    flops: int
    bytes: int
    opset: int
    ir_version: int
    ops: dict[str, int] = field(default_factory=dict)
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    flops_complete: bool = True

    @classmethod
    def of(cls, model: onnx.ModelProto, inferred: onnx.ModelProto | None = None) -> ModelSummary:
        """Summarize ``model``; ``inferred`` is its shape-inferred light copy, if already made."""
        ops = Counter(
            (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
            for n in model.graph.node
        )
        params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer)
        params += sum(_constant_node_params(n) for n in model.graph.node if n.op_type == "Constant")
        flops, complete = count_macs(model, inferred)
        init_names = {t.name for t in model.graph.initializer}
        return cls(
            nodes=len(model.graph.node),
            params=params,
            flops=flops,
            bytes=model_bytes(model),
            opset=default_opset(model),
            ir_version=model.ir_version,
            ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
            inputs=[_spec(v) for v in model.graph.input if v.name not in init_names],
            outputs=[_spec(v) for v in model.graph.output],
            flops_complete=complete,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _constant_node_params(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return int(np.prod(a.t.dims)) if len(a.t.dims) else 1
    return 0


def value_info_dims(v: onnx.ValueInfoProto) -> list[int | str | None]:
    """A value's dims: int (static), str (named dynamic), None (unknown); [] without a shape."""
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [
        int(d.dim_value)
        if d.HasField("dim_value")
        else (d.dim_param if d.HasField("dim_param") else None)
        for d in t.shape.dim
    ]


def _spec(v: onnx.ValueInfoProto) -> TensorSpec:
    t = v.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else "?"
    return TensorSpec(v.name, dtype, value_info_dims(v))


def _static_shapes(
    model: onnx.ModelProto, inferred: onnx.ModelProto | None = None
) -> dict[str, list[int] | None]:
    try:
        inferred = inferred if inferred is not None else infer_shapes_light(model)
    except Exception:
        inferred = model
    shapes: dict[str, list[int] | None] = {}
    g = inferred.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        shapes[v.name] = dims if all(d is not None for d in dims) else [d or 1 for d in dims]
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    return shapes


def count_macs(model: onnx.ModelProto, inferred: onnx.ModelProto | None = None) -> tuple[int, bool]:
    """MACs of Conv, ConvTranspose, Gemm and MatMul (dynamic dims count as 1).

    Returns:
        (macs, complete): complete is False when some shape was unknown.
    """
    shapes = _static_shapes(model, inferred)
    total, complete = 0, True
    for n in model.graph.node:
        if n.op_type not in (
            "Conv",
            "ConvTranspose",
            "Gemm",
            "MatMul",
            "QLinearConv",
            "QLinearMatMul",
            "MatMulInteger",
            "ConvInteger",
            "FusedMatMul",
            "Attention",
            "MatMulNBits",
        ):
            continue
        ins = [shapes.get(i) for i in n.input]
        outs = [shapes.get(o) for o in n.output]
        try:
            if n.op_type in ("Conv", "ConvInteger", "QLinearConv"):
                w = ins[3] if n.op_type == "QLinearConv" else ins[1]
                y = outs[0]
                # MACs = |Y| * (C_in/group * prod(kernel))
                total += int(np.prod(y)) * int(np.prod(w[1:]))
            elif n.op_type == "ConvTranspose":
                x, w = ins[0], ins[1]
                # each input element scatters into C_out/group * prod(kernel) outputs
                total += int(np.prod(x)) * int(np.prod(w[1:]))
            elif n.op_type == "Gemm":
                a = ins[0]
                trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
                k = a[0] if trans_a else a[1]
                total += int(np.prod(outs[0])) * int(k)
            elif n.op_type == "Attention":  # com.microsoft: QKV projection + two batched matmuls
                x, w = ins[0], ins[1]
                b, seq, hidden = int(x[0]), int(x[1]), int(x[2])
                total += b * seq * hidden * int(w[1]) + 2 * b * seq * seq * hidden
            else:
                a = ins[0]
                trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
                k = a[-2] if (n.op_type == "FusedMatMul" and trans_a) else a[-1]
                total += int(np.prod(outs[0])) * int(k)
        except (TypeError, IndexError):
            complete = False
    return total, complete
