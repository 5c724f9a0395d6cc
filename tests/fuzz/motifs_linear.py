"""Fuzzing motifs around matrix products: MatMul+Add (Gemm), transposed operands, scalar
scales, BN after a 2-D MatMul, attention blocks, and embeddings read through int64 indices."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from tests.fuzz.builder import BATCH, Builder, T
from tests.fuzz.motifs_conv import batchnorm
from tests.fuzz.motifs_norm import layernorm_on


def matmul_add(b: Builder) -> None:
    """x·W + c with every bias shape Gemm can and cannot take, transposed weights, a bias that
    is not constant, a scalar scale after the product, BN after a 2-D product."""
    x = b.take(min_rank=2, max_rank=3)
    k, n = x.shape[-1], int(b.choice([1, 2, 3, 4, 8]))
    kind = b.choice(["plain", "plain", "trans_b", "trans_a", "batched", "bn"])
    if kind == "trans_a" and (x.rank != 2 or b.dynamic):
        kind = "plain"
    if kind == "batched" and x.rank != 3:
        kind = "plain"
    if kind == "trans_b":
        wt = b.weight((n, k))
        w = b.op("Transpose", [wt], (k, n), perm=[1, 0]).name
        y = b.op("MatMul", [x.name, w], (*x.shape[:-1], n), batch=x.batch)
    elif kind == "trans_a":
        xt = b.op("Transpose", [x.name], (x.shape[1], x.shape[0]), perm=[1, 0])
        y = b.op("MatMul", [xt.name, b.weight((x.shape[0], n))], (x.shape[1], n))
    elif kind == "batched":  # x · otherᵀ over the last two axes (FusedMatMul transB)
        other = b.input((x.shape[0], n, k))
        ot = b.op("Transpose", [other.name], (x.shape[0], k, n), batch=x.batch, perm=[0, 2, 1])
        y = b.op("MatMul", [x.name, ot.name], (x.shape[0], x.shape[1], n), batch=x.batch)
    else:
        y = b.op("MatMul", [x.name, b.weight((k, n))], (*x.shape[:-1], n), batch=x.batch)
    if kind == "bn" and y.rank == 2:
        b.put(batchnorm(b, y))
        return
    if b.chance(0.15):
        b.output(y)
    _bias(b, y)


def _bias(b: Builder, y: T) -> None:
    n = y.shape[-1]
    if b.chance(0.08):  # y + y: the product is not its own bias
        b.put(b.op("Add", [y.name, y.name], y.shape, batch=y.batch))
        return
    shapes = [(n,), (n,), (1, n), (), (1,)]
    if y.rank == 2 and not b.dynamic:
        shapes += [y.shape, (2, 1, n)]  # the latter broadcasts the product up a rank
    shape = b.choice(shapes)
    if b.chance(0.15):
        c = b.input(shape if shape else (1,), batch=False).name
        shape = shape if shape else (1,)
    else:
        c = b.weight(shape)
    ins = [y.name, c] if b.chance(0.7) else [c, y.name]
    out = b.op(
        "Add",
        ins,
        tuple(np.broadcast_shapes(y.shape, shape)),
        batch=y.batch and len(shape) <= y.rank,
    )
    if b.chance(0.3):
        s = b.const(np.array(b.choice([0.5, 2.0, 0.125])))
        out = b.op(b.choice(["Mul", "Div"]), [out.name, s], out.shape, batch=out.batch)
    b.put(out)


def _heads(b: Builder, t: T, seq: int, heads: int, d: int) -> T:
    """[B, S, H·d] -> [B, S, H, d] as the exporters write the shape."""
    style = b.choice(["zeros", "minus", "static", "dynamic"])
    if style == "static" and b.dynamic:
        style = "zeros"
    if style == "dynamic":
        s = b.node("Shape", [t.name])[0]
        dims = [b.node("Gather", [s, b.ints(i)])[0] for i in (0, 1)]
        dims = [b.node("Unsqueeze", [v, b.ints([0])])[0] for v in dims]
        shape = b.node("Concat", [*dims, b.ints([heads, d])], axis=0)[0]
    else:
        first = {"zeros": [0, 0], "minus": [0, -1], "static": [BATCH, seq]}[style]
        shape = b.ints([*first, heads, d])
    return b.op("Reshape", [t.name, shape], (t.shape[0], seq, heads, d), batch=t.batch)


def _proj(b: Builder, t: T) -> T:
    """x·W [+ b], square."""
    hid = t.shape[-1]
    y = b.op("MatMul", [t.name, b.weight((hid, hid))], t.shape, batch=t.batch)
    if b.chance(0.8):
        y = b.op("Add", [y.name, b.weight((hid,))], t.shape, batch=t.batch)
    return y


def _transposed(b: Builder, t: T, perm: list[int]) -> T:
    return b.op("Transpose", [t.name], tuple(t.shape[p] for p in perm), batch=t.batch, perm=perm)


def _keys(b: Builder, k: T, seq: int, heads: int, d: int) -> T:
    """kᵀ per head: one Transpose [0, 2, 3, 1], or [0, 2, 1, 3] then [0, 1, 3, 2]."""
    kh = _heads(b, k, seq, heads, d)
    if b.chance(0.7):
        return _transposed(b, kh, [0, 2, 3, 1])
    return _transposed(b, _transposed(b, kh, [0, 2, 1, 3]), [0, 1, 3, 2])


def attention(b: Builder) -> None:
    """A BERT-style self-attention block (sometimes cross-attention, a near miss), with the
    exporters' scale, mask and transpose spellings; sometimes residual + LayerNorm after it."""
    heads, d = int(b.choice([1, 2, 4])), int(b.choice([2, 4]))
    hid = heads * d
    fits = [t for t in b.pool if t.rank == 3 and t.shape[-1] == hid and t.elem == b.ft]
    x = (
        b.choice(fits)
        if fits and b.chance(0.7)
        else b.input((BATCH, int(b.choice([1, 3, 4])), hid))
    )
    seq = x.shape[1]
    src = x if b.chance(0.85) else b.input(x.shape, batch=x.batch)  # cross-attention: no fusion
    q, k, v = _proj(b, x), _proj(b, src), _proj(b, src)
    qh = _transposed(b, _heads(b, q, seq, heads, d), [0, 2, 1, 3])
    kt = _keys(b, k, seq, heads, d)
    vh = _transposed(b, _heads(b, v, seq, heads, d), [0, 2, 1, 3])
    scores = b.op("MatMul", [qh.name, kt.name], (x.shape[0], heads, seq, seq), batch=x.batch)
    scores = _scaled_masked(b, scores, float(np.sqrt(d)))
    probs = b.op("Softmax", [scores.name], scores.shape, batch=x.batch, axis=int(b.choice([-1, 3])))
    ctx = _transposed(
        b, b.op("MatMul", [probs.name, vh.name], qh.shape, batch=x.batch), [0, 2, 1, 3]
    )
    shape = b.ints([0, 0, hid] if b.chance(0.7) else [0, -1, hid])
    out = _proj(b, b.op("Reshape", [ctx.name, shape], x.shape, batch=x.batch))
    b.specials = False
    if b.chance(0.5):
        out = b.op("Add", [out.name, x.name], x.shape, batch=x.batch)
        out = layernorm_on(b, out)
    b.put(out)


def _scaled_masked(b: Builder, scores: T, scale: float) -> T:
    """The scores scaled by 1/√d (Div or Mul), plus an additive mask (a float input, or
    (1 − mask)·−10000 from an int64 input) or none."""
    n, seq = scores.shape[0], scores.shape[-1]
    if b.chance(0.5):
        scores = b.op(
            "Div", [scores.name, b.const(np.array(scale))], scores.shape, batch=scores.batch
        )
    else:
        scores = b.op(
            "Mul", [scores.name, b.const(np.array(1 / scale))], scores.shape, batch=scores.batch
        )
    mask = b.choice(["", "float", "int"])
    if mask == "float":
        m = b.input((n, 1, 1, seq), kind="mask")
    elif mask == "int":
        ids = b.input((n, seq), TensorProto.INT64, lo=0, hi=2, kind="mask")
        mf = b.op("Cast", [ids.name], ids.shape, batch=True, to=b.ft)
        inv = b.op("Sub", [b.const(np.array(1.0)), mf.name], ids.shape, batch=True)
        m = b.op("Mul", [inv.name, b.const(np.array(-10000.0))], ids.shape, batch=True)
        m = b.op("Unsqueeze", [m.name, b.ints([1, 2])], (n, 1, 1, seq), batch=True)
    else:
        return scores
    return b.op("Add", [scores.name, m.name], scores.shape, batch=scores.batch)


def embedding(b: Builder) -> None:
    """Gather from a table with int64 ids (graph input, sometimes negative, sometimes through
    ``ids·1``, ``ids+0`` or an int32 round trip) or with ArgMax indices."""
    vocab, dim = int(b.choice([3, 5, 8])), int(b.choice([2, 4, 8]))
    table = b.weight((vocab, dim))
    if b.chance(0.25):  # ArgMax of a graph input: float noise upstream could flip it
        x = b.input(b.random_shape(int(b.rng.integers(2, 4))))
        idx = b.op(
            "ArgMax", [x.name], x.shape[:-1], TensorProto.INT64, batch=x.batch, axis=-1, keepdims=0
        )
        idx = b.op(
            "Clip",
            [idx.name, b.ints(0), b.ints(vocab - 1)],
            idx.shape,
            TensorProto.INT64,
            batch=idx.batch,
        )
    else:
        lo = -vocab if b.chance(0.3) else 0
        seq = int(b.choice([1, 3, 4]))
        idx = b.input((BATCH, seq), TensorProto.INT64, lo=lo, hi=vocab, kind="index")
        way = b.choice(["", "", "mul1", "add0", "int32"])
        if way == "mul1":
            idx = b.op("Mul", [idx.name, b.ints(1)], idx.shape, TensorProto.INT64, batch=True)
        elif way == "add0":
            idx = b.op("Add", [b.ints([0]), idx.name], idx.shape, TensorProto.INT64, batch=True)
        elif way == "int32":
            i32 = b.op(
                "Cast", [idx.name], idx.shape, TensorProto.INT32, batch=True, to=TensorProto.INT32
            )
            idx = b.op(
                "Cast", [i32.name], idx.shape, TensorProto.INT64, batch=True, to=TensorProto.INT64
            )
    b.put(b.op("Gather", [table, idx.name], (*idx.shape, dim), batch=idx.batch, axis=0))


def decayed_weights(b: Builder) -> None:
    """A MatMul weight with entries decayed to subnormal and near-zero values, as weight
    decay leaves them (flush-tiny-weights zeroes them in float32 graphs; float16 weights it
    leaves alone), and the near misses: a weight whose
    small entries are still large beside its largest, and the same tiny values also added as
    a bias (a constant read by an Add is not only a weight: left alone)."""
    x = b.take(min_rank=2, max_rank=3)
    k, n = x.shape[-1], int(b.choice([2, 3, 4, 8]))
    w = b.rng.standard_normal((k, n)) * 0.5
    kind = b.choice(["decayed", "decayed", "small_not_tiny", "shared_with_add"])
    tiny = [1e-40, -3e-39, 1e-20, -1e-15] if b.float_type == "float32" else [1e-7, -1e-9]
    if kind == "small_not_tiny":
        tiny = [1e-3, -2e-4]
    w.flat[:: max(1, w.size // 3)] = tiny[0]
    w.flat[1 :: max(2, w.size // 2)] = tiny[-1]
    c = b.const(w, node=False)
    y = b.op("MatMul", [x.name, c], (*x.shape[:-1], n), batch=x.batch)
    b.specials = False  # 0·Inf is NaN where 1e-40·Inf was Inf: exact on finite inputs only
    if kind == "shared_with_add":
        b.put(b.op("Add", [c, c], (k, n)))
    b.put(y)
