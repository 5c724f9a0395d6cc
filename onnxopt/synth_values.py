"""Values an op accepts for an input that carries shape information or a parameter.

Random numbers are fine for data, not for the inputs an op reads as a shape, an axis list, a
count or a ratio: ``Reshape(x, shape)`` needs a shape that fits ``x``, ``Slice`` needs axes
within the rank, ``Dropout`` a ratio in [0, 1). For such an (op, input) pair,
:func:`value_for` returns a value that is valid for the op whatever the data, read from the
node's attributes and the static shapes around it. Anything not listed here is data.

Every value is chosen to keep the op an identity-like or a small, always-valid case (a shape of
ones and one -1, full slices, ratio 0.5...): the point is a model that runs, so its rewrites can
be verified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx

Sizes = Mapping[str, list[int]]
#: (the reading node, its attributes, the static shapes, the input's dims) -> value, or None
Rule = Callable[[onnx.NodeProto, dict, Sizes, list[int]], "np.ndarray | list | float | int | None"]

BIG = 2**31 - 1


def _n(dims: list[int]) -> int:
    return int(dims[0]) if dims else 1


def _data_dims(node: onnx.NodeProto, sizes: Sizes, k: int = 0) -> list[int] | None:
    return sizes.get(node.input[k]) if len(node.input) > k else None


def _reshape_shape(node, attrs, sizes, dims):
    return [1] * (_n(dims) - 1) + [-1]


def _axes(node, attrs, sizes, dims):
    return list(range(_n(dims)))


def _squeeze_axes(node, attrs, sizes, dims):
    data = _data_dims(node, sizes)
    if not data:
        return None
    ones = [i for i, d in enumerate(data) if d == 1][: _n(dims)]
    return ones if len(ones) == _n(dims) else None


def _split_sizes(node, attrs, sizes, dims):
    data = _data_dims(node, sizes)
    if not data:
        return None
    total, parts = data[int(attrs.get("axis", 0))], _n(dims)
    if total < parts:
        return [total] + [0] * (parts - 1)
    return [total - (parts - 1)] + [1] * (parts - 1)


def _resize_sizes(node, attrs, sizes, dims):
    data = _data_dims(node, sizes)
    if not data:
        return None
    axes = attrs.get("axes")
    picked = [data[a] for a in axes] if axes else list(data)
    return picked if len(picked) == _n(dims) else None


def _unpool_shape(node, attrs, sizes, dims):
    """MaxUnpool's default output: (in - 1)·stride + kernel - pads, per spatial axis."""
    data = _data_dims(node, sizes)
    kernel = attrs.get("kernel_shape")
    if not data or not kernel or len(data) != _n(dims):
        return None
    k = len(kernel)
    strides = attrs.get("strides") or [1] * k
    pads = attrs.get("pads") or [0] * (2 * k)
    spatial = [
        (d - 1) * s + kk - pads[i] - pads[i + k]
        for i, (d, s, kk) in enumerate(zip(data[2:], strides, kernel))
    ]
    return list(data[:2]) + spatial


def _col2im_image(node, attrs, sizes, dims):
    """With unit blocks (see ``block_shape``) the image is one row of the L columns: an axis
    of size H gives floor((H + pads - 1) / stride) + 1 blocks, so H = (L - 1)·stride + 1 -
    pads on the last axis and 1 - pads (at least 1) on the others, when that works out."""
    data = _data_dims(node, sizes)
    n = _n(dims)
    if not data:
        return None
    strides = attrs.get("strides") or [1] * n
    pads = attrs.get("pads") or [0] * (2 * n)
    total = [pads[i] + pads[i + n] for i in range(n)]
    image = [max(1, 1 - p) for p in total[:-1]] + [(data[-1] - 1) * strides[-1] + 1 - total[-1]]
    blocks = [(h + p - 1) // s + 1 for h, p, s in zip(image, total, strides)]
    return image if min(image) >= 1 and int(np.prod(blocks)) == data[-1] else None


def _affine_size(node, attrs, sizes, dims):
    theta = _data_dims(node, sizes)
    batch = theta[0] if theta else 1
    return [batch, 1] + [2] * (_n(dims) - 2)


def _ones(node, attrs, sizes, dims):
    return [1] * _n(dims)


def _zeros(node, attrs, sizes, dims):
    return [0] * _n(dims)


def _const(value):
    return lambda node, attrs, sizes, dims: value


#: (op, input index) -> how to choose that input's value
RULES: dict[tuple[str, int], Rule] = {
    ("Reshape", 1): _reshape_shape,
    ("Expand", 1): _ones,
    ("Tile", 1): _ones,
    ("ConstantOfShape", 0): _ones,
    ("Squeeze", 1): _squeeze_axes,
    ("Unsqueeze", 1): _axes,
    ("Slice", 1): _zeros,
    ("Slice", 2): lambda node, attrs, sizes, dims: [BIG] * _n(dims),
    ("Slice", 3): _axes,
    ("Slice", 4): _ones,
    ("Split", 1): _split_sizes,
    ("Pad", 1): _zeros,
    ("Pad", 3): _axes,
    ("OneHot", 1): _const(3),
    ("Range", 0): _const(0),
    ("Range", 1): _const(4),
    ("Range", 2): _const(1),
    ("TopK", 1): _ones,
    ("CumSum", 1): _const(0),
    ("CumProd", 1): _const(0),
    ("MaxUnpool", 2): _unpool_shape,
    ("Col2Im", 1): _col2im_image,
    ("Col2Im", 2): _ones,
    ("Trilu", 1): _const(0),
    ("Resize", 2): _ones,
    ("Resize", 3): _resize_sizes,
    ("Upsample", 1): _ones,
    ("Dropout", 1): _const(0.5),
    ("Dropout", 2): _const(False),
    ("NonMaxSuppression", 2): _const(2),
    ("NonMaxSuppression", 3): _const(0.5),
    ("NonMaxSuppression", 4): _const(0.0),
    ("AffineGrid", 1): _affine_size,
    ("STFT", 1): _const(4),
    ("STFT", 3): _const(16),
    ("MelWeightMatrix", 0): _const(4),
    ("MelWeightMatrix", 1): _const(16),
    ("MelWeightMatrix", 2): _const(8000),
    ("MelWeightMatrix", 3): _const(0.0),
    ("MelWeightMatrix", 4): _const(4000.0),
}

for _op in (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
):
    RULES[(_op, 1)] = _axes

#: integer divisors must not be zero
NONZERO = {("Mod", 1), ("Div", 1)}


def value_for(
    node: onnx.NodeProto, i: int, sizes: Sizes, dtype: np.dtype, dims: list[int]
) -> np.ndarray | None:
    """The value to feed as input ``i`` of ``node`` (an input of ``dims``), or None when any
    value of the dtype will do."""
    if node.domain not in ("", "ai.onnx"):
        return None
    rule = RULES.get((node.op_type, i))
    if rule is None:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    value = rule(node, attrs, sizes, dims)
    if value is None:
        return None
    arr = np.asarray(value, dtype=dtype)
    return arr.reshape(dims) if arr.size == int(np.prod(dims)) else None
