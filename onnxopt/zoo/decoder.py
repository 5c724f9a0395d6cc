"""A decoder-style language model of any size, written straight to disk (no torch).

The graph is what a raw export of a GPT-style decoder looks like: token and position
embeddings; per layer a LayerNorm written out (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt,
Div, Mul, Add), Q/K/V projections with biases, heads split by a Reshape whose shape is computed
from ``Shape`` at run time, causal masked softmax attention, an output projection, a GELU MLP
written with Erf, residual Adds and an Identity or two; a final LayerNorm and a language-model
head. Weights are random (seeded, ``N(0, 0.02)``), fp32, written one tensor at a time to an
external data file (offsets aligned to 4 KiB), so a model of many GB is made without holding it
in memory.

    python -m onnxopt.zoo.decoder OUT.onnx --layers 7 --hidden 4096   # ~6.7 GB
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096


class _Writer:
    """Initializers written to one data file as they are made."""

    def __init__(self, data_path: Path, seed: int) -> None:
        self.f = open(data_path, "wb")  # noqa: SIM115 - closed by close()
        self.name = data_path.name
        self.rng = np.random.default_rng(seed)
        self.inits: list[TensorProto] = []
        self.names: set[str] = set()

    def add(self, name: str, value: np.ndarray) -> str:
        value = np.array(value, order="C")  # ascontiguousarray would make a scalar [1]
        self.names.add(name)
        if value.nbytes < 4096:
            self.inits.append(onnx.numpy_helper.from_array(value, name))
            return name
        pos = self.f.tell()
        pad = -pos % ALIGN
        self.f.write(b"\0" * pad)
        offset = pos + pad
        self.f.write(value.tobytes())
        t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype))
        t.dims.extend(value.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (
            ("location", self.name),
            ("offset", str(offset)),
            ("length", str(value.nbytes)),
        ):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.inits.append(t)
        return name

    def random(self, name: str, shape: tuple[int, ...], scale: float = 0.02) -> str:
        return self.add(name, self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def close(self) -> None:
        self.f.close()


class _Graph:
    def __init__(self, w: _Writer) -> None:
        self.w = w
        self.nodes: list[onnx.NodeProto] = []
        self.k = 0

    def op(self, op: str, inputs: list[str], n_out: int = 1, **attrs) -> str | list[str]:
        self.k += 1
        outs = [f"t{self.k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"/{op}_{self.k}", **attrs))
        return outs[0] if n_out == 1 else outs

    def const(self, name: str, value) -> str:
        if name not in self.w.names:
            self.w.add(name, np.asarray(value))
        return name

    def layer_norm(self, x: str, p: str, hidden: int) -> str:
        g = self.w.add(f"{p}.weight", 1 + self.w.rng.standard_normal(hidden, np.float32) / 10)
        b = self.w.random(f"{p}.bias", (hidden,))
        mean = self.op("ReduceMean", [x], axes=[-1])
        d = self.op("Sub", [x, mean])
        var = self.op(
            "ReduceMean", [self.op("Pow", [d, self.const(f"{p}.two", np.float32(2))])], axes=[-1]
        )
        std = self.op("Sqrt", [self.op("Add", [var, self.const(f"{p}.eps", np.float32(1e-5))])])
        return self.op("Add", [self.op("Mul", [self.op("Div", [d, std]), g]), b])

    def linear(self, x: str, p: str, n_in: int, n_out: int) -> str:
        w = self.w.random(f"{p}.weight", (n_in, n_out))
        b = self.w.random(f"{p}.bias", (n_out,))
        return self.op("Add", [self.op("MatMul", [x, w]), b])

    def dims(self, x: str, p: str) -> list[str]:
        """[batch, seq] of ``x`` as 1-element int64 tensors computed at run time."""
        shape = self.op("Shape", [x])
        out = []
        for i in (0, 1):
            g = self.op("Gather", [shape, self.const(f"{p}.i{i}", np.int64(i))], axis=0)
            out.append(self.op("Unsqueeze", [g, self.const(f"{p}.ax", np.array([0], np.int64))]))
        return out


def _attention(g: _Graph, x: str, p: str, hidden: int, heads: int, mask: str) -> str:
    hd = hidden // heads
    b, s = g.dims(x, p)
    split = g.op("Concat", [b, s, g.const(f"{p}.heads", np.array([heads, hd], np.int64))], axis=0)
    q, k, v = (g.op("Reshape", [g.linear(x, f"{p}.{n}", hidden, hidden), split]) for n in "qkv")
    q = g.op("Transpose", [q], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k], perm=[0, 2, 3, 1])
    v = g.op("Transpose", [v], perm=[0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, k]), g.const(f"{p}.scale", np.float32(np.sqrt(hd)))])
    probs = g.op("Softmax", [g.op("Add", [scores, mask])], axis=-1)
    ctx = g.op("Transpose", [g.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
    merge = g.op("Concat", [b, s, g.const(f"{p}.hidden", np.array([hidden], np.int64))], axis=0)
    out = g.linear(g.op("Reshape", [ctx, merge]), f"{p}.o", hidden, hidden)
    return g.op("Identity", [out])


def _mlp(g: _Graph, x: str, p: str, hidden: int) -> str:
    h = g.linear(x, f"{p}.fc1", hidden, 4 * hidden)
    erf = g.op("Erf", [g.op("Div", [h, g.const(f"{p}.sqrt2", np.float32(np.sqrt(2.0)))])])
    act = g.op(
        "Mul",
        [
            g.op("Mul", [h, g.op("Add", [erf, g.const(f"{p}.one", np.float32(1))])]),
            g.const(f"{p}.half", np.float32(0.5)),
        ],
    )
    return g.linear(act, f"{p}.fc2", 4 * hidden, hidden)


def write_decoder(
    path: str | os.PathLike,
    *,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 8,
    vocab: int = 1000,
    seq: int = 8,
    seed: int = 0,
) -> Path:
    """Write the model to ``path`` and its weights to ``<path>.data``; returns ``path``.

    Input ``input_ids`` int64 [1, seq]; output ``logits`` float [1, seq, vocab].
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = _Writer(path.with_name(path.name + ".data"), seed)
    g = _Graph(w)
    try:
        wte = w.random("wte", (vocab, hidden))
        wpe = w.random("wpe", (seq, hidden))
        mask = g.const("causal_mask", np.triu(np.full((seq, seq), -1e4, np.float32), 1))
        h = g.op(
            "Add",
            [
                g.op("Gather", [wte, "input_ids"]),
                g.op("Gather", [wpe, g.const("positions", np.arange(seq))]),
            ],
        )
        for i in range(layers):
            p = f"layers.{i}"
            h = g.op(
                "Add",
                [
                    h,
                    _attention(
                        g, g.layer_norm(h, f"{p}.ln1", hidden), f"{p}.attn", hidden, heads, mask
                    ),
                ],
            )
            h = g.op("Add", [h, _mlp(g, g.layer_norm(h, f"{p}.ln2", hidden), f"{p}.mlp", hidden)])
        h = g.layer_norm(h, "ln_f", hidden)
        g.nodes.append(
            helper.make_node(
                "MatMul", [h, w.random("lm_head", (hidden, vocab))], ["logits"], name="/lm_head"
            )
        )
    finally:
        w.close()
    graph = helper.make_graph(
        g.nodes,
        "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
        initializer=w.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="write a decoder-style model with random weights")
    ap.add_argument("out", type=Path)
    for name, default in (
        ("layers", 2),
        ("hidden", 256),
        ("heads", 8),
        ("vocab", 1000),
        ("seq", 8),
    ):
        ap.add_argument(f"--{name}", type=int, default=default)
    a = ap.parse_args(argv)
    p = write_decoder(
        a.out, layers=a.layers, hidden=a.hidden, heads=a.heads, vocab=a.vocab, seq=a.seq
    )
    size = p.stat().st_size + p.with_name(p.name + ".data").stat().st_size
    print(f"wrote {p} ({size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
