"""Fuzzing motifs for normalisations and activations in their exporter spellings: LayerNorm
(ReduceMean / Sub / Pow / Sqrt / Div and variants, affine after it, a residual sum before it),
GELU (erf and tanh forms, bias before it), HardSigmoid / HardSwish / Swish, with near misses
(wrong axes, wrong constants) that the fusions must decline."""

from __future__ import annotations

import numpy as np

from tests.fuzz.builder import Builder, T


def reduce_mean(b: Builder, x: T, axes: list[int], keepdims: int = 1) -> T:
    """ReduceMean spelled for the opset: axes as an attribute before 18, an input from 18."""
    norm = {a % x.rank for a in axes}
    shape = tuple(1 if i in norm else d for i, d in enumerate(x.shape))
    batch = x.batch and 0 not in norm
    if b.opset >= 18:
        return b.op("ReduceMean", [x.name, b.ints(axes)], shape, batch=batch, keepdims=keepdims)
    return b.op("ReduceMean", [x.name], shape, batch=batch, axes=axes, keepdims=keepdims)


def layernorm_on(b: Builder, x: T, axes: list[int] | None = None) -> T:
    """x normalised over ``axes`` (default: the last) in one of the exporters' spellings."""
    axes = axes or [-1]
    if b.chance(0.3):  # positive spelling of the same axes
        axes = [a % x.rank for a in axes]
    mu = reduce_mean(b, x, axes)
    d = b.op("Sub", [x.name, mu.name], x.shape, batch=x.batch)
    if b.chance(0.5):
        sq = b.op("Pow", [d.name, b.const(np.array(2.0))], x.shape, batch=x.batch)
    else:
        sq = b.op("Mul", [d.name, d.name], x.shape, batch=x.batch)
    axes2 = axes
    if b.chance(0.06) and x.rank >= 3:  # near miss: the variance over other axes
        axes2 = [-2]
    var = reduce_mean(b, sq, axes2)
    eps = b.const(
        np.array(float(b.choice([1e-5, 1e-6, 1e-12, 1e-3]))).reshape(b.choice([(), (1,)]))
    )
    ve = b.op(
        "Add", [var.name, eps] if b.chance(0.8) else [eps, var.name], var.shape, batch=var.batch
    )
    sd = b.op("Sqrt", [ve.name], var.shape, batch=var.batch)
    if b.chance(0.7):
        y = b.op("Div", [d.name, sd.name], x.shape, batch=x.batch)
    else:
        r = b.op("Reciprocal", [sd.name], var.shape, batch=var.batch)
        y = b.op("Mul", [d.name, r.name], x.shape, batch=x.batch)
    norm = sorted(a % x.rank for a in axes)
    norm_shape = tuple(x.shape[a] for a in norm)
    trailing = norm == list(range(x.rank - len(norm), x.rank))
    for op in ("Mul", "Add"):
        if trailing and b.chance(0.75):
            shape = norm_shape if b.chance(0.8) else (1,) * (x.rank - len(norm_shape)) + norm_shape
            if b.chance(0.08) and not b.dynamic:  # near miss: varies over the batch
                shape = (x.shape[0],) + (1,) * (x.rank - 1 - len(norm_shape)) + norm_shape
            w = b.rng.standard_normal(shape) * 0.5 + (1.0 if op == "Mul" else 0.0)
            ins = [y.name, b.const(w)]
            if b.chance(0.3):
                ins.reverse()
            y = b.op(op, ins, x.shape, batch=x.batch)
    return y


def layernorm(b: Builder) -> None:
    """Decomposed LayerNorm over the trailing axis (or two, or a non-trailing one: a near
    miss), sometimes after a residual sum (SkipLayerNormalization) or as the opset-17 op
    followed by an affine Mul / Add."""
    x = b.take(min_rank=2, max_rank=4)
    b.specials = False
    if b.chance(0.3):
        other = b.like(x)
        x = b.op("Add", [x.name, other.name], x.shape, batch=x.batch)
        if b.chance(0.3):
            x = b.op("Add", [x.name, b.weight((x.shape[-1],))], x.shape, batch=x.batch)
    if b.opset >= 17 and b.chance(0.2):
        y = b.op(
            "LayerNormalization",
            [x.name, b.weight((x.shape[-1],)), b.weight((x.shape[-1],))],
            x.shape,
            batch=x.batch,
            axis=-1,
            epsilon=1e-5,
        )
        c = b.const(b.rng.standard_normal(x.shape[-1]))
        b.put(b.op(b.choice(["Mul", "Add"]), [y.name, c], x.shape, batch=x.batch))
        return
    axes = b.choice([[-1], [-1], [-1], [-2, -1], [1]]) if x.rank >= 3 else [-1]
    if axes == [1] and b.dynamic and x.rank < 3:
        axes = [-1]
    b.put(layernorm_on(b, x, axes))


SQRT2 = float(np.sqrt(2.0))


def _gelu_inner(b: Builder, x: T) -> T:
    """erf(x/√2) (x/√2 or x·(1/√2)) or tanh(√(2/π)·(x + 0.044715·x³)) (x³ as Pow or products)."""
    if b.chance(0.6):
        if b.chance(0.5):
            s2 = b.const(np.array(b.choice([SQRT2, 1.4142135381698608])))
            inner = b.ew("Div", [x.name, s2], x)
        else:
            inner = b.ew("Mul", [x.name, b.const(np.array(1 / SQRT2))], x)
        return b.ew("Erf", [inner.name], x)
    if b.chance(0.4):
        cube = b.ew("Pow", [x.name, b.const(np.array(3.0))], x)
    else:
        sq = b.ew("Mul", [x.name, x.name], x)
        cube = b.ew("Mul", [x.name, sq.name] if b.chance(0.5) else [sq.name, x.name], x)
    t = b.ew("Mul", [cube.name, b.const(np.array(0.044715))], x)
    t = b.ew("Add", [x.name, t.name], x)
    t = b.ew("Mul", [t.name, b.const(np.array(np.sqrt(2 / np.pi)))], x)
    return b.ew("Tanh", [t.name], x)


def gelu(b: Builder) -> None:
    """GELU: erf or tanh form, the outer product in the exporters' three orders; sometimes a
    bias before it, a wrong constant (0.6, or ½ off by 5e-4), or an intermediate that is a
    graph output."""
    x = b.take()
    b.specials = False
    if b.chance(0.3):
        x = b.ew("Add", [x.name, b.weight((x.shape[-1],) if x.rank else ())], x)
    act = _gelu_inner(b, x)
    if b.chance(0.1):
        b.output(act)
    one = b.const(np.array(1.0))
    h = b.ew("Add", [act.name, one] if b.chance(0.7) else [one, act.name], x)
    c = b.const(np.array(b.choice([0.5] * 10 + [0.6, 0.5 * (1 + 5e-4)])))
    order = b.choice(["xh_half", "x_halfh", "xhalf_h"])
    if order == "xh_half":
        y = b.ew("Mul", [b.ew("Mul", [x.name, h.name], x).name, c], x)
    elif order == "x_halfh":
        y = b.ew("Mul", [x.name, b.ew("Mul", [c, h.name], x).name], x)
    else:
        y = b.ew("Mul", [b.ew("Mul", [x.name, c], x).name, h.name], x)
    b.put(y)


def _clip(b: Builder, t: T, lo: float, hi: float) -> T:
    return b.op(
        "Clip", [t.name, b.const(np.array(lo)), b.const(np.array(hi))], t.shape, batch=t.batch
    )


def activations(b: Builder) -> None:
    """HardSigmoid, HardSwish and Swish as exporters write them, with near misses (bounds
    other than (0, 6), the default HardSigmoid α, x·σ(y))."""
    x = b.take()
    b.specials = False
    kind = b.choice(["hardsigmoid", "hardswish", "hardswish_op", "swish", "near"])
    if kind in ("swish", "hardswish_op"):
        clipped = x
    else:
        three = b.const(np.array(3.0 if kind != "near" or b.chance(0.5) else 3.0 * (1 + 5e-4)))
        lo, hi = (0.0, 6.0) if kind != "near" else b.choice([(0.0, 5.0), (-1.0, 6.0), (0.0, 6.0)])
        ins = [x.name, three] if b.chance(0.7) else [three, x.name]
        clipped = _clip(b, b.op("Add", ins, x.shape, batch=x.batch), lo, hi)
    if kind == "swish":
        other = x if b.chance(0.9) else b.like(x)
        s = b.op("Sigmoid", [other.name], x.shape, batch=x.batch)
        y = b.op(
            "Mul", [x.name, s.name] if b.chance(0.5) else [s.name, x.name], x.shape, batch=x.batch
        )
    elif kind == "hardswish_op":
        alpha = 1 / 6 if b.chance(0.8) else 0.2
        hs = b.op("HardSigmoid", [x.name], x.shape, batch=x.batch, alpha=alpha, beta=0.5)
        y = b.op("Mul", [x.name, hs.name], x.shape, batch=x.batch)
    elif kind == "hardsigmoid" or (kind == "near" and b.chance(0.5)):
        if b.chance(0.5):
            y = b.op("Div", [clipped.name, b.const(np.array(6.0))], x.shape, batch=x.batch)
        else:
            y = b.op("Mul", [clipped.name, b.const(np.array(1 / 6))], x.shape, batch=x.batch)
    elif b.chance(0.5):
        xm = b.op("Mul", [x.name, clipped.name], x.shape, batch=x.batch)
        y = b.op("Div", [xm.name, b.const(np.array(6.0))], x.shape, batch=x.batch)
    else:
        hs = b.op("Div", [clipped.name, b.const(np.array(6.0))], x.shape, batch=x.batch)
        y = b.op("Mul", [x.name, hs.name], x.shape, batch=x.batch)
    b.put(y)
