"""Fuzzing motifs around convolutions: Conv+BN (plain, grouped, depthwise, BN before the
Conv, ConvTranspose), per-channel constants after a Conv, an affine between two Convs, and
Pad before Conv / pooling.

Each motif takes a tensor from the builder's pool, writes a few nodes (sometimes a near miss
that a pass must decline) and puts its result back.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.fuzz.builder import Builder, T


def conv_out(n: int, k: int, s: int, pb: int, pe: int, d: int = 1) -> int:
    return (n + pb + pe - d * (k - 1) - 1) // s + 1


def _bn_params(b: Builder, c: int) -> list[str]:
    gamma = b.rng.standard_normal(c)
    if b.chance(0.2):
        gamma[int(b.rng.integers(c))] = 0.0  # a dead channel: BN output is exactly beta
    beta = b.rng.standard_normal(c) * 0.5
    mean = b.rng.standard_normal(c) * 0.5
    var = b.rng.random(c) + 0.1
    return [b.const(v) for v in (gamma, beta, mean, var)]


def batchnorm(b: Builder, x: T) -> T:
    eps = float(b.choice([1e-5, 1e-3, 0.1]))
    return b.op(
        "BatchNormalization",
        [x.name, *_bn_params(b, x.shape[1])],
        x.shape,
        batch=x.batch,
        epsilon=eps,
    )


def conv(b: Builder, x: T, co: int | None = None, group: int = 1, pads_ok: bool = True) -> T:
    """A random valid Conv on a 4-D tensor (kernel, stride, pads, dilation, bias)."""
    _, c, h, w = x.shape
    co = co or int(b.choice([1, 2, 3, 4]))
    co = co * group if co % group else co
    k = int(b.choice([1, 2, 3]))
    s = int(b.choice([1, 1, 2]))
    d = int(b.choice([1, 1, 2]))
    pads = [int(b.rng.integers(0, k)) if pads_ok else 0 for _ in range(4)]
    oh, ow = conv_out(h, k, s, pads[0], pads[2], d), conv_out(w, k, s, pads[1], pads[3], d)
    if oh < 1 or ow < 1:
        k, s, d, pads = 1, 1, 1, [0, 0, 0, 0]
        oh, ow = h, w
    ins = [x.name, b.weight((co, c // group, k, k))]
    if b.chance(0.6):
        ins.append(b.weight((co,)))
    attrs = {"kernel_shape": [k, k], "strides": [s, s], "pads": pads, "group": group}
    if d > 1:
        attrs["dilations"] = [d, d]
    return b.op("Conv", ins, (x.shape[0], co, oh, ow), batch=x.batch, **attrs)


def conv_bn(b: Builder) -> None:
    """Conv -> BN (plain, grouped, depthwise), BN -> Conv, ConvTranspose -> BN, sometimes with
    a constant Add / Sub between; sometimes the Conv output (or the shifted one) is also a graph
    output or its weight is shared (the fold must decline)."""
    x = b.take(rank=4)
    c = x.shape[1]
    kind = b.choice(["conv", "conv", "depthwise", "grouped", "bn_first", "transpose"])
    if kind == "bn_first":
        y = conv(b, batchnorm(b, x), pads_ok=b.chance(0.5))
        b.put(y)
        return
    if kind == "transpose":
        y = conv_transpose(b, x)
    else:
        group = c if kind == "depthwise" else (2 if kind == "grouped" and c % 2 == 0 else 1)
        co = c if kind == "depthwise" else None
        y = conv(b, x, co=co, group=group)
        if b.chance(0.15):  # the weight also feeds another conv: W cannot be rescaled
            first = b.nodes[-1]
            attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
            b.put(b.op("Conv", list(first.input), y.shape, batch=y.batch, **attrs))
    if b.chance(0.15):
        b.output(y)
    if b.chance(0.3):  # a shift between (PaddlePaddle's ConvTranspose bias): per channel or not
        co = y.shape[1]
        shape = b.choice([(1, co, 1, 1), (co, 1, 1), (), (1, 1, 1, y.shape[3])])
        t = b.op(
            b.choice(["Add", "Sub"]),
            [y.name, b.const(b.rng.standard_normal(shape))],
            tuple(np.broadcast_shapes(y.shape, shape)),
            batch=y.batch,
        )
        if b.chance(0.1):  # another reader of the shifted tensor: the BN must not fold it
            b.output(t)
        y = t
    b.put(batchnorm(b, y))


def conv_transpose(b: Builder, x: T) -> T:
    """A ConvTranspose (stride 1 or 2, kernel 1-3, 1-3 output channels, bias or not)."""
    c = x.shape[1]
    s = int(b.choice([1, 2]))
    k = int(b.choice([1, 2, 3]))
    co = int(b.choice([1, 2, 3]))
    ins = [x.name, b.weight((c, co, k, k))]
    if b.chance(0.5):
        ins.append(b.weight((co,)))
    shape = (x.shape[0], co, s * (x.shape[2] - 1) + k, s * (x.shape[3] - 1) + k)
    return b.op("ConvTranspose", ins, shape, batch=x.batch, kernel_shape=[k, k], strides=[s, s])


def conv_affine(b: Builder) -> None:
    """Conv (or ConvTranspose) followed by + c, - c, * c or / c, with c per channel (folds into W and b) or
    broadcasting over other axes (must not fold), sometimes with zeros in a divisor."""
    x = b.take(rank=4)
    y = conv_transpose(b, x) if b.chance(0.25) else conv(b, x)
    co = y.shape[1]
    shape = b.choice([(co, 1, 1), (1, co, 1, 1), (), (1,), (1, 1, y.shape[3]), (co, 1, y.shape[3])])
    value = b.rng.standard_normal(shape) + (1.5 if b.chance(0.5) else 0.0)
    op = b.choice(["Add", "Sub", "Mul", "Div"])
    if op == "Div" and b.chance(0.2) and np.size(value) > 1:
        value.reshape(-1)[0] = 0.0
    ins = [y.name, b.const(value)]
    if op in ("Add", "Mul") and b.chance(0.3):
        ins.reverse()
    out_shape = tuple(np.broadcast_shapes(y.shape, np.shape(value)))
    b.put(b.op(op, ins, out_shape, batch=y.batch))


def affine_between_convs(b: Builder) -> None:
    """Conv [-> activation] -> x·a + b (or x/a − b, or + b alone) -> a Conv, often a padded
    depthwise one: becomes a 1x1 depthwise Conv when the channels fill 16-channel blocks and
    the constants are per channel; near misses have 8 channels, a spatial constant, an
    activation onnxruntime does not fuse, or another reader of the affine."""
    x = b.take(rank=4)
    c = int(b.choice([16, 16, 32, 8]))
    y = conv(b, x, co=c)
    swish = "HardSwish" if b.opset >= 14 else "HardSigmoid"
    act = b.choice([swish, swish, "Relu", "", "Exp"])
    if act:
        y = b.op(act, [y.name], y.shape, batch=y.batch)
    shape = b.choice([(1,), (c, 1, 1), (1, c, 1, 1), (), (1, 1, y.shape[3])])
    kind = b.choice(["mul_add", "div_sub", "add"])
    if kind != "add":
        scale = b.rng.uniform(0.5, 2.0, shape) * b.choice([1.0, -1.0])
        ins = [y.name, b.const(scale)]
        if kind == "mul_add" and b.chance(0.5):
            ins.reverse()
        y = b.op("Mul" if kind == "mul_add" else "Div", ins, y.shape, batch=y.batch)
    shift = b.const(b.rng.standard_normal(shape))
    out_shape = tuple(np.broadcast_shapes(y.shape, shape))
    t = b.op("Sub" if kind == "div_sub" else "Add", [y.name, shift], out_shape, batch=y.batch)
    if b.chance(0.1):
        b.put(b.op("Relu", [t.name], t.shape, batch=t.batch))
    depthwise = b.chance(0.7)
    b.put(conv(b, t, co=t.shape[1] if depthwise else None, group=t.shape[1] if depthwise else 1))


def pad_conv(b: Builder) -> None:
    """Pad -> Conv / AveragePool / MaxPool; zero constant pads fold into the consumer, other
    modes, values, negative or channel pads must not."""
    x = b.take(rank=4)
    n, c, h, w = x.shape
    pads = [0, 0, int(b.rng.integers(0, 3)), int(b.rng.integers(0, 3))] * 2
    pads[6], pads[7] = int(b.rng.integers(0, 3)), int(b.rng.integers(0, 3))
    near = b.choice(["", "", "", "value", "mode", "channel", "negative"])
    mode = "constant"
    if near == "mode":
        mode = b.choice(["reflect", "edge"])
        pads = (
            [0, 0]
            + [min(p, 1) if h > 1 and w > 1 else 0 for p in pads[2:4]]
            + [0, 0]
            + [min(p, 1) if h > 1 and w > 1 else 0 for p in pads[6:]]
        )
    elif near == "channel":
        pads[1] = 1
    elif near == "negative" and h > 2 and w > 2:
        pads[2] = -1
    ins = [x.name]
    axes_form = b.opset >= 18 and b.chance(0.3) and near != "channel"
    ins.append(b.ints([pads[2], pads[3], pads[6], pads[7]] if axes_form else pads))
    if mode == "constant" and (near == "value" or b.chance(0.5)):
        ins.append(b.const(np.array(1.5 if near == "value" else 0.0)))
    elif axes_form:
        ins.append("")
    if axes_form:
        ins.append(b.ints(b.choice([[2, 3], [-2, -1]])))
    shape = (n, c + pads[1] + pads[5], h + pads[2] + pads[6], w + pads[3] + pads[7])
    p = b.op("Pad", ins, shape, batch=x.batch, mode=mode)
    consumer = b.choice(["Conv", "Conv", "AveragePool", "MaxPool"])
    if consumer == "Conv":
        b.put(conv(b, p))
        return
    k = int(b.choice([1, 2, 3]))
    k = min(k, p.shape[2], p.shape[3])
    pp = [int(b.rng.integers(0, k)) for _ in range(4)]
    s = int(b.choice([1, 1, 2]))
    attrs = {"kernel_shape": [k, k], "pads": pp, "strides": [s, s]}
    if consumer == "AveragePool":
        attrs["count_include_pad"] = int(b.choice([0, 1]))
    spans = [size + pp[i] + pp[i + 2] - k for i, size in enumerate(p.shape[2:])]
    # ceil mode: the last window may hang over the padded input; onnx's shape inference and
    # onnxruntime disagree when it would start in the end padding, so that case is avoided
    ceil = s > 1 and b.chance(0.5)
    ceil = ceil and all(
        (-(-sp // s)) * s < size + pp[i]
        for i, (sp, size) in enumerate(zip(spans, p.shape[2:], strict=True))
    )
    if ceil:
        attrs["ceil_mode"] = 1
    dims = [(-(-sp // s) if ceil else sp // s) + 1 for sp in spans]
    b.put(b.op(consumer, [p.name], (n, p.shape[1], *dims), batch=x.batch, **attrs))
