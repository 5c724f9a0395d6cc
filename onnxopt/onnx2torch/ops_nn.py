"""torch implementations of the ONNX "network" ops: Conv, ConvTranspose, Gemm, MatMul, pooling,
BatchNormalization, LayerNormalization and the activations.

Each function has the signature ``fn(inputs, attrs, env) -> list[Tensor]`` where ``inputs`` holds
a tensor or None per ONNX input slot, ``attrs`` is the node's attributes as Python values and
``env`` is the :class:`onnxopt.onnx2torch.graph.OpEnv` (opset, BatchNormalization mode).

Semantics follow the ONNX spec (not torch's defaults):

- padding ``pads = [b_1..b_n, e_1..e_n]`` may be asymmetric; it is applied with ``F.pad``
  (zeros for Conv/AveragePool, -inf for MaxPool) when torch's symmetric ``padding`` cannot express
  it. AveragePool with ``count_include_pad=0`` divides by the number of real elements:
  ``y = avgpool(pad0(x)) / avgpool(pad0(1))``.
- Gemm: ``Y = alpha * A' B' + beta * C`` with ``A' = A^T if transA``.
- BatchNormalization: ``y = γ (x − μ) / √(σ² + ε) + β``; "eval" uses the stored μ, σ², "train"
  uses batch statistics and updates the stored ones with ``μ ← m μ + (1 − m) μ_batch`` (ONNX
  momentum m, torch momentum 1 − m).
- LayerNormalization normalizes over ``x.shape[axis:]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from onnxopt.errors import ModelError

Tensor = torch.Tensor


def _auto_pads(
    attrs: dict[str, Any], x: Tensor, kernel: list[int], strides: list[int], dilations: list[int]
) -> list[int]:
    """ONNX ``pads`` ([begins..., ends...]) from ``pads`` or ``auto_pad``."""
    n = len(kernel)
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return list(attrs.get("pads", [0] * (2 * n)))
    if auto == "VALID":
        return [0] * (2 * n)
    begins, ends = [], []
    for i in range(n):
        size = x.shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - size)
        small, big = total // 2, total - total // 2
        if auto == "SAME_UPPER":
            begins.append(small)
            ends.append(big)
        else:  # SAME_LOWER
            begins.append(big)
            ends.append(small)
    return begins + ends


def _torch_pad(pads: list[int]) -> list[int]:
    """ONNX [b1..bn, e1..en] -> F.pad order (last dim first: bn, en, ..., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _split_pads(pads: list[int]) -> tuple[list[int] | None, list[int]]:
    """Symmetric pads -> (per-dim padding, []) else (None, pads)."""
    n = len(pads) // 2
    if pads[:n] == pads[n:]:
        return list(pads[:n]), []
    return None, pads


def conv(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    n = w.dim() - 2
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * n))
    dil = list(attrs.get("dilations", [1] * n))
    pads = _auto_pads(attrs, x, kernel, strides, dil)
    sym, _ = _split_pads(pads)
    if sym is None:
        x = F.pad(x, _torch_pad(pads))
        sym = [0] * n
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n)
    if fn is None:
        raise ModelError(f"Conv with {n} spatial dims is not supported")
    return [fn(x, w, b, stride=strides, padding=sym, dilation=dil, groups=attrs.get("group", 1))]


def conv_transpose(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, w = inputs[0], inputs[1]
    b = inputs[2] if len(inputs) > 2 else None
    n = w.dim() - 2
    strides = list(attrs.get("strides", [1] * n))
    dil = list(attrs.get("dilations", [1] * n))
    out_pad = list(attrs.get("output_padding", [0] * n))
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "") or "output_shape" in attrs:
        raise ModelError("ConvTranspose with auto_pad SAME_* or output_shape is not supported")
    pads = list(attrs.get("pads", [0] * (2 * n)))
    if attrs.get("auto_pad") == "VALID":
        pads = [0] * (2 * n)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(n)
    if fn is None:
        raise ModelError(f"ConvTranspose with {n} spatial dims is not supported")
    y = fn(
        x,
        w,
        b,
        stride=strides,
        padding=0,
        output_padding=out_pad,
        groups=attrs.get("group", 1),
        dilation=dil,
    )
    # crop the ONNX pads (begin, end) from every spatial dim
    idx = [slice(None), slice(None)]
    for i in range(n):
        idx.append(slice(pads[i], y.shape[2 + i] - pads[i + n]))
    return [y[tuple(idx)]]


def gemm(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    y = a @ b
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


def matmul(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [torch.matmul(inputs[0], inputs[1])]


def _pool_geometry(
    x: Tensor, attrs: dict[str, Any]
) -> tuple[list[int], list[int], list[int], list[int]]:
    kernel = list(attrs["kernel_shape"])
    n = len(kernel)
    strides = list(attrs.get("strides", [1] * n))
    dil = list(attrs.get("dilations", [1] * n))
    return kernel, strides, dil, _auto_pads(attrs, x, kernel, strides, dil)


def max_pool(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    kernel, strides, dil, pads = _pool_geometry(x, attrs)
    n = len(kernel)
    sym, _ = _split_pads(pads)
    if sym is None or any(p > k // 2 for p, k in zip(sym, kernel, strict=False)):
        x = F.pad(x, _torch_pad(pads), value=float("-inf"))
        sym = [0] * n
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
    return [fn(x, kernel, strides, sym, dil, ceil_mode=bool(attrs.get("ceil_mode", 0)))]


def average_pool(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    kernel, strides, _, pads = _pool_geometry(x, attrs)
    n = len(kernel)
    ceil = bool(attrs.get("ceil_mode", 0))
    include = bool(attrs.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    if not any(pads):
        return [fn(x, kernel, strides, 0, ceil_mode=ceil)]
    sym, _ = _split_pads(pads)
    if sym is not None and all(p <= k // 2 for p, k in zip(sym, kernel, strict=False)):
        return [fn(x, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)]
    xp = F.pad(x, _torch_pad(pads))
    y = fn(xp, kernel, strides, 0, ceil_mode=ceil)
    if include:
        return [y]
    ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad(pads))
    return [y / fn(ones, kernel, strides, 0, ceil_mode=ceil)]


def global_average_pool(
    inputs: list[Tensor | None], attrs: dict[str, Any], env: Any
) -> list[Tensor]:
    x = inputs[0]
    return [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)]


def global_max_pool(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    return [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)]


def batch_norm(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, scale, bias, mean, var = inputs[:5]
    eps = attrs.get("epsilon", 1e-5)
    momentum = attrs.get("momentum", 0.9)
    training = env.bn_mode == "train" and env.training
    y = F.batch_norm(x, mean, var, scale, bias, training=training, momentum=1.0 - momentum, eps=eps)
    return [y]


def layer_norm(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1)
    axis = axis + x.dim() if axis < 0 else axis
    shape = tuple(x.shape[axis:])
    w = scale.expand(shape) if tuple(scale.shape) != shape else scale
    b = None if bias is None else (bias.expand(shape) if tuple(bias.shape) != shape else bias)
    return [F.layer_norm(x, shape, w, b, attrs.get("epsilon", 1e-5))]


def _softmax_like(fn: Any) -> Any:
    def op(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
        x = inputs[0]
        if env.opset >= 13:
            return [fn(x, dim=attrs.get("axis", -1))]
        # opset < 13: coerce to 2D at ``axis`` (default 1), softmax the flattened tail
        axis = attrs.get("axis", 1)
        axis = axis + x.dim() if axis < 0 else axis
        lead = int(math.prod(x.shape[:axis]))
        return [fn(x.reshape(lead, -1), dim=1).reshape(x.shape)]

    return op


def clip(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    lo = lo if lo is not None else attrs.get("min")
    hi = hi if hi is not None else attrs.get("max")
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return [x]


def gelu(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [F.gelu(inputs[0], approximate=attrs.get("approximate", "none"))]


def _unary(fn: Any) -> Any:
    def op(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
        return [fn(inputs[0])]

    return op


def leaky_relu(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [F.leaky_relu(inputs[0], attrs.get("alpha", 0.01))]


def elu(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [F.elu(inputs[0], attrs.get("alpha", 1.0))]


def hard_sigmoid(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    a, b = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return [torch.clamp(inputs[0] * a + b, 0.0, 1.0)]


def prelu(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, slope = inputs[0], inputs[1]
    return [torch.where(x < 0, x * slope, x)]


def dropout(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    return [x, torch.ones_like(x, dtype=torch.bool)]


NN_OPS: dict[str, Any] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "BatchNormalization": batch_norm,
    "LayerNormalization": layer_norm,
    "Softmax": _softmax_like(torch.softmax),
    "LogSoftmax": _softmax_like(torch.log_softmax),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Softplus": _unary(F.softplus),
    "HardSwish": _unary(F.hardswish),
    "Mish": _unary(F.mish),
    "Gelu": gelu,
    "Clip": clip,
    "LeakyRelu": leaky_relu,
    "Elu": elu,
    "HardSigmoid": hard_sigmoid,
    "PRelu": prelu,
    "Dropout": dropout,
}
