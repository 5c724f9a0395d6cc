"""quantize-dynamic: int8 weights, activations quantized at run time (no calibration data).

For ``Y = X·W (+ b)`` with a constant 2-D ``W`` (MatMul, or Gemm with transA=0, alpha=beta=1):
    ``(Xq, s_x, z_x) = DynamicQuantizeLinear(X)``  (uint8, per tensor, range of this batch)
    ``Y ≈ float(MatMulInteger(Xq, Wq, z_x, 0)) · (s_x · s_w) (+ b)``
with ``Wq`` int8 symmetric per output column (``s_w[n] = max_k |W[k, n]| / 127``). onnxruntime
fuses the pattern into DynamicQuantizeMatMul (MLAS u8s8 GEMM).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult, grouped_notes
from onnxopt.graph import const_value, node_names_unique

from .config import DynamicQuantizeConfig
from .qdq import WeightQ, quantize_weight, resolve_reduce_range, weight_params

logger = logging.getLogger(__name__)


class QuantizeDynamic(Pass):
    """Dynamic int8 quantization of MatMul/Gemm with constant weights (transformers),
    configured by a :class:`.config.DynamicQuantizeConfig`."""

    name = "quantize-dynamic"
    exact = False
    goal = "speed"
    summary = "int8 weights with dynamic activation quantization for MatMul/Gemm"
    tags = ("quantize",)
    subgraphs = True
    opset_wanted = 13
    opset_needed = 11  # DynamicQuantizeLinear

    config_class = DynamicQuantizeConfig
    config: DynamicQuantizeConfig

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        c = self.config
        reduce_range = resolve_reduce_range(c.reduce_range)
        exclude = set(c.exclude)
        node_names_unique(graph)
        notes: list[str] = []
        sites: list[str] = []
        for node in list(graph.nodes):
            if node.op not in ("MatMul", "Gemm") or node.name in exclude or node.op in exclude:
                continue
            why = self._eligible(node)
            if why:
                notes.append(why)
                continue
            if not ctx.allow(node.name):
                continue
            rewrite_dynamic(graph, node, c.per_channel, reduce_range)
            sites.append(node.name)
        notes = grouped_notes(notes)
        if not sites:
            return PassResult(False, 0, notes[:20])
        graph.cleanup()
        return PassResult(True, len(sites), notes[:20], sites=sites)

    @staticmethod
    def _eligible(node: gs.Node) -> str:
        w = const_value(node.inputs[1])
        if w is None:
            return f"{node.name}: second input is not a constant (activation × activation)"
        if w.dtype != np.float32 or w.ndim != 2:
            return f"{node.name}: weight is {w.dtype} of rank {w.ndim}, not a 2-D float32 matrix"
        if isinstance(node.inputs[0], gs.Constant):
            return f"{node.name}: input is a constant"
        if node.op == "Gemm":
            a = node.attrs
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                return f"{node.name}: Gemm with transA/alpha/beta is left float"
            if len(node.inputs) > 2 and node.inputs[2].name and const_value(node.inputs[2]) is None:
                return f"{node.name}: Gemm C is not a constant"
        return ""


def rewrite_dynamic(
    graph: gs.Graph,
    node: gs.Node,
    per_channel: bool,
    reduce_range: bool,
    learned: WeightQ | None = None,
) -> None:
    """Replace MatMul/Gemm ``node`` (eligible: see ``QuantizeDynamic._eligible``) by the dynamic
    int8 pattern of the module docstring, in place. ``learned``: its weight quantized
    beforehand (learned rounding, per output column), used instead of rounding to nearest."""
    x, y = node.inputs[0], node.outputs[0]
    w = np.asarray(const_value(node.inputs[1]), np.float32)
    bias = None
    if node.op == "Gemm":
        if node.attrs.get("transB", 0):
            w = w.T
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = np.asarray(const_value(node.inputs[2]), np.float32)
    axis = 1 if per_channel else None
    ws = weight_params(w, axis, reduce_range)
    transposed = node.op == "Gemm" and node.attrs.get("transB", 0)
    if (
        learned is not None
        and not transposed
        and learned.q.shape == w.shape
        and np.shape(learned.scale) == np.shape(ws)
        and learned.axis == axis
    ):
        wq, ws = learned.q, np.asarray(learned.scale, np.float32)
    else:
        wq = quantize_weight(w, ws, axis, reduce_range)
    p = node.name
    xq = gs.Variable(f"{p}_x_quantized", dtype=np.uint8)
    xs = gs.Variable(f"{p}_x_scale", dtype=np.float32)
    xz = gs.Variable(f"{p}_x_zero_point", dtype=np.uint8)
    acc = gs.Variable(f"{p}_int32", dtype=np.int32)
    accf = gs.Variable(f"{p}_int32_float", dtype=np.float32)
    scale = gs.Variable(f"{p}_scale", dtype=np.float32)
    wz = np.zeros(ws.shape, np.int8)
    new = [
        gs.Node(
            "DynamicQuantizeLinear",
            f"{p}_DynamicQuantizeLinear",
            inputs=[x],
            outputs=[xq, xs, xz],
        ),
        gs.Node(
            "MatMulInteger",
            f"{p}_MatMulInteger",
            inputs=[
                xq,
                gs.Constant(f"{p}_W_quantized", wq),
                xz,
                gs.Constant(f"{p}_W_zero_point", wz),
            ],
            outputs=[acc],
        ),
        gs.Node("Cast", f"{p}_Cast", attrs={"to": 1}, inputs=[acc], outputs=[accf]),
        gs.Node(
            "Mul",
            f"{p}_scale_Mul",
            inputs=[xs, gs.Constant(f"{p}_W_scale", ws)],
            outputs=[scale],
        ),
    ]
    out = y if bias is None else gs.Variable(f"{p}_nobias", dtype=np.float32)
    new.append(gs.Node("Mul", f"{p}_Mul", inputs=[accf, scale], outputs=[out]))
    if bias is not None:
        new.append(
            gs.Node(
                "Add",
                f"{p}_bias_Add",
                inputs=[out, gs.Constant(f"{p}_bias", bias)],
                outputs=[y],
            )
        )
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.extend(new)
