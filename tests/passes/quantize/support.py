"""What the quantization tests share: two small models (a conv pair, an encoder layer), runs
over a :class:`Feeds` with onnxruntime's optimizations off or on (on: to see which int8 kernels
it fused), and lookups in the quantized graph. Running models: :mod:`tests.helpers`."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.data import Feeds
from tests.helpers import parse, run, session

CONV_RELU_CONV = """
<ir_version: 8, opset_import: ["": 17]>
g (float[1,2,4,4] x) => (float[1,3,4,4] y) {
    c1 = Conv <pads = [1,1,1,1]> (x, W1, B1)
    r1 = Relu (c1)
    y = Conv <pads = [1,1,1,1]> (r1, W2, B2)
}
"""

V, S, H, F = 50, 8, 16, 32

#: embedding -> LayerNorm -> FFN (bias through an Identity, as TorchScript exports shared
#: zero biases) -> residual -> LayerNorm
ENCODER = """
<ir_version: 8, opset_import: ["": 17]>
g (int64[1,8] ids) => (float[1,8,16] y) {
    e = Gather (E, ids)
    h = LayerNormalization <axis = -1> (e, G, Bt)
    m = MatMul (h, W1)
    bi = Identity (B1)
    a = Add (m, bi)
    s = Mul (a, a)
    m2 = MatMul (s, W2)
    a2 = Add (B2, m2)
    r = Add (a2, h)
    y = LayerNormalization <axis = -1> (r, G, Bt)
}
"""


def conv_relu_conv(rng: np.random.Generator, text: str = CONV_RELU_CONV) -> onnx.ModelProto:
    """Conv -> Relu -> Conv with random weights and biases drawn from ``rng``."""
    return parse(
        text,
        dict(
            W1=rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
            B1=rng.standard_normal(4).astype(np.float32),
            W2=rng.standard_normal((3, 4, 3, 3)).astype(np.float32),
            B2=rng.standard_normal(3).astype(np.float32),
        ),
    )


def encoder(rng: np.random.Generator) -> onnx.ModelProto:
    """The ``ENCODER`` layer with weights drawn from ``rng``."""
    inits = {
        "E": rng.normal(0, 1, (V, H)),
        "G": np.ones(H),
        "Bt": np.zeros(H),
        "W1": rng.normal(0, 0.3, (H, F)),
        "B1": rng.normal(0, 0.1, F),
        "W2": rng.normal(0, 0.3, (F, H)),
        "B2": rng.normal(0, 0.1, H),
    }
    return parse(ENCODER, {k: np.asarray(v, np.float32) for k, v in inits.items()})


def outputs(model: onnx.ModelProto, feeds: Feeds, optimized: str | None = None) -> np.ndarray:
    """The first output over every run of ``feeds``, concatenated. ``optimized``: run with
    every onnxruntime optimization and write the optimized model there."""
    if optimized is None:
        return np.concatenate([run(model, r)[0] for r in feeds.runs])
    s = session(model, optimized=True, save_optimized=optimized)
    return np.concatenate([s.run(None, r)[0] for r in feeds.runs])


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def producer_of_input(model: onnx.ModelProto, consumer: str, index: int) -> onnx.NodeProto:
    """The node that makes input ``index`` of the node named ``consumer``."""
    by_out = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == consumer)
    return by_out[node.input[index]]


#: make_plan's options as quantize-int8's defaults set them (per-channel weights, folded Relus)
PLAN_KW = dict(
    per_channel=True,
    fold_relu=True,
    quantize_residual=False,
    embeddings=True,
    elementwise="int8-inputs",
)


def spy_search_references(monkeypatch) -> list:
    """A list that gets, at every quantize-int8 run, the reference outputs handed to its
    search (``QuantizeInt8._mixed``'s last argument: None when none was kept)."""
    from onnxopt.passes.quantize import static

    got: list = []
    real = static.QuantizeInt8._mixed

    def spy(self, *a, **k):
        got.append(a[-1])
        return real(self, *a, **k)

    monkeypatch.setattr(static.QuantizeInt8, "_mixed", spy)
    return got
