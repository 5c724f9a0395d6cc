"""Quantization parameters and Q/DQ insertion.

Activations, uint8 asymmetric (default) over ``[lo, hi]`` widened to include 0:
    ``s = (hi - lo) / 255``,  ``zp = clip(round(-lo / s), 0, 255)``.
Activations, int8 symmetric: ``s = max(|lo|, |hi|) / 127``, ``zp = 0``.
Weights, int8 symmetric per output channel ``c`` (or per tensor):
    ``s_c = max|W_c| / 127`` (``/ 63`` with ``reduce_range``), ``W_q = clip(round(W / s_c))``.
Bias, int32: ``s_b = s_x · s_w``, ``b_q = round(b / s_b)``, ``zp = 0`` (Conv / Gemm bias input,
or the constant operand of the ``Add`` after a MatMul, which onnxruntime then fuses into QGemm).
Embedding tables, int8 symmetric per column, read by the Gather directly:
``Gather(T, ids) -> DequantizeLinear(Gather(T_q, ids), s, 0, axis=-1)``.
"""

from __future__ import annotations

import logging
import platform
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import provenance
from onnxopt.graph import const_value, is_graph_output

from .placement import Plan, quantized_consumer

logger = logging.getLogger(__name__)

INT32_MAX = 2**31 - 1


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """x86 with AVX-512 VNNI / AVX-VNNI (u8·s8 dot products without int16 saturation)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True  # ARM and others: no u8s8 saturation issue in MLAS
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


def resolve_reduce_range(setting: bool | str) -> bool:
    """7-bit weights or not: ``"auto"`` (the configs' default) is on where ``cpu_has_vnni`` is
    false, since u8·s8 products then saturate in int16."""
    return (not cpu_has_vnni()) if setting == "auto" else bool(setting)


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: type  # np.uint8 or np.int8

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)


def activation_params(lo: float, hi: float, activations: str = "uint8") -> QParams:
    """(scale, zero point) for a real range; 0 is always exactly representable."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if activations == "int8-sym":
        a = max(-lo, hi)
        scale = a / 127.0 if a > 0 else 1.0
        return QParams(float(np.float32(scale)), 0, np.int8)
    if hi - lo <= 0:
        return QParams(1.0, 0, np.uint8)
    scale = float(np.float32((hi - lo) / 255.0))
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return QParams(scale, zp, np.uint8)


def weight_params(w: np.ndarray, axis: int | None, reduce_range: bool = False) -> np.ndarray:
    """Symmetric int8 scales: a scalar (axis None) or one per slice along ``axis``."""
    qmax = 63.0 if reduce_range else 127.0
    if axis is None:
        a = np.abs(w).max(initial=0.0)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        a = np.abs(w).max(axis=red, initial=0.0)
    scale = np.where(a > 0, a / qmax, 1.0).astype(np.float32)
    return scale


def quantize_weight(
    w: np.ndarray, scale: np.ndarray, axis: int | None, reduce_range: bool = False
) -> np.ndarray:
    qmax = 63 if reduce_range else 127
    s = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
    return np.clip(np.round(w / s), -qmax, qmax).astype(np.int8)


def quantize_bias(
    b: np.ndarray, x_scale: float, w_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """int32 bias, its scale (x_scale·w_scale) and the number of saturated entries."""
    bs = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    bs = np.broadcast_to(bs, b.shape).astype(np.float32) if bs.ndim else bs
    q = np.round(b.astype(np.float64) / bs.astype(np.float64))
    sat = int((np.abs(q) > INT32_MAX).sum())
    return np.clip(q, -INT32_MAX, INT32_MAX).astype(np.int32), bs, sat


@dataclass(frozen=True)
class WeightQ:
    """A weight already quantized (learned rounding): int8 values, scales, per-channel axis."""

    q: np.ndarray
    scale: np.ndarray
    axis: int | None


class Inserter:
    """Applies a :class:`Plan` with given per-group parameters to a gs.Graph; ``weights``
    holds weights quantized beforehand (by node name), used instead of rounding to nearest;
    ``rounded``, when given, keeps the weights this inserter rounds to nearest (scales and int8
    values, by node name and axis) and reuses those an earlier build of the same model left
    there (:class:`.build.Builder` builds a model per candidate: all-MiniLM-L6-v2's word
    embeddings took 0.1 s to round in each of 12 builds)."""

    def __init__(
        self,
        graph: gs.Graph,
        plan: Plan,
        params: dict[int, QParams],
        *,
        reduce_range: bool = False,
        per_axis_ok: bool = True,
        weights: dict[str, WeightQ] | None = None,
        rounded: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self.params = params
        self.reduce_range = reduce_range
        self.per_axis_ok = per_axis_ok
        self.weights = weights or {}
        self.rounded = rounded
        self.notes: list[str] = []
        self.counts = {"activations": 0, "weights": 0, "biases": 0, "relu_folded": 0}
        self._names = set(graph.tensors().keys())

    def _name(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def _const(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self._name(base), np.array(value, copy=True, order="C"))

    def _pair(self, src: gs.Variable, p: QParams, base: str) -> gs.Variable:
        """Q/DQ of activation ``src``: they come from its producer (or, for a graph input,
        from the nodes that read it)."""
        sources = src.inputs[:1] or list(src.outputs)  # before the Q node reads src too
        s = self._const(base + "_scale", np.array(p.scale, np.float32))
        z = self._const(base + "_zero_point", np.array(p.zero_point, p.dtype))
        q = gs.Variable(self._name(base + "_quantized"), dtype=p.dtype, shape=src.shape)
        dq = gs.Variable(self._name(base + "_dequantized"), dtype=np.float32, shape=src.shape)
        pair = [
            gs.Node(
                "QuantizeLinear",
                self._name(base + "_QuantizeLinear"),
                inputs=[src, s, z],
                outputs=[q],
            ),
            gs.Node(
                "DequantizeLinear",
                self._name(base + "_DequantizeLinear"),
                inputs=[q, s, z],
                outputs=[dq],
            ),
        ]
        provenance.inherit(pair, sources)
        self.graph.nodes.extend(pair)
        return dq

    def _dq_const(
        self,
        base: str,
        qv: np.ndarray,
        scale: np.ndarray,
        axis: int | None,
        zp_dtype: type,
        owner: gs.Node | None = None,
    ) -> gs.Variable:
        s = self._const(base + "_scale", scale.astype(np.float32))
        z = self._const(base + "_zero_point", np.zeros(scale.shape, zp_dtype))
        qc = self._const(base + "_quantized", qv)
        out = gs.Variable(self._name(base + "_dequantized"), dtype=np.float32, shape=list(qv.shape))
        attrs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        dq = gs.Node(
            "DequantizeLinear",
            self._name(base + "_DequantizeLinear"),
            attrs=attrs,
            inputs=[qc, s, z],
            outputs=[out],
        )
        if owner is not None:  # a weight's DQ comes from the node that reads the weight
            provenance.inherit([dq], [owner])
        self.graph.nodes.append(dq)
        return out

    def apply(self) -> dict[str, int]:
        plan, tensors = self.plan, self.graph.tensors()
        q_names = set(plan.group)
        folded_ok: set[str] = set()
        for relu_name, y in plan.folds.items():
            p = self.params[plan.group[y]]
            if p.zero_point == p.qmin:
                folded_ok.add(y)
            else:
                self.notes.append(f"{relu_name}: kept (its range shares a group that is not >= 0)")
        nodes = {n.name: n for n in self.graph.nodes}
        for name in plan.tensors():
            p = self.params[plan.group[name]]
            logical = tensors.get(name)
            if name in plan.source and name in folded_ok:
                src = tensors[plan.source[name]]
            else:
                src = logical
            if src is None or logical is None:
                continue
            users = list(logical.outputs)
            dq = self._pair(src, p, name)
            self.counts["activations"] += 1
            every = name in plan.rewire_all
            for u in users:
                if every or quantized_consumer(u, plan, q_names):
                    for i, t in enumerate(u.inputs):
                        if t is logical:
                            u.inputs[i] = dq
            if name in plan.source and name in folded_ok:
                relu = logical.inputs[0] if logical.inputs else None
                if relu is not None and not is_graph_output(self.graph, logical):
                    relu.inputs.clear()
                    relu.outputs.clear()
                    self.counts["relu_folded"] += 1
        for site in plan.sites.values():
            self._weights(site)
        for name in plan.embeddings:
            self._embedding(nodes[name])
        return self.counts

    def _act_params(self, t: gs.Tensor) -> QParams | None:
        """Params of a DQ'd activation input (the DQ node's scale / zero point)."""
        prod = t.inputs[0] if t.inputs else None
        if prod is None or prod.op != "DequantizeLinear":
            return None
        return QParams(
            float(const_value(prod.inputs[1])),
            int(const_value(prod.inputs[2])),
            const_value(prod.inputs[2]).dtype.type,
        )

    def _weights(self, site) -> None:
        node = site.node
        if site.weight is None:
            return
        w = np.asarray(const_value(node.inputs[site.weight]), np.float32)
        axis = site.axis if self.per_axis_ok else None
        given = self.weights.get(node.name)
        if given is not None and given.q.shape == w.shape and given.axis == axis:
            ws, wq = given.scale, given.q
        else:
            ws, wq = self._rounded(("weight", node.name, axis), w, axis, self.reduce_range)
        node.inputs[site.weight] = self._dq_const(
            f"{node.name}_W", wq, ws, axis, np.int8, owner=node
        )
        self.counts["weights"] += 1
        if site.bias is None:
            return
        xp = self._act_params(node.inputs[site.acts[0]])
        if xp is None:
            self.notes.append(f"{node.name}: input not quantized; bias left float")
            return
        owner = site.bias_node if site.bias_node is not None else node
        b = np.asarray(const_value(owner.inputs[site.bias]), np.float32)
        bq, bs, sat = quantize_bias(b, xp.scale, ws)
        if sat:
            self.notes.append(f"{node.name}: {sat} bias values saturated int32")
        owner.inputs[site.bias] = self._dq_const(
            f"{node.name}_B", bq, bs if bs.ndim else bs, 0 if bs.ndim else None, np.int32, owner
        )
        self.counts["biases"] += 1

    def _rounded(
        self, key: tuple, w: np.ndarray, axis: int | None, reduce_range: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scales, int8 values) of ``w`` rounded to nearest, from ``self.rounded`` when an
        earlier build of the same model put them there."""
        hit = self.rounded.get(key) if self.rounded is not None else None
        if hit is not None and hit[1].shape == w.shape:
            return hit
        ws = weight_params(w, axis, reduce_range)
        out = ws, quantize_weight(w, ws, axis, reduce_range)
        if self.rounded is not None:
            self.rounded[key] = out
        return out

    def _embedding(self, node: gs.Node) -> None:
        """``Gather(T, ids) -> DQ(Gather(T_q, ids))``: the lookup reads the int8 table directly.

        Scales are per column (hidden channel, the output's last axis) for a 2-D table gathered
        on axis 0, else per tensor; a DQ of the whole table before the Gather would dequantize
        every row on every run.
        """
        w = np.asarray(const_value(node.inputs[0]), np.float32)
        per_col = self.per_axis_ok and w.ndim == 2 and node.attrs.get("axis", 0) == 0
        axis = 1 if per_col else None
        ws, wq = self._rounded(("table", node.name, axis), w, axis, False)
        node.inputs[0] = self._const(f"{node.name}_table_quantized", wq)
        self.counts["weights"] += 1
        y = node.outputs[0]
        yq = gs.Variable(self._name(y.name + "_quantized"), dtype=np.int8, shape=y.shape)
        node.outputs[0] = yq
        s = self._const(f"{node.name}_table_scale", ws)
        z = self._const(f"{node.name}_table_zero_point", np.zeros(ws.shape, np.int8))
        attrs = {"axis": -1} if per_col else {}
        dq = gs.Node(
            "DequantizeLinear",
            self._name(f"{node.name}_DequantizeLinear"),
            attrs=attrs,
            inputs=[yq, s, z],
            outputs=[y],
        )
        provenance.inherit([dq], [node])
        self.graph.nodes.append(dq)
