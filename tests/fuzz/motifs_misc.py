"""Fuzzing motifs for the cleanup passes: duplicate nodes and initializers (and the near
misses: other attributes, dtypes, shapes, signed zeros), Dropout / Identity, Cast round trips
(no-ops and lossy ones), constant subgraphs, and If with constant and data-dependent
conditions."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tests.fuzz.builder import BATCH, Builder, InputInfo, T

#: integer types a float may be cast through, by numpy view type for the graph's float
_INT_VIEW = {"float32": (np.int32, TensorProto.INT32), "float16": (np.int16, TensorProto.INT16)}


def duplicates(b: Builder) -> None:
    """Two equal nodes on one input, equal nodes with other attributes, equal initializers
    under two names, and initializers that share bytes but not dtype, shape or value."""
    x = b.take()
    kind = b.choice(["nodes", "attrs", "inits", "dtype", "shape", "signed_zero", "consts"])
    if kind == "nodes":
        op = b.choice(["Relu", "Sigmoid", "Neg", "Abs", "Tanh"])
        y1 = b.op(op, [x.name], x.shape, batch=x.batch)
        y2 = b.op(op, [x.name], x.shape, batch=x.batch)
        if b.chance(0.3):
            b.output(y2)
        b.put(b.op(b.choice(["Add", "Sub"]), [y1.name, y2.name], x.shape, batch=x.batch))
        return
    if kind == "attrs":
        alphas = (0.1, 0.2) if b.chance(0.7) else (0.1, 0.1)
        y1, y2 = (b.op("LeakyRelu", [x.name], x.shape, batch=x.batch, alpha=a) for a in alphas)
        b.put(b.op("Sub", [y1.name, y2.name], x.shape, batch=x.batch))
        return
    width = x.shape[-1] if x.rank else 1
    value = b.rng.standard_normal(width).astype(b.np_float)
    if kind == "signed_zero":
        value[0] = 0.0
        other = value.copy()
        other[0] = -0.0
        c1, c2 = b.const(value, node=False), b.const(other, node=False)
        ops = ("Div", "Div")
    elif kind == "dtype":
        view, elem = _INT_VIEW[b.float_type]
        c1 = b.const(value, node=False)
        as_int = b.const(value.view(view), node=False)
        c2 = b.op("Cast", [as_int], (width,), to=b.ft).name
        ops = ("Add", "Add")
    elif kind == "shape" and x.rank >= 1:
        c1, c2 = b.const(value, node=False), b.const(value.reshape(1, width), node=False)
        ops = ("Mul", "Mul")
    else:
        as_node = kind == "consts"
        c1, c2 = b.const(value, node=as_node), b.const(value.copy(), node=as_node)
        ops = (b.choice(["Add", "Mul"]), b.choice(["Add", "Mul"]))
    shape2 = tuple(np.broadcast_shapes(x.shape, (1, width))) if kind == "shape" else x.shape
    b.put(b.op(ops[0], [x.name, c1], x.shape, batch=x.batch))
    b.put(b.op(ops[1], [x.name, c2], shape2, batch=x.batch and len(shape2) == x.rank))


def dropout_identity(b: Builder) -> None:
    """Identity (chains, graph input straight to a graph output), inference Dropout (no
    ratio, a ratio, training_mode false), Dropout whose mask is read, and the deterministic
    training Dropout of ratio 0."""
    kind = b.choice(
        [
            "identity",
            "chain",
            "dropout",
            "ratio",
            "train_false",
            "mask",
            "train_zero",
            "passthrough",
        ]
    )
    if kind == "passthrough":
        x = b.input(b.random_shape(int(b.rng.integers(1, 4))))
        b.output(b.op("Identity", [x.name], x.shape, batch=x.batch))
        return
    x = b.take()
    if kind in ("identity", "chain"):
        y = b.op("Identity", [x.name], x.shape, batch=x.batch)
        if kind == "chain":
            if b.chance(0.3):
                b.output(y)
            y = b.op("Identity", [y.name], x.shape, batch=x.batch)
        b.put(y)
        return
    ins = [x.name]
    if kind in ("ratio", "train_false", "mask", "train_zero"):
        ins.append(b.const(np.array(0.0 if kind == "train_zero" else 0.3), node=False))
    if kind in ("train_false", "train_zero"):
        ins.append(b.const(np.array(kind == "train_zero")))
    n_out = 2 if kind in ("mask", "train_zero") else 1
    outs = b.node("Dropout", ins, n_out)
    y = T(outs[0], x.shape, b.ft, x.batch)
    if n_out == 2:
        m = b.op("Cast", [outs[1]], x.shape, batch=x.batch, to=b.ft)
        y = b.op("Mul", [y.name, m.name], x.shape, batch=x.batch)
    b.put(y)


def cast(b: Builder) -> None:
    """Cast round trips: exact ones (through float64, float32 from float16, to the same
    type, CastLike) and lossy ones (float -> int -> float, through float16 or bool), and an
    int64 -> int32 -> int64 trip on a shape path."""
    if b.chance(0.15):
        x = b.take(min_rank=1)
        s = b.node("Shape", [x.name])[0]
        s = b.node("Cast", [s], to=TensorProto.INT32)[0]
        s = b.node("Cast", [s], to=TensorProto.INT64)[0]
        b.put(b.op("Reshape", [x.name, s], x.shape, batch=x.batch))
        return
    vias = [
        TensorProto.DOUBLE,
        TensorProto.FLOAT16,
        TensorProto.FLOAT,
        TensorProto.INT32,
        TensorProto.INT64,
        TensorProto.BOOL,
        TensorProto.INT8,
    ]
    via = b.choice(vias)
    exact = (TensorProto.DOUBLE, TensorProto.FLOAT) + (
        (TensorProto.FLOAT16,) if b.float_type == "float16" else ()
    )
    if via in exact:
        x = b.take()
    else:
        # a lossy cast turns float noise upstream into a different integer (or a flipped
        # float16 rounding): it reads a graph input, whose values every model sees alike
        x = b.input(b.random_shape(int(b.rng.integers(1, 4))))
    if via in (TensorProto.INT32, TensorProto.INT64, TensorProto.INT8, TensorProto.BOOL):
        b.specials = False  # NaN and Inf cast to integers are undefined
    if b.opset >= 15 and b.chance(0.2):
        np_via = helper.tensor_dtype_to_np_dtype(via)
        like = b.const(np.zeros((1,), np_via), np_via, node=False)
        t = b.op("CastLike", [x.name, like], x.shape, via, batch=x.batch)
    else:
        t = b.op("Cast", [x.name], x.shape, via, batch=x.batch, to=via)
    if b.chance(0.2) and via == TensorProto.DOUBLE and x.name in {i.name for i in b.inputs}:
        t = b.op(
            "Cast", [t.name], x.shape, TensorProto.FLOAT16, batch=x.batch, to=TensorProto.FLOAT16
        )
    if b.chance(0.1):
        b.output(t)
    b.put(b.op("Cast", [t.name], x.shape, batch=x.batch, to=b.ft))


def constants(b: Builder) -> None:
    """Constant subgraphs feeding a data path: arithmetic on Constant nodes (every attribute
    spelling), Range, ConstantOfShape, an Expand too large to fold, a Constant that is also a
    graph output."""
    x = b.take(min_rank=1)
    width = x.shape[-1]
    kind = b.choice(["arith", "attrs", "range", "cos", "big", "output", "overridable"])
    if kind == "arith":
        c1 = b.const(b.rng.standard_normal(width), node=True)
        c2 = b.const(b.rng.standard_normal((1, width)))
        t = b.op("Add", [c1, c2], (1, width))
        t = b.op("Mul", [t.name, b.const(np.array(0.5))], (1, width))
        c = b.op("Reshape", [t.name, b.ints([width])], (width,)).name
    elif kind == "attrs":
        f = b.node("Constant", [], value_floats=[float(v) for v in b.rng.standard_normal(width)])[0]
        s = b.node("Constant", [], value_float=float(b.rng.standard_normal()))[0]
        t = b.node("Mul", [f, s])[0]
        shape = b.node("Constant", [], value_ints=[width])[0]
        t = b.node("Reshape", [t, shape])[0]
        c = b.op("Cast", [t], (width,), to=b.ft).name
    elif kind == "range":
        r = b.node("Range", [b.ints(0), b.ints(width), b.ints(1)])[0]
        c = b.op("Cast", [r], (width,), to=b.ft).name
    elif kind == "cos":
        c = b.op(
            "ConstantOfShape",
            [b.ints([width])],
            (width,),
            value=numpy_helper.from_array(np.array([1.5], b.np_float)),
        ).name
    elif kind == "big":
        e = b.node("Expand", [b.const(np.array(0.25)), b.ints([1 << 16, width])])[0]
        c = b.node("Slice", [e, b.ints([0]), b.ints([1])])[0]
        c = b.node("Reshape", [c, b.ints([width])])[0]
    elif kind == "output":
        c = b.const(b.rng.standard_normal(width), node=True)
        b.output(T(c, (width,), b.ft))
    else:  # an initializer that is also a graph input: a default the caller may override
        c = b.const(b.rng.standard_normal(width), node=False)
        b.inputs.append(InputInfo(c, (width,), b.ft, False, kind="overridable"))
        c = b.op("Mul", [c, b.const(np.array(2.0), node=False)], (width,)).name
    b.put(b.op("Add", [x.name, c], x.shape, batch=x.batch))


def if_motif(b: Builder) -> None:
    """If on a constant condition (initializer or Constant node), on a data-dependent one
    (ReduceSum(x) > 0) or on a shape (batch == 2: constant only in static graphs); the
    branches read ``x`` from the outer scope and hold foldable no-ops themselves."""
    x = b.take()
    kind = b.choice(["const", "const", "data", "shape"])
    if kind == "const":
        cond = b.const(np.array(b.chance(0.5)))
    elif kind == "data":  # on a graph input: float noise upstream could flip the sign
        s = b.node("ReduceSum", [b.input(b.random_shape(2)).name], keepdims=0)[0]
        cond = b.node("Greater", [s, b.const(np.array(0.0))])[0]
    else:
        d = (
            b.node("Gather", [b.node("Shape", [x.name])[0], b.ints(0)], axis=0)[0]
            if x.rank
            else b.ints(BATCH)
        )
        cond = b.node("Equal", [d, b.ints(BATCH)])[0]
    then_g = _branch(b, x, "then")
    else_g = _branch(b, x, "else")
    b.put(b.op("If", [cond], x.shape, batch=x.batch, then_branch=then_g, else_branch=else_g))


def _branch(b: Builder, x: T, name: str):
    """A branch reading ``x`` from the outer scope, holding no-ops the cleanup passes remove
    in a main graph (x·1, Identity, a cancelling Transpose pair, a Dropout), or returning an
    outer value through an Identity."""
    outer, b.nodes = b.nodes, []
    try:
        kind = b.choice(["noops", "noops", "plain", "outer"])
        if kind == "outer":
            y = b.op("Identity", [x.name], x.shape, batch=x.batch)
        elif kind == "noops":
            t = b.op("Mul", [x.name, b.const(np.array(1.0))], x.shape, batch=x.batch)
            t = b.op("Identity", [t.name], x.shape, batch=x.batch)
            if x.rank >= 2:
                p = [0] + list(range(x.rank - 1, 0, -1))
                tt = b.op(
                    "Transpose", [t.name], tuple(x.shape[i] for i in p), batch=x.batch, perm=p
                )
                t = b.op("Transpose", [tt.name], x.shape, batch=x.batch, perm=p)
            t = b.op("Dropout", [t.name], x.shape, batch=x.batch)
            y = b.op("Relu", [t.name], x.shape, batch=x.batch)
        else:
            t = b.op("Neg", [x.name], x.shape, batch=x.batch)
            y = b.op("Mul", [t.name, b.const(np.array(2.0))], x.shape, batch=x.batch)
        out = b.value_info(y, declare_shape=b.chance(0.5))
        return helper.make_graph(b.nodes, b.fresh(name), [], [out])
    finally:
        b.nodes = outer


def noops(b: Builder) -> None:
    """Nodes remove-noops drops (and near misses it must keep): Expand to a broadcast-neutral
    shape, Tile by ones, Pad by zeros (any mode), an identity Transpose, a same-type Cast,
    single-input Concat / Sum / Max / Min / Mean, a full-range Slice."""
    x = b.take(min_rank=1)
    kind = b.choice(["expand", "tile", "pad", "transpose", "cast", "single", "slice"])
    near = b.chance(0.2)
    if kind == "expand":
        near = near and not b.dynamic  # the batch would move to axis 1
        shape = [1] * x.rank if not near else [2] + [1] * x.rank
        out = tuple(np.broadcast_shapes(x.shape, tuple(shape)))
        b.put(b.op("Expand", [x.name, b.ints(shape)], out, batch=x.batch and not near))
    elif kind == "tile":
        reps = [1] * x.rank
        if near and not (b.dynamic and x.batch and x.rank == 1):
            reps[-1] = 2
        out = tuple(d * r for d, r in zip(x.shape, reps, strict=True))
        b.put(b.op("Tile", [x.name, b.ints(reps)], out, batch=x.batch))
    elif kind == "pad":
        pads = [0] * (2 * x.rank)
        if near:
            pads[-1] = 1
        out = x.shape[:-1] + (x.shape[-1] + pads[-1],)
        mode = (
            b.choice(["constant", "reflect", "edge"]) if not near or x.shape[-1] > 1 else "constant"
        )
        b.put(b.op("Pad", [x.name, b.ints(pads)], out, batch=x.batch, mode=mode))
    elif kind == "transpose":
        if x.rank <= 1 and b.chance(0.5):
            b.put(b.op("Transpose", [x.name], x.shape, batch=x.batch))  # no perm: reverses
            return
        b.put(b.op("Transpose", [x.name], x.shape, batch=x.batch, perm=list(range(x.rank))))
    elif kind == "cast":
        b.put(b.op("Cast", [x.name], x.shape, batch=x.batch, to=b.ft))
    elif kind == "single":
        op = b.choice(["Concat", "Sum", "Max", "Min", "Mean"])
        attrs = {"axis": -1} if op == "Concat" else {}
        b.put(b.op(op, [x.name], x.shape, batch=x.batch, **attrs))
    else:
        ends = b.ints([np.iinfo(np.int64).max] * x.rank if not near else [-1] * x.rank)
        out = x.shape if not near else tuple(max(d - 1, 0) for d in x.shape)
        if near and (0 in out or (b.dynamic and x.batch)):
            ends, out = b.ints([np.iinfo(np.int64).max] * x.rank), x.shape
        b.put(b.op("Slice", [x.name, b.ints([0] * x.rank), ends], out, batch=x.batch))
