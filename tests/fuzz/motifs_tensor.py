"""Fuzzing motifs over layouts and shapes: Transpose / Reshape / Flatten / Squeeze chains,
``Shape -> Gather -> Reshape`` index paths, arithmetic no-ops with broadcasting, and
Concat / Split / Slice with negative axes and clamped ends.

In dynamic graphs dim 0 stays in place and no constant holds its size (see ``builder``)."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from tests.fuzz.builder import Builder, T

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


def _perm(b: Builder, rank: int, keep_first: bool) -> list[int]:
    rest = list(range(1 if keep_first else 0, rank))
    order = [int(i) for i in b.rng.permutation(rest)]
    return ([0] if keep_first else []) + order


def _transpose_pair(b: Builder, x: T) -> T:
    keep = bool(b.dynamic) or b.chance(0.3)
    p = _perm(b, x.rank, keep)
    t = b.op(
        "Transpose", [x.name], tuple(x.shape[i] for i in p), batch=x.batch and p[0] == 0, perm=p
    )
    q = [p.index(i) for i in range(x.rank)] if b.chance(0.6) else _perm(b, x.rank, keep)
    return b.op(
        "Transpose", [t.name], tuple(t.shape[i] for i in q), batch=t.batch and q[0] == 0, perm=q
    )


def _reshape_chain(b: Builder, x: T, flatten: bool) -> T:
    flat = int(np.prod(x.shape[1:]))
    if flatten:
        t = b.op("Flatten", [x.name], (x.shape[0], flat), batch=x.batch, axis=1)
    else:
        target = b.ints(b.choice([[0, -1], [0, flat]]))
        t = b.op("Reshape", [x.name, target], (x.shape[0], flat), batch=x.batch)
    back = list(x.shape)
    back[0] = 0 if b.dynamic or b.chance(0.5) else back[0]
    if b.chance(0.3) and 0 not in back[1:]:
        back[int(b.rng.integers(1, x.rank))] = -1
    return b.op("Reshape", [t.name, b.ints(back)], x.shape, batch=x.batch)


def _unsqueeze_squeeze(b: Builder, x: T) -> T:
    r = x.rank
    a = int(b.rng.integers(1, r + 1))
    spelled = a - (r + 1) if b.chance(0.5) else a
    t = b.op(
        "Unsqueeze", [x.name, b.ints([spelled])], x.shape[:a] + (1,) + x.shape[a:], batch=x.batch
    )
    a2 = a if b.chance(0.8) else int(b.rng.integers(1, r + 1))
    a2 = a2 if t.shape[a2] == 1 else a
    s2 = a2 - (r + 1) if b.chance(0.5) else a2
    return b.op("Squeeze", [t.name, b.ints([s2])], t.shape[:a2] + t.shape[a2 + 1 :], batch=x.batch)


def layout(b: Builder) -> None:
    """Transpose pairs (inverse or not), Reshape chains (with 0 / -1), Flatten then Reshape,
    Unsqueeze/Squeeze pairs with negative axes, a Reshape to the tensor's own shape."""
    x = b.take(min_rank=2)
    kind = b.choice(["transpose", "reshape", "flatten", "unsqueeze", "squeeze", "own"])
    r = x.rank
    if kind == "transpose":
        y = _transpose_pair(b, x)
    elif kind in ("reshape", "flatten"):
        y = _reshape_chain(b, x, kind == "flatten")
    elif kind == "unsqueeze":
        y = _unsqueeze_squeeze(b, x)
    elif kind == "squeeze" and any(d == 1 for d in x.shape[1:]):
        a = 1 + list(x.shape[1:]).index(1)
        axes = b.ints([a - r if b.chance(0.5) else a])
        t = b.op("Squeeze", [x.name, axes], x.shape[:a] + x.shape[a + 1 :], batch=x.batch)
        y = b.op("Unsqueeze", [t.name, b.ints([a])], x.shape, batch=x.batch)
    else:
        shape = [0] * r if b.chance(0.4) else list(x.shape)
        if b.dynamic:
            shape[0] = 0
        y = b.op("Reshape", [x.name, b.ints(shape)], x.shape, batch=x.batch)
    b.put(y)


def shape_path(b: Builder) -> None:
    """int64 shape arithmetic: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` (negative
    indices, opset-15 start/end), ``Size``, ``ConstantOfShape(Shape(x))``, ``Expand`` to
    ``Shape(x)``, ``Range`` over a dim."""
    x = b.take(min_rank=2)
    kind = b.choice(["flatten", "flatten", "cos", "expand", "range"])
    if kind == "flatten":
        if b.opset >= 15 and b.chance(0.3):
            s = b.node("Shape", [x.name], start=0, end=1)[0]
            d0 = s
        else:
            s = b.node("Shape", [x.name])[0]
            idx = b.choice([0, -x.rank]) if b.chance(0.5) else b.choice([[0], [-x.rank]])
            d0 = b.node("Gather", [s, b.ints(idx)], axis=0)[0]
            if np.ndim(idx) == 0:
                d0 = b.node("Unsqueeze", [d0, b.ints([0])])[0]
        if b.chance(0.3):
            d0 = b.node("Mul", [d0, b.ints([1])])[0]
        rest = b.ints([-1])
        if b.chance(0.3) and x.rank == 3:
            dims = [
                b.node("Gather", [b.node("Shape", [x.name])[0], b.ints([i])])[0] for i in (1, 2)
            ]
            rest = b.node("Mul", dims)[0]
        shape = b.node("Concat", [d0, rest], axis=0)[0]
        b.put(
            b.op("Reshape", [x.name, shape], (x.shape[0], int(np.prod(x.shape[1:]))), batch=x.batch)
        )
    elif kind == "cos":
        value = np.array([b.choice([0.0, 1.0, 2.0])], b.np_float)
        c = b.op(
            "ConstantOfShape",
            [b.node("Shape", [x.name])[0]],
            x.shape,
            batch=x.batch,
            value=numpy_helper.from_array(value),
        )
        op = "Add" if value[0] == 0.0 or b.chance(0.5) else "Mul"
        b.put(b.op(op, [x.name, c.name], x.shape, batch=x.batch))
    elif kind == "expand":
        c = b.const(np.array(b.rng.standard_normal(x.shape[-1:])))
        e = b.op("Expand", [c, b.node("Shape", [x.name])[0]], x.shape, batch=x.batch)
        b.put(b.op("Add", [x.name, e.name], x.shape, batch=x.batch))
    else:
        last = b.node("Gather", [b.node("Shape", [x.name])[0], b.ints(-1)], axis=0)[0]
        rng = b.node("Range", [b.ints(0), last, b.ints(1)])[0]
        f = b.op("Cast", [rng], (x.shape[-1],), to=b.ft)
        b.put(b.op("Add", [x.name, f.name], x.shape, batch=x.batch))


def arith_noop(b: Builder) -> None:
    """x·1, 1·x, x+0, x−0, x/1, x^1 with constants that broadcast (or grow) x, and the
    near misses 0−x, 1/x, x·1.001; also on an int64 shape path."""
    if b.chance(0.15):
        x = b.take(min_rank=1)
        s = b.node("Shape", [x.name])[0]
        s = b.node(b.choice(["Mul", "Div"]), [s, b.ints(1 if b.chance(0.5) else [1])])[0]
        s = b.node(b.choice(["Add", "Sub"]), [s, b.ints(0)])[0]
        b.put(b.op("Reshape", [x.name, s], x.shape, batch=x.batch))
        return
    x = b.take()
    op = b.choice(["Mul", "Add", "Sub", "Div", "Pow"])
    ident = 1.0 if op in ("Mul", "Div", "Pow") else 0.0
    shapes = [(), (1,), x.shape[-1:], (1,) * x.rank, x.shape[1:]]
    if not b.dynamic:
        shapes += [(2,) + (1,) * x.rank, (3,) + x.shape]
    if x.rank and x.shape[-1] == 1:
        shapes.append((4,))  # broadcasts x's last axis from 1 to 4
    shape = b.choice(shapes)
    value = np.full(shape, ident)
    near = b.chance(0.1)
    if near:
        value = value + (1e-3 if op != "Pow" else 1.0)
    if op == "Add" and b.chance(0.2):
        value = -value  # x + (−0.0)
    ins = [x.name, b.const(value)]
    if (op in ("Mul", "Add") and b.chance(0.4)) or (op in ("Sub", "Div") and b.chance(0.1)):
        ins.reverse()
    out_shape = tuple(np.broadcast_shapes(x.shape, shape))
    b.put(b.op(op, ins, out_shape, batch=x.batch and len(shape) <= x.rank))


def concat_split_slice(b: Builder) -> None:
    """Concat with a negative axis, Split (sizes as an input, or opset-18 num_outputs, uneven)
    then Concat in the same or another order, Slice with negative axes and starts, ends past
    the dim (clamped), INT64 bounds, negative steps, full-range slices."""
    x = b.take(min_rank=1)
    r = x.rank
    lo = 1 if (b.dynamic and r > 1) else 0
    axis = int(b.rng.integers(lo, r)) if r > lo else 0
    spelled = axis - r if b.chance(0.5) else axis
    kind = b.choice(["concat", "split", "slice", "slice"])
    if kind == "concat":
        other = x if b.chance(0.5) else b.like(x)
        shape = list(x.shape)
        shape[axis] *= 2
        b.put(b.op("Concat", [x.name, other.name], tuple(shape), batch=x.batch, axis=spelled))
    elif kind == "split" and x.shape[axis] >= 2 and not (b.dynamic and axis == 0):
        n = x.shape[axis]
        if b.opset >= 18 and b.chance(0.4):
            k = int(b.choice([2, 3])) if n >= 3 else 2
            size = -(-n // k)
            sizes = [size] * (n // size) + ([n % size] if n % size else [])
            outs = b.node("Split", [x.name], len(sizes), axis=spelled, num_outputs=len(sizes))
        else:
            first = int(b.rng.integers(1, n))
            sizes = [first, n - first]
            outs = b.node("Split", [x.name, b.ints(sizes)], 2, axis=spelled)
        order = list(range(len(outs)))
        if b.chance(0.4):
            order.reverse()
        b.put(b.op("Concat", [outs[i] for i in order], x.shape, batch=x.batch, axis=spelled))
    else:
        _slice(b, x, axis, spelled)


def _slice(b: Builder, x: T, axis: int, spelled: int) -> None:
    n = x.shape[axis]
    step = int(b.choice([1, 1, 1, 2, -1]))
    if b.dynamic and x.batch and axis == 0:  # the batch varies: only the full range
        start, end, step = 0, INT64_MAX, 1
    elif step > 0:
        start = int(b.choice([0, 0, 1, -1, -n, INT64_MIN]))
        end = int(b.choice([n, n + 3, INT64_MAX, -1, 1]))
    else:
        start = int(b.choice([-1, n - 1, INT64_MAX]))
        end = int(b.choice([INT64_MIN, -n - 1, 0]))
    idx = list(range(n))[slice(start, end, step)]
    if not idx:
        start, end, step = 0, n, 1
        idx = list(range(n))
    shape = list(x.shape)
    shape[axis] = len(idx)
    ins = [x.name, b.ints([start]), b.ints([end])]
    if step != 1 or axis != 0 or b.chance(0.5):
        ins.append(b.ints([spelled]))
        if step != 1 or b.chance(0.5):
            ins.append(b.ints([step]))
    y = b.op("Slice", ins, tuple(shape), batch=x.batch)
    b.put(y)
