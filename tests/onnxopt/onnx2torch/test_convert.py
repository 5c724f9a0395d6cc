"""ONNX -> torch interpreter: per-op forward parity with onnxruntime, exported blocks, errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.data import Feeds
from onnxopt.errors import OnnxoptError
from onnxopt.onnx2torch.convert import (
    UnsupportedOpsError,
    check_parity,
    to_torch,
    write_back,
)
from onnxopt.runner import Runner

HEAD = '<ir_version: 8, opset_import: ["": {opset}]>\n'

RNG = np.random.default_rng(0)


def _w(*shape: int) -> str:
    vals = RNG.standard_normal(shape).astype(np.float32).round(3).ravel()
    return "{" + ", ".join(f"{v:.3f}" for v in vals) + "}"


# (id, opset, graph text, input shapes); weights are written inline as initializers
CASES = [
    (
        "conv",
        17,
        f"""g (float[2,3,7,7] x) => (float[2,4,4,4] y)
        <float[4,3,3,3] w = {_w(4, 3, 3, 3)}, float[4] b = {_w(4)}>
        {{ y = Conv<pads=[1,1,1,1], strides=[2,2]>(x, w, b) }}""",
        {"x": [2, 3, 7, 7]},
    ),
    (
        "conv_asym_group_dil",
        17,
        f"""g (float[1,4,9,9] x) => (float[1,4,?,?] y)
        <float[4,2,3,3] w = {_w(4, 2, 3, 3)}>
        {{ y = Conv<pads=[0,1,2,0], group=2, dilations=[2,1]>(x, w) }}""",
        {"x": [1, 4, 9, 9]},
    ),
    (
        "conv_same_upper",
        17,
        f"""g (float[1,2,8,8] x) => (float[1,3,4,4] y)
        <float[3,2,3,3] w = {_w(3, 2, 3, 3)}>
        {{ y = Conv<auto_pad="SAME_UPPER", strides=[2,2]>(x, w) }}""",
        {"x": [1, 2, 8, 8]},
    ),
    (
        "conv_transpose",
        17,
        f"""g (float[1,3,5,5] x) => (float[1,2,?,?] y)
        <float[3,2,3,3] w = {_w(3, 2, 3, 3)}, float[2] b = {_w(2)}>
        {{ y = ConvTranspose<strides=[2,2], pads=[1,0,1,1], output_padding=[1,1]>(x, w, b) }}""",
        {"x": [1, 3, 5, 5]},
    ),
    (
        "gemm",
        17,
        f"""g (float[3,4] a) => (float[3,5] y)
        <float[5,4] w = {_w(5, 4)}, float[5] c = {_w(5)}>
        {{ y = Gemm<transB=1, alpha=0.5, beta=2.0>(a, w, c) }}""",
        {"a": [3, 4]},
    ),
    (
        "matmul_batched",
        17,
        f"""g (float[2,3,4] a) => (float[2,3,6] y)
        <float[4,6] w = {_w(4, 6)}>{{ y = MatMul(a, w) }}""",
        {"a": [2, 3, 4]},
    ),
    (
        "batchnorm",
        17,
        f"""g (float[2,3,4,4] x) => (float[2,3,4,4] y)
        <float[3] s = {_w(3)}, float[3] b = {_w(3)}, float[3] m = {_w(3)},
         float[3] v = {{0.5, 1.0, 2.0}}>
        {{ y = BatchNormalization<epsilon=0.001>(x, s, b, m, v) }}""",
        {"x": [2, 3, 4, 4]},
    ),
    (
        "layernorm",
        17,
        f"""g (float[2,5,8] x) => (float[2,5,8] y)
        <float[8] s = {_w(8)}, float[8] b = {_w(8)}>
        {{ y = LayerNormalization<axis=-1, epsilon=0.00001>(x, s, b) }}""",
        {"x": [2, 5, 8]},
    ),
    (
        "activations",
        17,
        """g (float[3,6] x) => (float[3,6] y) {
        r = Relu(x)
        s = Sigmoid(x)
        t = Tanh(r)
        lo = Constant<value_float=-0.5>()
        hi = Constant<value_float=0.5>()
        c = Clip(x, lo, hi)
        e = Erf(x)
        a1 = Add(r, s)
        a2 = Sub(a1, t)
        a3 = Mul(a2, c)
        ab = Abs(x)
        sq = Sqrt(ab)
        one = Constant<value_float=1.0>()
        den = Add(sq, one)
        a4 = Div(a3, den)
        two = Constant<value_float=2.0>()
        a5 = Pow(a4, two)
        y = Add(a5, e)
        }""",
        {"x": [3, 6]},
    ),
    (
        "gelu_softmax",
        20,
        """g (float[2,3,5] x) => (float[2,3,5] y, float[2,3,5] z) {
        y = Gelu(x)
        z = Softmax<axis=1>(x)
        }""",
        {"x": [2, 3, 5]},
    ),
    (
        "gelu_tanh_softmax11",
        20,
        """g (float[2,3,5] x) => (float[2,3,5] y) {
        y = Gelu<approximate="tanh">(x)
        }""",
        {"x": [2, 3, 5]},
    ),
    (
        "softmax_opset11",
        11,
        """g (float[2,3,5] x) => (float[2,3,5] y) {
        y = Softmax<axis=1>(x)
        }""",
        {"x": [2, 3, 5]},
    ),
    (
        "reshape_flatten_transpose",
        17,
        """g (float[2,3,4] x) => (float[4,6] y, float[2,12] z) {
        s = Constant<value=int64[2] {0, -1}>()
        r = Reshape(x, s)
        s2 = Constant<value=int64[2] {6, 4}>()
        r2 = Reshape(r, s2)
        y = Transpose<perm=[1,0]>(r2)
        z = Flatten<axis=1>(x)
        }""",
        {"x": [2, 3, 4]},
    ),
    (
        "concat_split_slice",
        17,
        """g (float[2,6,5] x) => (float[?,?,?] y, float[2,4,5] b) {
        sz = Constant<value=int64[2] {2, 4}>()
        a, b = Split<axis=1>(x, sz)
        st = Constant<value=int64[2] {4, 1}>()
        en = Constant<value=int64[2] {0, 100}>()
        ax = Constant<value=int64[2] {2, 1}>()
        sp = Constant<value=int64[2] {-2, 1}>()
        s = Slice(x, st, en, ax, sp)
        z0 = Constant<value=int64[1] {0}>()
        z2 = Constant<value=int64[1] {2}>()
        s2 = Slice(x, z0, z2, z2)
        o1 = Constant<value=int64[1] {1}>()
        o6 = Constant<value=int64[1] {6}>()
        s3 = Slice(s2, o1, o6, o1)
        y = Concat<axis=2>(s, s3)
        }""",
        {"x": [2, 6, 5]},
    ),
    (
        "gather_squeeze_unsqueeze",
        17,
        f"""g (int64[2,3] ids) => (float[2,3,4] y, float[1,2,3,4] z)
        <float[10,4] emb = {_w(10, 4)}>
        {{
        e = Gather<axis=0>(emb, ids)
        ax = Constant<value=int64[1] {{0}}>()
        z = Unsqueeze(e, ax)
        y = Squeeze(z, ax)
        }}""",
        {"ids": [2, 3]},
    ),
    (
        "squeeze_unsqueeze_opset11",
        11,
        """g (float[1,3,1,4] x) => (float[3,1,4,1] y) {
        s = Squeeze<axes=[0]>(x)
        y = Unsqueeze<axes=[3]>(s)
        }""",
        {"x": [1, 3, 1, 4]},
    ),
    (
        "pooling",
        17,
        """g (float[1,2,7,7] x) => (float[1,2,?,?] a, float[1,2,?,?] b,
                                              float[1,2,1,1] c, float[1,2,?,?] d) {
        a = MaxPool<kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]>(x)
        b = AveragePool<kernel_shape=[3,3], strides=[2,2], pads=[1,1,0,0], ceil_mode=1>(x)
        c = GlobalAveragePool(x)
        d = AveragePool<kernel_shape=[2,2], count_include_pad=1, pads=[1,1,1,1]>(x)
        }""",
        {"x": [1, 2, 7, 7]},
    ),
    (
        "reduce_mean_18",
        18,
        """g (float[2,3,4] x) => (float[2,1,4] y, float[2] z) {
        a1 = Constant<value=int64[1] {1}>()
        a2 = Constant<value=int64[2] {1, 2}>()
        y = ReduceMean(x, a1)
        z = ReduceMean<keepdims=0>(x, a2)
        }""",
        {"x": [2, 3, 4]},
    ),
    (
        "reduce_mean_13",
        13,
        """g (float[2,3,4] x) => (float[2,3,1] y) {
        y = ReduceMean<axes=[-1]>(x)
        }""",
        {"x": [2, 3, 4]},
    ),
    (
        "shape_arith",
        17,
        """g (float[2,3,4] x) => (float[?,?] y) {
        sh = Shape(x)
        i0 = Constant<value=int64 {0}>()
        i1 = Constant<value=int64 {1}>()
        i2 = Constant<value=int64 {2}>()
        ax = Constant<value=int64[1] {0}>()
        n = Gather<axis=0>(sh, i0)
        n1 = Unsqueeze(n, ax)
        d1 = Gather(sh, i1)
        d2 = Gather(sh, i2)
        rest = Mul(d1, d2)
        r1 = Unsqueeze(rest, ax)
        shape = Concat<axis=0>(n1, r1)
        y = Reshape(x, shape)
        }""",
        {"x": [2, 3, 4]},
    ),
    (
        "where_expand_cast",
        17,
        """g (float[2,3] x) => (float[2,3] y, float[4,2,3] z) {
        zero = Constant<value_float=0.0>()
        m = Greater(x, zero)
        nx = Neg(x)
        y = Where(m, x, nx)
        mf = Cast<to=1>(m)
        sh = Constant<value=int64[3] {4, 1, 3}>()
        z = Expand(mf, sh)
        }""",
        {"x": [2, 3]},
    ),
]


def _feeds(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    run = {}
    for name, shape in shapes.items():
        if name == "ids":
            run[name] = rng.integers(0, 10, size=shape).astype(np.int64)
        else:
            run[name] = rng.standard_normal(shape).astype(np.float32)
    return [run]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_parity(case: tuple) -> None:
    _, opset, text, shapes = case
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    onnx.checker.check_model(model)
    runs = _feeds(model, shapes)
    module = to_torch(model)
    err = check_parity(module, model, runs, rtol=1e-5, atol=1e-5)
    assert err < 1e-4


def test_gradients_reach_every_weight() -> None:
    _, opset, text, shapes = CASES[0]
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    module = to_torch(model)
    assert set(module.keys) == {"w", "b"}
    (y,) = module(torch.randn(2, 3, 7, 7))
    y.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.params.values())


def test_operands_are_not_trainable() -> None:
    # the Pow exponent and BatchNormalization statistics stay buffers
    _, opset, text, _ = CASES[6]
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    module = to_torch(model)
    assert set(module.keys) == {"s", "b"}


def test_bn_train_mode_updates_statistics() -> None:
    _, opset, text, shapes = CASES[6]
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    module = to_torch(model, bn_mode="train")
    before = module.initializer_values()["m"].copy()
    module.train()
    module(torch.randn(2, 3, 4, 4) + 3.0)
    assert not np.allclose(module.initializer_values()["m"], before)


def test_unsupported_ops_are_listed_together() -> None:
    model = onnx.parser.parse_model(
        HEAD.format(opset=17)
        + """g (float[2,3] x) => (float[?] y) {
        k = Constant<value=int64[1] {1}>()
        v, i = TopK(x, k)
        a = NonZero(x)
        y = Hardmax(x)
        }"""
    )
    with pytest.raises(UnsupportedOpsError) as e:
        to_torch(model)
    msg = str(e.value)
    assert "Hardmax" in msg and "NonZero" in msg and "TopK" in msg
    assert "\n" not in msg


def test_parity_failure_is_reported() -> None:
    _, opset, text, shapes = CASES[4]
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    module = to_torch(model)
    with torch.no_grad():
        module.params[module.keys["w"]].add_(1.0)
    with pytest.raises(OnnxoptError, match="differs from onnxruntime"):
        check_parity(module, model, _feeds(model, shapes))


def test_write_back_keeps_structure() -> None:
    _, opset, text, shapes = CASES[0]
    model = onnx.parser.parse_model(HEAD.format(opset=opset) + text)
    module = to_torch(model)
    with torch.no_grad():
        module.params[module.keys["b"]].fill_(0.25)
    out = write_back(model, module.initializer_values(), names=module.keys)
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in model.graph.node
    ]
    assert [t.name for t in out.graph.initializer] == [t.name for t in model.graph.initializer]
    assert list(out.opset_import) == list(model.opset_import)
    b = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "b"))
    assert np.allclose(b, 0.25)
    # onnxruntime sees the new bias
    ref = Runner().run(model, Feeds(_feeds(model, shapes)))[0]["y"]
    new = Runner().run(out, Feeds(_feeds(model, shapes)))[0]["y"]
    assert not np.allclose(ref, new)


# ------------------------------------------------------------------ exported torch blocks


class _CnnBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = self.pool(h + torch.nn.functional.hardswish(self.conv2(h)))
        h = torch.nn.functional.avg_pool2d(h, 1)
        return self.fc(torch.flatten(h, 1))


class _TransformerBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.layer = torch.nn.TransformerEncoderLayer(
            16, 2, 32, dropout=0.0, batch_first=True, activation="gelu"
        )
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.layer(self.emb(ids))
        return self.head(h.mean(dim=1)).softmax(-1)


def _export(
    module: torch.nn.Module, example: torch.Tensor, name: str, dynamo: bool, tmp_path
) -> onnx.ModelProto:
    module.eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[name],
        output_names=["y"],
        dynamo=dynamo,
        opset_version=18 if dynamo else 17,
        dynamic_axes=None if dynamo else {name: {0: "N"}},
    )
    return onnx.load(str(path))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("block", ["cnn", "transformer"])
def test_exported_blocks_match(block: str, dynamo: bool, tmp_path) -> None:
    torch.manual_seed(0)
    if block == "cnn":
        module, name = _CnnBlock(), "x"
        example = torch.randn(2, 1, 8, 8)
        run = {"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    else:
        module, name = _TransformerBlock(), "ids"
        example = torch.randint(0, 50, (2, 7))
        run = {"ids": np.random.default_rng(0).integers(0, 50, (2, 7)).astype(np.int64)}
    model = _export(module, example, name, dynamo, tmp_path)
    converted = to_torch(model)
    assert check_parity(converted, model, [run]) < 1e-4
    # the converted module also matches the torch original and is trainable
    with torch.no_grad():
        ref = module(torch.from_numpy(run[name])).numpy()
    (y,) = converted(torch.from_numpy(run[name]))
    assert np.allclose(y.detach().numpy(), ref, atol=1e-5)
    y.float().sum().backward()
    assert sum(p.grad is not None for p in converted.params.values()) >= 4
