"""Bias correction: remove the mean output error that quantizing a layer introduces.

Rounding the weights (and the input) of ``y = W·x + b`` shifts each output channel's mean by
``E[ΔW·x] = ΔW·E[x]`` (Nagel et al., "Data-Free Quantization", 2019). Subtracting that shift
from the bias restores the float mean: ``b' = b − shift``.

- **empirical** (calibration data): ``shift_c = mean(y'_c − y_c)`` measured directly, the layer
  quantized alone on the float model's own input (:mod:`.sensitivity`, one instrumented run for
  every layer; it also includes the mean error of quantizing the input).
- **data-free**: ``E[x]`` from the BatchNormalization that produced the layer's input: with
  ``z_c ~ N(β_c, γ_c²)`` and ``x = clip(z, a, b)`` (Relu: ``a = 0, b = ∞``; none: ``±∞``),
      ``E[x] = a·Φ(α) + b·(1 − Φ(β')) + μ·(Φ(β') − Φ(α)) + σ·(φ(α) − φ(β'))``,
  ``α = (a − μ)/σ``, ``β' = (b − μ)/σ``. The BatchNormalization is looked up in the model, then
  in the pipeline's original (fold-batchnorm keeps the BN's output name), by tensor name.
  Then ``shift = ΔW·E[x]`` (a Conv sums ``ΔW`` over its kernel; zero padding is ignored).

A layer without a bias gets one (Conv/Gemm input, or an ``Add`` after a MatMul, which
onnxruntime fuses into its int8 GEMM).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.weights import array as tensor_array

from .qdq import WeightQ, quantize_weight, weight_params

logger = logging.getLogger(__name__)

_ACT = ("Relu", "Clip", "Identity")


def apply_shifts(graph: gs.Graph, shifts: dict[str, np.ndarray]) -> int:
    """``b -= shift`` for every layer of ``graph`` named in ``shifts`` (in place; a layer
    without a bias gets one). Returns how many layers were corrected."""
    done, added = 0, False
    for node in list(graph.nodes):
        shift = shifts.get(node.name)
        if shift is None or not np.all(np.isfinite(shift)):
            continue
        owner, index = bias_slot(node, len(shift))
        if owner is None:
            continue
        if index is None:
            added |= _add_bias(graph, node, -shift.astype(np.float32))
        else:
            b = np.asarray(owner.inputs[index].values, np.float64)
            owner.inputs[index] = gs.Constant(
                f"{owner.inputs[index].name}_corrected_{node.name}", (b - shift).astype(np.float32)
            )
        done += 1
    if added:
        graph.toposort()
    return done


def bias_slot(node: gs.Node, n: int) -> tuple[gs.Node | None, int | None | str]:
    """(node holding the bias, its input index; None: add one), or (None, why not)."""
    op = node.op
    if op in ("Conv", "ConvTranspose", "Gemm"):
        if op == "Gemm" and (
            node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0
        ):
            return None, "Gemm with alpha/beta"
        if len(node.inputs) > 2 and node.inputs[2].name:
            b = node.inputs[2]
            if not isinstance(b, gs.Constant) or tuple(b.shape) != (n,):
                return None, "bias is not a constant of one value per channel"
            return node, 2
        return node, None
    if op == "MatMul":
        users = node.outputs[0].outputs
        if len(users) == 1 and users[0].op == "Add":
            add = users[0]
            for i, t in enumerate(add.inputs):
                if isinstance(t, gs.Constant) and tuple(t.shape) == (n,):
                    return add, i
        return node, None
    return None, f"{op} has no bias"


def _add_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray) -> bool:
    """Give ``node`` the bias ``bias``; True when a node was added (an Add after a MatMul)."""
    const = gs.Constant(f"{node.name}_bias_correction", bias)
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
        while len(node.inputs) < 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(const)
        return False
    y = node.outputs[0]
    mid = gs.Variable(f"{y.name}_before_bias_correction", dtype=y.dtype, shape=y.shape)
    node.outputs[0] = mid
    graph.nodes.append(
        gs.Node("Add", f"{node.name}_bias_correction_Add", inputs=[mid, const], outputs=[y])
    )
    return True


# ------------------------------------------------------------------------------------------
# data-free


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def clipped_normal_mean(mu: np.ndarray, sigma: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``E[clip(z, lo, hi)]`` for ``z ~ N(mu, sigma²)`` (module docstring)."""
    mu = np.asarray(mu, np.float64)
    sigma = np.maximum(np.abs(np.asarray(sigma, np.float64)), 1e-12)
    a = (lo - mu) / sigma if math.isfinite(lo) else np.full_like(mu, -np.inf)
    b = (hi - mu) / sigma if math.isfinite(hi) else np.full_like(mu, np.inf)
    Pa, Pb = _Phi(a), _Phi(b)
    out = mu * (Pb - Pa) + sigma * (
        _phi(np.nan_to_num(a, neginf=-40)) - _phi(np.nan_to_num(b, posinf=40))
    )
    if math.isfinite(lo):
        out += lo * Pa
    if math.isfinite(hi):
        out += hi * (1.0 - Pb)
    return out


def input_means(
    model: onnx.ModelProto, original: onnx.ModelProto | None, node: onnx.NodeProto
) -> np.ndarray | str:
    """``E[x]`` per channel of ``node``'s input from BatchNormalization statistics, or why not."""
    made = {o: n for n in model.graph.node for o in n.output}
    x = node.input[0]
    lo, hi = -math.inf, math.inf
    prev = made.get(x)
    if prev is not None and prev.op_type in _ACT:
        lo, hi = _bounds(prev, model)
        x = prev.input[0]
    for m in (model, original):
        if m is None:
            continue
        bn = next(
            (n for n in m.graph.node if n.op_type == "BatchNormalization" and n.output[0] == x),
            None,
        )
        if bn is not None:
            gamma, beta = (_const(m, bn.input[i]) for i in (1, 2))
            if gamma is None or beta is None:
                return "BatchNormalization parameters are not constants"
            return clipped_normal_mean(beta, gamma, lo, hi)
    return "no BatchNormalization statistics before it (data-free correction needs them)"


def _bounds(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[float, float]:
    if node.op_type == "Relu":
        return 0.0, math.inf
    if node.op_type == "Identity":
        return -math.inf, math.inf
    lo, hi = -math.inf, math.inf
    for a in node.attribute:
        lo = a.f if a.name == "min" else lo
        hi = a.f if a.name == "max" else hi
    if len(node.input) > 1 and node.input[1]:
        v = _const(model, node.input[1])
        lo = float(v) if v is not None else lo
    if len(node.input) > 2 and node.input[2]:
        v = _const(model, node.input[2])
        hi = float(v) if v is not None else hi
    return lo, hi


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return tensor_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return tensor_array(n.attribute[0].t)
    return None


def data_free_shifts(
    model: onnx.ModelProto,
    original: onnx.ModelProto | None,
    layers: dict[str, int | None],
    weights: dict[str, WeightQ],
    *,
    reduce_range: bool,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``shift = ΔW·E[x]`` per layer (``layers``: node name -> per-channel weight axis)."""
    shifts, notes = {}, []
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in layers or node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        mean = input_means(model, original, node)
        if isinstance(mean, str):
            notes.append(f"{node.name}: {mean}")
            continue
        t = inits.get(node.input[1])
        if t is None:
            continue
        w = tensor_array(t).astype(np.float32)
        axis = layers[node.name]
        given = weights.get(node.name)
        if given is not None and given.q.shape == w.shape:
            s, q, axis = given.scale, given.q, given.axis
        else:
            s = weight_params(w, axis, reduce_range)
            q = quantize_weight(w, s, axis, reduce_range)
        sb = s if axis is None else s.reshape([-1 if i == axis else 1 for i in range(w.ndim)])
        dw = q.astype(np.float64) * sb - w
        shift = _shift(node, dw, mean)
        if shift is None:
            notes.append(f"{node.name}: {len(mean)} input means do not fit the weight")
            continue
        shifts[node.name] = shift
    return shifts, notes


def _shift(node: onnx.NodeProto, dw: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        cout, cpg = dw.shape[0], dw.shape[1]
        if cpg * group != len(mean):
            return None
        per = dw.reshape(cout, cpg, -1).sum(axis=2)  # [Cout, Cin/group]
        m = mean.reshape(group, cpg)[np.arange(cout) // (cout // group)]
        return (per * m).sum(axis=1)
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    w2 = dw.T if (node.op_type == "Gemm" and trans_b) else dw
    if w2.ndim != 2 or w2.shape[0] != len(mean):
        return None
    return mean @ w2
