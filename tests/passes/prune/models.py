"""Tiny hand-made graphs for the pruning tests (weights chosen so some channels carry nothing);
the builders of one test module only stay in it."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def _seeded(fn):
    """Each builder draws its weights from a fresh generator: results never depend on order."""

    def wrapper(*args, **kwargs):
        global RNG
        RNG = np.random.default_rng(1234)
        return fn(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _w(*shape: int, zero: tuple[int, ...] = (), axis: int = 0) -> np.ndarray:
    w = RNG.standard_normal(shape).astype(np.float32) * 0.5
    idx = [slice(None)] * len(shape)
    idx[axis] = list(zero)
    w[tuple(idx)] = 0.0
    return w


def _model(
    nodes: list,
    inits: dict[str, np.ndarray],
    x_shape: list,
    y_shape: list,
    opset: int = 17,
    check: bool = True,
) -> onnx.ModelProto:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if check:
        onnx.checker.check_model(m)
    return m


@_seeded
def residual_block(zero: tuple[int, ...] = (1, 5)) -> onnx.ModelProto:
    """x -> c1 -> Relu -> c2 -> Add(., relu1) -> Relu -> c3 (1x1) -> y. Channels ``zero`` of the
    residual stream are zero in c1 and c2."""
    inits = {
        "w1": _w(8, 4, 3, 3, zero=zero),
        "b1": _w(8, zero=zero),
        "w2": _w(8, 8, 3, 3, zero=zero),
        "b2": _w(8, zero=zero),
        "w3": _w(4, 8, 1, 1),
        "b3": _w(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], name="c3"),
    ]
    return _model(nodes, inits, [2, 4, 8, 8], [2, 4, 8, 8])


@_seeded
def conv_chain(width: int = 16) -> onnx.ModelProto:
    """x(4) -> c1(width) -> Relu -> c2(width) -> Relu -> c3(4) -> y, 1x1 convs: two groups of
    equal cost, so a uniform ratio moves both at once."""
    inits = {"w1": _w(width, 4, 1, 1), "w2": _w(width, width, 1, 1), "w3": _w(4, width, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="c2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="c3"),
    ]
    return _model(nodes, inits, [1, 4, 4, 4], [1, 4, 4, 4])


@_seeded
def concat_branches() -> onnx.ModelProto:
    """Two conv branches (6 and 4 channels, channels 0 and 1 zero) concatenated into a conv."""
    inits = {
        "wa": _w(6, 3, 3, 3, zero=(0,)),
        "ba": _w(6, zero=(0,)),
        "wb": _w(4, 3, 1, 1, zero=(1,)),
        "bb": _w(4, zero=(1,)),
        "wc": _w(5, 10, 3, 3),
        "bc": _w(5),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa", "ba"], ["a"], name="a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="ra"),
        helper.make_node("Conv", ["x", "wb", "bb"], ["b"], name="b"),
        helper.make_node("Sigmoid", ["b"], ["sb"], name="sb"),
        helper.make_node("Mul", ["b", "sb"], ["rb"], name="swish"),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc", "bc"], ["y"], name="c", pads=[1, 1, 1, 1]),
    ]
    return _model(nodes, inits, [1, 3, 6, 6], [1, 5, 6, 6])


@_seeded
def depthwise_separable() -> onnx.ModelProto:
    """pw1 (8) -> BN -> Relu -> depthwise 3x3 -> Relu -> pw2 (4); channels 2, 3, 7 carry nothing."""
    z = (2, 3, 7)
    inits = {
        "w1": _w(8, 4, 1, 1, zero=z),
        "g": np.where(np.isin(np.arange(8), z), 0.0, 1.2).astype(np.float32),
        "be": _w(8, zero=z),
        "mu": _w(8),
        "var": (np.abs(_w(8)) + 0.5).astype(np.float32),
        "wd": _w(8, 1, 3, 3),
        "bd": _w(8, zero=z),
        "w2": _w(4, 8, 1, 1),
        "b2": _w(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="pw1"),
        helper.make_node("BatchNormalization", ["p", "g", "be", "mu", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="r"),
        helper.make_node("Conv", ["r", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d"], ["rd"], name="relu6"),
        helper.make_node("Conv", ["rd", "w2", "b2"], ["y"], name="pw2"),
    ]
    return _model(nodes, inits, [1, 4, 5, 5], [1, 4, 5, 5])


@_seeded
def flatten_gemm(reshape: bool = False) -> onnx.ModelProto:
    """Conv (6, channels 0 and 4 zero) -> Relu -> Flatten (or Reshape [1, 96]) -> Gemm(10)."""
    inits = {
        "w": _w(6, 2, 3, 3, zero=(0, 4)),
        "b": _w(6, zero=(0, 4)),
        "fw": _w(10, 96),
        "fb": _w(10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    if reshape:
        inits["shape"] = np.array([1, 96], dtype=np.int64)
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"))
    else:
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1))
    nodes.append(helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc", transB=1))
    return _model(nodes, inits, [1, 2, 4, 4], [1, 10])


@_seeded
def unknown_op() -> onnx.ModelProto:
    """Conv (6) -> LpNormalization over channels (not understood) -> Conv: the group closes.
    A second conv pair after it stays prunable."""
    inits = {"w1": _w(6, 3, 1, 1), "w2": _w(5, 6, 1, 1), "w3": _w(4, 5, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="c1"),
        helper.make_node("LpNormalization", ["a"], ["n"], name="lpnorm", axis=1),
        helper.make_node("Conv", ["n", "w2"], ["b"], name="c2"),
        helper.make_node("Relu", ["b"], ["rb"], name="rb"),
        helper.make_node("Conv", ["rb", "w3"], ["y"], name="c3"),
    ]
    return _model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4])


@_seeded
def linear_toy(zero: bool) -> onnx.ModelProto:
    """x[N,8] -> MatMul (6) -> MatMul (3). Channels 4, 5 are either zero or small copies of
    channels 0, 1 (no signal the kept channels do not already carry)."""
    w1 = _w(8, 6)
    w1[:, 4] = 0.0 if zero else 0.05 * w1[:, 0]
    w1[:, 5] = 0.0 if zero else -0.05 * w1[:, 1]
    inits = {"w1": w1, "w2": _w(6, 3)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], name="fc2"),
    ]
    return _model(nodes, inits, ["n", 8], ["n", 3])


@_seeded
def attention(zero_head: int = 1, heads: int = 4, dh: int = 4, seq: int = 5) -> onnx.ModelProto:
    """One self-attention block with constant Reshapes; head ``zero_head`` has zero Q/K/V."""
    hid = heads * dh
    cols = list(range(zero_head * dh, (zero_head + 1) * dh))
    inits = {
        "wq": _w(hid, hid, zero=tuple(cols), axis=1),
        "wk": _w(hid, hid, zero=tuple(cols), axis=1),
        "wv": _w(hid, hid, zero=tuple(cols), axis=1),
        "bv": _w(hid, zero=tuple(cols)),
        "wo": _w(hid, hid),
        "bo": _w(hid),
        "split": np.array([1, seq, heads, dh], np.int64),
        "merge": np.array([1, seq, hid], np.int64),
        "scale": np.array(1 / np.sqrt(dh), np.float32),
    }
    nodes = []
    for n in ("q", "k", "v"):
        src = f"{n}m"
        nodes.append(helper.make_node("MatMul", ["x", f"w{n}"], [src], name=f"{n}_proj"))
        if n == "v":
            nodes.append(helper.make_node("Add", [src, "bv"], ["vb"], name="v_bias"))
            src = "vb"
        nodes.append(helper.make_node("Reshape", [src, "split"], [f"{n}r"], name=f"{n}_split"))
        perm = [0, 2, 3, 1] if n == "k" else [0, 2, 1, 3]
        nodes.append(helper.make_node("Transpose", [f"{n}r"], [f"{n}t"], name=f"{n}_t", perm=perm))
    nodes += [
        helper.make_node("MatMul", ["qt", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale_mul"),
        helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "vt"], ["c"], name="context"),
        helper.make_node("Transpose", ["c"], ["ct"], name="c_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ct", "merge"], ["cm"], name="merge_heads"),
        helper.make_node("MatMul", ["cm", "wo"], ["o"], name="o_proj"),
        helper.make_node("Add", ["o", "bo"], ["y"], name="o_bias"),
    ]
    return _model(nodes, inits, [1, seq, hid], [1, seq, hid])


@_seeded
def concat_split() -> onnx.ModelProto:
    """Two convs (4 and 6, channels 0 and 1 zero) concatenated, Relu, then split back into the
    same parts, each part into its own 1x1 conv; the two results are added."""
    inits = {
        "wa": _w(4, 3, 1, 1, zero=(0,)),
        "wb": _w(6, 3, 1, 1, zero=(1,)),
        "wc": _w(5, 4, 1, 1),
        "wd": _w(5, 6, 1, 1),
        "sizes": np.array([4, 6], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Split", ["r", "sizes"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Conv", ["s0", "wc"], ["c"], name="c"),
        helper.make_node("Conv", ["s1", "wd"], ["d"], name="d"),
        helper.make_node("Add", ["c", "d"], ["y"], name="add"),
    ]
    return _model(nodes, inits, [1, 3, 4, 4], [1, 5, 4, 4])


@_seeded
def resnext_block(zero_group: int = 1, channels: int = 16, groups: int = 4) -> onnx.ModelProto:
    """pw1 (1x1) -> Relu -> grouped 3x3 (C_in = C_out, ``groups`` conv-groups) -> Relu -> pw2 (4).
    Conv-group ``zero_group`` carries nothing (zero in pw1 and in the grouped conv's bias)."""
    per = channels // groups
    z = tuple(range(zero_group * per, (zero_group + 1) * per))
    inits = {
        "w1": _w(channels, 4, 1, 1, zero=z),
        "b1": _w(channels, zero=z),
        "wg": _w(channels, per, 3, 3),
        "bg": _w(channels, zero=z),
        "w2": _w(4, channels, 1, 1),
        "b2": _w(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["p"], name="pw1"),
        helper.make_node("Relu", ["p"], ["r"], name="r"),
        helper.make_node(
            "Conv", ["r", "wg", "bg"], ["g"], name="gconv", group=groups, pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["g"], ["rg"], name="rg"),
        helper.make_node("Conv", ["rg", "w2", "b2"], ["y"], name="pw2"),
    ]
    return _model(nodes, inits, [1, 4, 6, 6], [1, 4, 6, 6])


@_seeded
def concat_grouped(
    sizes: tuple[int, int] = (8, 8), groups: int = 4, op: str = "Conv"
) -> onnx.ModelProto:
    """Two 1x1 convs (``sizes``) concatenated into a grouped conv (``groups`` conv-groups, C_in =
    C_out) or, with ``op="GroupNormalization"``, a GroupNormalization (opset 21), then a 1x1."""
    c = sum(sizes)
    inits = {"wa": _w(sizes[0], 3, 1, 1), "wb": _w(sizes[1], 3, 1, 1), "wc": _w(4, c, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
    ]
    if op == "Conv":
        inits["wg"] = _w(c, c // groups, 3, 3)
        nodes.append(
            helper.make_node(
                "Conv", ["cat", "wg"], ["g"], name="mid", group=groups, pads=[1, 1, 1, 1]
            )
        )
    else:
        inits["s"], inits["t"] = _w(c), _w(c)
        nodes.append(
            helper.make_node(
                "GroupNormalization", ["cat", "s", "t"], ["g"], name="mid", num_groups=groups
            )
        )
    nodes.append(helper.make_node("Conv", ["g", "wc"], ["y"], name="c"))
    return _model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4], opset=21)


@_seeded
def channel_multiplier() -> onnx.ModelProto:
    """pw1 (8) -> grouped conv 8 -> 16 (group 8, a channel multiplier of 2) -> pw2 (4)."""
    inits = {"w1": _w(8, 3, 1, 1), "wg": _w(16, 1, 3, 3), "w2": _w(4, 16, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["p"], name="pw1"),
        helper.make_node("Conv", ["p", "wg"], ["g"], name="gconv", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="pw2"),
    ]
    return _model(nodes, inits, [1, 3, 4, 4], [1, 4, 4, 4])


@_seeded
def group_norm_block(opset: int = 21, zero_group: int = 1) -> onnx.ModelProto:
    """Conv (8) -> GroupNormalization (4 norm groups of 2) -> Relu -> Conv (4). Norm group
    ``zero_group`` carries nothing (zero in the conv and in the norm's bias). At opset 18 scale
    and bias have one entry per norm group, from opset 21 one per channel. onnx's checker
    rejects GroupNormalization-18 as deprecated, so that model is not checked."""
    z = (2 * zero_group, 2 * zero_group + 1)
    n = 8 if opset >= 21 else 4
    inits = {
        "w": _w(8, 3, 3, 3, zero=z),
        "b": _w(8, zero=z),
        "s": (np.abs(_w(n)) + 0.5).astype(np.float32),
        "t": _w(n, zero=z if n == 8 else (zero_group,)),
        "w2": _w(4, 8, 1, 1),
        "b2": _w(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("GroupNormalization", ["c", "s", "t"], ["n"], name="gn", num_groups=4),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="c2"),
    ]
    return _model(nodes, inits, [1, 3, 5, 5], [1, 4, 5, 5], opset=opset, check=opset >= 21)


@_seeded
def concat_slice(
    second: tuple[list, list, list] = ([4], [10], [1]), steps: list | None = None
) -> onnx.ModelProto:
    """Two convs (4 and 6, channels 0 and 1 zero) concatenated, Relu, then taken back apart by
    two Slices: ``[0:4]`` on axis 1, and (starts, ends, axes) ``second``; each into a 1x1 conv,
    the results added. ``steps`` are the second Slice's steps."""
    inits = {
        "wa": _w(4, 3, 1, 1, zero=(0,)),
        "wb": _w(6, 3, 1, 1, zero=(1,)),
        "wc": _w(5, 4, 1, 1),
        "wd": _w(5, 6, 1, 1),
        "s0": np.array([0], np.int64),
        "e0": np.array([4], np.int64),
        "ax0": np.array([1], np.int64),
        "s1": np.array(second[0], np.int64),
        "e1": np.array(second[1], np.int64),
        "ax1": np.array(second[2], np.int64),
    }
    slice1 = ["r", "s1", "e1", "ax1"]
    if steps is not None:
        inits["st1"] = np.array(steps, np.int64)
        slice1.append("st1")
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="a"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="b"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Relu", ["cat"], ["r"], name="relu"),
        helper.make_node("Slice", ["r", "s0", "e0", "ax0"], ["p0"], name="slice0"),
        helper.make_node("Slice", slice1, ["p1"], name="slice1"),
        helper.make_node("Conv", ["p0", "wc"], ["c"], name="c"),
        helper.make_node("Conv", ["p1", "wd"], ["d"], name="d"),
        helper.make_node("Add", ["c", "d"], ["y"], name="add"),
    ]
    return _model(nodes, inits, [1, 3, 4, 4], [1, 5, 4, 4])


def _const(nodes: list, name: str, value: list) -> str:
    """A Constant node of int64 ``value`` appended to ``nodes``; returns its output."""
    t = numpy_helper.from_array(np.array(value, np.int64), name)
    nodes.append(helper.make_node("Constant", [], [name], name=name, value=t))
    return name


def _shape(nodes: list, name: str, kind: str, pieces: list[list]) -> str:
    """A shape: one Constant, or (``kind="concat"``) a Concat of one Constant per piece."""
    if kind != "concat":
        return _const(nodes, name, [v for p in pieces for v in p])
    parts = [_const(nodes, f"{name}{i}", p) for i, p in enumerate(pieces)]
    nodes.append(helper.make_node("Concat", parts, [name], name=f"{name}_cat", axis=0))
    return name


def _convs(sizes: tuple[int, ...], zero: tuple[int, ...], inits: dict, nodes: list) -> str:
    """1x1 convs of x[1, 8, ..] with ``sizes`` channels (channels ``zero`` of the whole carry
    nothing), concatenated when several; returns the tensor they make."""
    outs, start = [], 0
    for k, n in enumerate(sizes):
        name = "conv" if len(sizes) == 1 else f"conv{k}"
        zk = tuple(c - start for c in zero if start <= c < start + n)
        inits[f"w_{name}"], inits[f"b_{name}"] = _w(n, 8, 1, 1, zero=zk), _w(n, zero=zk)
        nodes.append(helper.make_node("Conv", ["x", f"w_{name}", f"b_{name}"], [name], name=name))
        outs.append(name)
        start += n
    if len(outs) == 1:
        return outs[0]
    nodes.append(helper.make_node("Concat", outs, ["c"], name="cat", axis=1))
    return "c"


@_seeded
def torch_group_norm(
    split: str = "minus-one", back: str = "shape", sizes: tuple[int, ...] = (8,)
) -> onnx.ModelProto:
    """x[1, 8, 4, 4] -> 1x1 convs (``sizes`` channels, concatenated when several; 8 in all) ->
    GroupNorm(4, 8) as torch exports it: Reshape to ``[N, 4, -1]``, InstanceNormalization (4
    scale/bias entries), Reshape back, Mul by gamma and Add beta ``[8, 1, 1]`` -> Relu -> 1x1
    conv (4). Norm group 1 (channels 2, 3) carries nothing (zero in the convs and in beta).

    ``split``: the first shape, ``"minus-one"`` ``[0, 4, -1]``, ``"explicit"`` ``[1, 4, 32]``,
    ``"concat"`` a Concat of Constants ``[0] [4] [-1]`` (as TorchScript builds shapes).
    ``back``: ``"shape"`` Shape of the conv output, ``"constant"`` ``[1, 8, 4, 4]``, ``"concat"``
    Concat ``[1] [8] [4, 4]``, ``"input"`` Shape of the graph input (8 channels too, but no part
    of the group), ``"pairs"`` Reshape ``[1, 2, 64]`` (two norm groups a row) then constant."""
    z = (2, 3)
    inits: dict[str, np.ndarray] = {
        "gamma": (np.abs(_w(8, 1, 1)) + 0.5).astype(np.float32),
        "beta": _w(8, 1, 1, zero=z),
        "s": np.ones(4, np.float32),
        "t": np.zeros(4, np.float32),
        "w2": _w(4, 8, 1, 1),
    }
    nodes: list = []
    c = _convs(sizes, z, inits, nodes)
    first = {
        "minus-one": [[0], [4], [-1]],
        "explicit": [[1], [4], [32]],
        "concat": [[0], [4], [-1]],
    }[split]
    to_groups = _shape(nodes, "to_groups", split, first)
    nodes.append(helper.make_node("Reshape", [c, to_groups], ["g"], name="split"))
    nodes.append(helper.make_node("InstanceNormalization", ["g", "s", "t"], ["gn"], name="inorm"))
    if back in ("shape", "input"):
        nodes.append(
            helper.make_node("Shape", [c if back == "shape" else "x"], ["back"], name="shape_of")
        )
        target = "back"
    elif back == "pairs":
        to_pairs = _const(nodes, "to_pairs", [1, 2, 64])
        nodes.append(helper.make_node("Reshape", ["gn", to_pairs], ["gp"], name="pairs"))
        target = _const(nodes, "back", [1, 8, 4, 4])
    else:
        target = _shape(nodes, "back", back, [[1], [8], [4, 4]])
    src = "gp" if back == "pairs" else "gn"
    nodes += [
        helper.make_node("Reshape", [src, target], ["n"], name="merge"),
        helper.make_node("Mul", ["n", "gamma"], ["m"], name="mul_gamma"),
        helper.make_node("Add", ["m", "beta"], ["a"], name="add_beta"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    return _model(nodes, inits, [1, 8, 4, 4], [1, 4, 4, 4])


@_seeded
def shared_weight() -> onnx.ModelProto:
    """Two convs reading one weight ``w`` (as after dedup-initializers), added: one group."""
    inits = {"w": _w(8, 4, 1, 1, zero=(2, 6)), "w3": _w(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="ca"),
        helper.make_node("Conv", ["x", "w"], ["b"], name="cb", dilations=[1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w3"], ["y"], name="c3"),
    ]
    return _model(nodes, inits, [1, 4, 4, 4], [1, 4, 4, 4])
