"""torch implementations of the ONNX element-wise, shape and indexing ops.

Same signature as :mod:`onnxopt.onnx2torch.ops_nn`: ``fn(inputs, attrs, env) -> list[Tensor]``.
Shape arithmetic (Shape, Gather, Concat, Unsqueeze on int64 tensors feeding Reshape) runs eagerly
on small int64 tensors, so dynamic shapes just work.

ONNX details kept here:

- operands that moved from attributes to inputs across opsets (Split ``split``, Squeeze /
  Unsqueeze / Reduce* ``axes``, Slice ``starts/ends/axes/steps``, Pad ``pads``) are read from
  either place;
- Reshape: a 0 copies the input dim (unless ``allowzero``), -1 is inferred;
- Slice clamps like the spec: step > 0 -> start, end in [0, d]; step < 0 -> start in [0, d-1],
  end in [-1, d-1]; negative steps gather ``range(start, end, step)``;
- integer Div truncates toward zero, as onnxruntime does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from onnxopt.errors import ModelError

Tensor = torch.Tensor

#: ONNX TensorProto data type -> torch dtype
ONNX_TO_TORCH = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


def _ints(t: Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _opt(inputs: list[Tensor | None], i: int) -> Tensor | None:
    return inputs[i] if len(inputs) > i else None


def _axes(inputs: list[Tensor | None], attrs: dict[str, Any], slot: int) -> list[int] | None:
    if "axes" in attrs:
        return list(attrs["axes"])
    return _ints(_opt(inputs, slot))


def _binary(fn: Any) -> Any:
    def op(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
        return [fn(inputs[0], inputs[1])]

    return op


def div(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    if a.is_floating_point():
        return [a / b]
    return [torch.div(a, b, rounding_mode="trunc")]


def pow_(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    a, b = inputs[0], inputs[1]
    if b.numel() == 1 and not b.requires_grad and float(b) == 2.0:
        return [a * a]
    return [torch.pow(a, b).to(a.dtype)]


def _variadic(fn: Any) -> Any:
    def op(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
        acc = inputs[0]
        for t in inputs[1:]:
            acc = fn(acc, t)
        return [acc]

    return op


def mean_(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    acc = inputs[0]
    for t in inputs[1:]:
        acc = acc + t
    return [acc / len(inputs)]


def reshape(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, shape = inputs[0], _ints(inputs[1]) if len(inputs) > 1 else list(attrs["shape"])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


def flatten(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    axis = attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return [x.reshape(lead, -1)]


def transpose(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    perm = attrs.get("perm", list(reversed(range(x.dim()))))
    return [x.permute(*perm)]


def concat(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    ts = [t for t in inputs if t is not None]
    return [torch.cat(ts, dim=attrs["axis"])]


def split(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    axis = attrs.get("axis", 0)
    sizes = list(attrs["split"]) if "split" in attrs else _ints(_opt(inputs, 1))
    if sizes is None:
        n = attrs.get("num_outputs", env.num_outputs)
        d = x.shape[axis]
        chunk = -(-d // n)
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def slice_(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    if "starts" in attrs:  # opset < 10
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes, steps = attrs.get("axes"), None
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes, steps = _ints(_opt(inputs, 3)), _ints(_opt(inputs, 4))
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    idx: list[Any] = [slice(None)] * x.dim()
    gathers = []
    for s, e, a, st in zip(starts, ends, axes, steps, strict=False):
        a = a + x.dim() if a < 0 else a
        d = x.shape[a]
        s = s + d if s < 0 else s
        e = e + d if e < 0 else e
        if st > 0:
            idx[a] = slice(min(max(s, 0), d), min(max(e, 0), d), st)
        else:
            s, e = min(max(s, 0), d - 1), min(max(e, -1), d - 1)
            gathers.append((a, list(range(s, e, st))))
    y = x[tuple(idx)]
    for a, ids in gathers:
        y = y.index_select(a, torch.tensor(ids, dtype=torch.long))
    return [y]


def gather(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, ind = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0)
    axis = axis + x.dim() if axis < 0 else axis
    ind = torch.where(ind < 0, ind + x.shape[axis], ind)
    y = x.index_select(axis, ind.reshape(-1))
    return [y.reshape(list(x.shape[:axis]) + list(ind.shape) + list(x.shape[axis + 1 :]))]


def gather_elements(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, ind = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0)
    ind = torch.where(ind < 0, ind + x.shape[axis], ind)
    return [torch.gather(x, axis, ind)]


def squeeze(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    axes = _axes(inputs, attrs, 1)
    if axes is None:
        return [x.squeeze()]
    axes = sorted((a + x.dim() if a < 0 else a) for a in axes)
    for a in reversed(axes):
        x = x.squeeze(a)
    return [x]


def unsqueeze(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    axes = _axes(inputs, attrs, 1) or []
    rank = x.dim() + len(axes)
    for a in sorted((a + rank if a < 0 else a) for a in axes):
        x = x.unsqueeze(a)
    return [x]


def _reduce(kind: str) -> Any:
    def op(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
        x = inputs[0]
        keep = bool(attrs.get("keepdims", 1))
        axes = _axes(inputs, attrs, 1)
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        dims = tuple(a + x.dim() if a < 0 else a for a in axes)
        if kind == "mean":
            return [x.mean(dim=dims, keepdim=keep)]
        if kind == "sum":
            return [x.sum(dim=dims, keepdim=keep)]
        if kind == "max":
            return [x.amax(dim=dims, keepdim=keep)]
        if kind == "min":
            return [x.amin(dim=dims, keepdim=keep)]
        if kind == "l2":
            return [torch.sqrt((x * x).sum(dim=dims, keepdim=keep))]
        return [(x * x).sum(dim=dims, keepdim=keep)]  # sumsquare

    return op


def constant(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in attrs:
            return [torch.as_tensor(np.array(attrs[key], copy=True))]
    raise ModelError(f"Constant with attribute(s) {sorted(attrs)} is not supported")


def shape(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    dims = list(inputs[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


def size(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [torch.tensor(inputs[0].numel(), dtype=torch.int64)]


def constant_of_shape(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    value = torch.as_tensor(np.array(attrs.get("value", np.zeros(1, np.float32)), copy=True))
    return [torch.full(_ints(inputs[0]), value.reshape(-1)[0].item(), dtype=value.dtype)]


def range_(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    s, e, d = inputs[0], inputs[1], inputs[2]
    return [torch.arange(s.item(), e.item(), d.item(), dtype=s.dtype)]


def expand(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x, dims = inputs[0], _ints(inputs[1])
    # ONNX Expand broadcasts both ways: a 1 in ``dims`` keeps the input's dim
    rank = max(x.dim(), len(dims))
    xs = [1] * (rank - x.dim()) + list(x.shape)
    ds = [1] * (rank - len(dims)) + dims
    return [
        x.reshape(xs).expand(
            [max(a, b) if min(a, b) == 1 else b for a, b in zip(xs, ds, strict=False)]
        )
    ]


def tile(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [inputs[0].repeat(*_ints(inputs[1]))]


def cast(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    to = attrs["to"]
    if to not in ONNX_TO_TORCH:
        raise ModelError(f"Cast to ONNX type {to} is not supported")
    return [inputs[0].to(ONNX_TO_TORCH[to])]


def cast_like(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [inputs[0].to(inputs[1].dtype)]


def where(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [torch.where(inputs[0].bool(), inputs[1], inputs[2])]


def identity(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    return [inputs[0]]


def pad(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    x = inputs[0]
    pads = list(attrs["pads"]) if "pads" in attrs else _ints(inputs[1])
    value = attrs.get("value", 0.0)
    cval = _opt(inputs, 2)
    if cval is not None and cval.numel():
        value = float(cval.reshape(-1)[0])
    axes = _ints(_opt(inputs, 3))
    if axes is not None:  # opset 18: pads only for ``axes``
        full = [0] * (2 * x.dim())
        for i, a in enumerate(axes):
            a = a + x.dim() if a < 0 else a
            full[a], full[a + x.dim()] = pads[i], pads[i + len(axes)]
        pads = full
    n = x.dim()
    tp: list[int] = []
    for i in reversed(range(n)):
        tp += [pads[i], pads[i + n]]
    mode = attrs.get("mode", "constant")
    mode = {"edge": "replicate"}.get(mode, mode)
    if mode == "constant":
        return [F.pad(x, tp, value=value)]
    while tp and tp[-2:] == [0, 0]:  # torch pads only trailing dims in these modes
        tp = tp[:-2]
    return [F.pad(x, tp, mode=mode)]


def mod(inputs: list[Tensor | None], attrs: dict[str, Any], env: Any) -> list[Tensor]:
    fn = torch.fmod if attrs.get("fmod", 0) else torch.remainder
    return [fn(inputs[0], inputs[1])]


def _compare(fn: Any) -> Any:
    return _binary(fn)


TENSOR_OPS: dict[str, Any] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": div,
    "Pow": pow_,
    "Mod": mod,
    "Sqrt": lambda i, a, e: [torch.sqrt(i[0])],
    "Reciprocal": lambda i, a, e: [torch.reciprocal(i[0])],
    "Neg": lambda i, a, e: [torch.neg(i[0])],
    "Abs": lambda i, a, e: [torch.abs(i[0])],
    "Exp": lambda i, a, e: [torch.exp(i[0])],
    "Log": lambda i, a, e: [torch.log(i[0])],
    "Floor": lambda i, a, e: [torch.floor(i[0])],
    "Ceil": lambda i, a, e: [torch.ceil(i[0])],
    "Sin": lambda i, a, e: [torch.sin(i[0])],
    "Cos": lambda i, a, e: [torch.cos(i[0])],
    "Not": lambda i, a, e: [torch.logical_not(i[0])],
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": mean_,
    "Equal": _compare(torch.eq),
    "Less": _compare(torch.lt),
    "LessOrEqual": _compare(torch.le),
    "Greater": _compare(torch.gt),
    "GreaterOrEqual": _compare(torch.ge),
    "And": _compare(torch.logical_and),
    "Or": _compare(torch.logical_or),
    "Where": where,
    "Reshape": reshape,
    "Flatten": flatten,
    "Transpose": transpose,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "GatherElements": gather_elements,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "ReduceMean": _reduce("mean"),
    "ReduceSum": _reduce("sum"),
    "ReduceMax": _reduce("max"),
    "ReduceMin": _reduce("min"),
    "ReduceL2": _reduce("l2"),
    "ReduceSumSquare": _reduce("sumsquare"),
    "Constant": constant,
    "Shape": shape,
    "Size": size,
    "ConstantOfShape": constant_of_shape,
    "Range": range_,
    "Expand": expand,
    "Tile": tile,
    "Cast": cast,
    "CastLike": cast_like,
    "Identity": identity,
    "Pad": pad,
}
