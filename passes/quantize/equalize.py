"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019): exact in float.

For two layers ``y = B·f(A·x + a) + b`` with a positive-homogeneous ``f`` between them
(``f(x/s) = f(x)/s`` for ``s > 0``: none, Relu, LeakyRelu, PRelu), scaling output channel ``i``
of ``A`` by ``1/s_i`` and input channel ``i`` of ``B`` by ``s_i`` leaves ``y`` unchanged:

    ``A'_i = A_i / s_i``,  ``a'_i = a_i / s_i``,  ``B'_{:,i} = B_{:,i}·s_i``

With ``r1_i = max|A_i|`` and ``r2_i = max|B_{:,i}|``, ``s_i = √(r1_i / r2_i)`` makes both ranges
``√(r1_i·r2_i)``: channels whose weights span very different ranges (depthwise convolutions
after BatchNorm folding) share one per-tensor scale far better. Chains of three or more layers
are equalized pair by pair, in a few sweeps.

Layers: Conv (``B`` may be depthwise: its input channel ``i`` is its output channel ``i``),
Gemm and MatMul with constant weights (a MatMul's bias is the constant ``Add`` after it).
``Clip`` (ReLU6) is not positive-homogeneous (``clip(x/s, 0, 6) ≠ clip(x, 0, 6)/s``): with
``clip="relu"`` its upper bound is dropped (AIMET's choice; lossy, judged by the budget),
otherwise the pair is left alone and the notes say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.weights import array as tensor_array

logger = logging.getLogger(__name__)

HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
EPS = 1e-8


@dataclass
class Pair:
    a: onnx.NodeProto
    b: onnx.NodeProto
    a_bias: tuple[onnx.NodeProto, int] | None  # (node holding A's bias, input index)
    clip: onnx.NodeProto | None = None


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        self.outputs = {o.name for o in g.output}

    def only_user(self, tensor: str) -> onnx.NodeProto | None:
        u = self.users.get(tensor, [])
        return u[0] if len(u) == 1 and tensor not in self.outputs else None

    def weight(self, node: onnx.NodeProto) -> np.ndarray | None:
        if len(node.input) < 2 or node.input[1] not in self.inits:
            return None
        return tensor_array(self.inits[node.input[1]])

    def set(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Write ``value`` into ``node.input[index]`` (a fresh initializer if it is shared)."""
        name = node.input[index]
        t = numpy_helper.from_array(value.astype(np.float32), name)
        if len(self.users.get(name, [])) == 1:
            self.inits[name].CopyFrom(t)
            return
        fresh = f"{name}_equalized_{node.name}"
        t.name = fresh
        self.g.initializer.append(t)
        self.inits[fresh] = self.g.initializer[-1]
        self.users.setdefault(fresh, []).append(node)
        self.users[name].remove(node)
        node.input[index] = fresh


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _out_axis(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    """Axis of ``w`` holding ``node``'s output channels."""
    if node.op_type == "Conv" and _attr(node, "group", 1) in (1, w.shape[0]):
        return 0
    if node.op_type == "Gemm" and w.ndim == 2:
        return 0 if _attr(node, "transB", 0) else 1
    if node.op_type == "MatMul" and w.ndim == 2:
        return 1
    return None


def _in_axis(node: onnx.NodeProto, w: np.ndarray) -> int | None:
    """Axis of ``w`` holding ``node``'s input channels (a depthwise Conv: its output axis)."""
    if node.op_type == "Conv":
        g = _attr(node, "group", 1)
        if g == 1:
            return 1
        return 0 if (w.shape[1] == 1 and g == w.shape[0]) else None
    if node.op_type == "Gemm" and w.ndim == 2 and not _attr(node, "transA", 0):
        return 1 if _attr(node, "transB", 0) else 0
    if node.op_type == "MatMul" and w.ndim == 2:
        return 0
    return None


def find_pairs(
    model: onnx.ModelProto, names: set[str] | None, clip: str
) -> tuple[list[Pair], list[str]]:
    """Equalizable (A, B) pairs (both named in ``names`` when given) and why others are not."""
    G = _Graph(model)
    pairs, notes = [], []
    for a in model.graph.node:
        if a.op_type not in ("Conv", "Gemm", "MatMul") or (names and a.name not in names):
            continue
        wa = G.weight(a)
        if wa is None or _out_axis(a, wa) is None:
            continue
        t, bias = a.output[0], None
        if a.op_type in ("Conv", "Gemm") and len(a.input) > 2 and a.input[2]:
            if a.input[2] not in G.inits:
                continue
            bias = (a, 2)
        nxt = G.only_user(t)
        if a.op_type == "MatMul" and nxt is not None and nxt.op_type == "Add":
            k = 1 if nxt.input[0] == t else 0
            if nxt.input[k] in G.inits and tensor_array(G.inits[nxt.input[k]]).ndim == 1:
                bias, t, nxt = (nxt, k), nxt.output[0], G.only_user(nxt.output[0])
        act = None
        if nxt is not None and nxt.op_type in (*HOMOGENEOUS, "Clip"):
            act, t, nxt = nxt, nxt.output[0], G.only_user(nxt.output[0])
        if nxt is None or nxt.op_type not in ("Conv", "Gemm", "MatMul") or nxt.input[0] != t:
            continue
        if names and nxt.name not in names:
            continue
        wb = G.weight(nxt)
        if wb is None or _in_axis(nxt, wb) is None:
            continue
        if act is not None and act.op_type == "Clip" and clip != "relu":
            notes.append(
                f"{a.name} -> {nxt.name}: Clip between them is not scale-invariant; not equalized"
            )
            continue
        if act is not None and act.op_type == "PRelu":
            slope = G.inits.get(act.input[1])
            if slope is None:
                continue
        pairs.append(Pair(a, nxt, bias, act if act is not None and act.op_type == "Clip" else None))
    return pairs, notes


def equalize(
    model: onnx.ModelProto, names: set[str] | None = None, *, clip: str = "skip", sweeps: int = 4
) -> tuple[int, list[str]]:
    """Equalize every pair of :func:`find_pairs` in ``model`` (in place). Returns (pairs, notes)."""
    pairs, notes = find_pairs(model, names, clip)
    if not pairs:
        return 0, notes
    G = _Graph(model)
    for _ in range(sweeps):
        for p in pairs:
            _equalize_pair(G, p)
    for p in pairs:
        if p.clip is not None:
            _drop_upper_bound(G, p.clip)
    notes.append(f"cross-layer equalization: {len(pairs)} layer pairs")
    return len(pairs), notes


def _equalize_pair(G: _Graph, p: Pair) -> None:
    wa, wb = G.weight(p.a).astype(np.float64), G.weight(p.b).astype(np.float64)
    oa, ib = _out_axis(p.a, wa), _in_axis(p.b, wb)
    r1 = np.abs(np.moveaxis(wa, oa, 0)).reshape(wa.shape[oa], -1).max(axis=1)
    r2 = np.abs(np.moveaxis(wb, ib, 0)).reshape(wb.shape[ib], -1).max(axis=1)
    if r1.shape != r2.shape:
        return
    ok = (r1 > EPS) & (r2 > EPS)
    s = np.ones_like(r1)
    s[ok] = np.sqrt(r1[ok] / r2[ok])
    shape_a = [-1 if i == oa else 1 for i in range(wa.ndim)]
    shape_b = [-1 if i == ib else 1 for i in range(wb.ndim)]
    G.set(p.a, 1, wa / s.reshape(shape_a))
    G.set(p.b, 1, wb * s.reshape(shape_b))
    if p.a_bias is not None:
        node, k = p.a_bias
        b = tensor_array(G.inits[node.input[k]]).astype(np.float64)
        G.set(node, k, b / s)


def _drop_upper_bound(G: _Graph, clip: onnx.NodeProto) -> None:
    """``clip="relu"``: Clip(x, lo, hi) -> Clip(x, lo) (lossy; the budget judges it)."""
    if len(clip.input) > 2:
        clip.input[2] = ""
    for a in list(clip.attribute):
        if a.name == "max":
            clip.attribute.remove(a)
