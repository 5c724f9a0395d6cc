"""A 501-node model and a planted bad "exact" rewrite, for ``onnxopt debug`` and ``--reduce``.

The model is a chain of 125 residual blocks ``x + tanh(x·W + b)`` (4 nodes each) and a final
LayerNormalization. :class:`PlantedGemm` fuses every ``MatMul + Add`` into a ``Gemm`` with a
new output name (so the rewritten tensors are matched through provenance, not by name) and
records no provenance itself (the generic record fills it in); at block ``BAD`` it uses a
wrong bias.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.data import Feeds

BLOCKS, WIDTH, BAD = 125, 16, 77


def chain(blocks: int = BLOCKS, d: int = WIDTH, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        w = (rng.standard_normal((d, d)) * 0.3).astype(np.float32)
        b = (rng.standard_normal(d) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        nodes += [
            oh.make_node("MatMul", [x, f"W{i}"], [f"mm{i}"], name=f"MatMul_{i}"),
            oh.make_node("Add", [f"mm{i}", f"B{i}"], [f"lin{i}"], name=f"Add_{i}"),
            oh.make_node("Tanh", [f"lin{i}"], [f"act{i}"], name=f"Tanh_{i}"),
            oh.make_node("Add", [x, f"act{i}"], [f"res{i}"], name=f"Residual_{i}"),
        ]
        x = f"res{i}"
    nodes.append(oh.make_node("LayerNormalization", [x, "g", "beta"], ["y"], name="final_ln"))
    inits += [
        numpy_helper.from_array(np.ones(d, np.float32), "g"),
        numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
    ]
    graph = oh.make_graph(
        nodes,
        "chain",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, d])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, d])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])


class PlantedGemm(Pass):
    """MatMul + Add -> Gemm everywhere; block ``bad`` gets a wrong bias (None: all right)."""

    name = "planted-gemm"
    exact = True

    def __init__(self, bad: int | None = BAD) -> None:
        super().__init__()
        self.bad = bad

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        n = 0
        for mm in list(graph.nodes):
            if mm.op != "MatMul" or not mm.outputs:
                continue
            add = mm.outputs[0].outputs[0]
            i = int(mm.name.split("_")[1])
            bias = add.inputs[1]
            if i == self.bad:
                bias = gs.Constant(f"B{i}_bad", (bias.values * 1.5 + 0.05).astype(np.float32))
            out = gs.Variable(f"gemm_out{i}", dtype=np.float32)
            consumer = add.outputs[0].outputs[0]
            graph.nodes.append(
                gs.Node(
                    "Gemm", f"Gemm_{i}", inputs=[mm.inputs[0], mm.inputs[1], bias], outputs=[out]
                )
            )
            consumer.inputs[0] = out
            for node in (mm, add):
                node.inputs.clear()
                node.outputs.clear()
            n += 1
        return PassResult(n > 0, n)


def planted(bad: int | None = BAD) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(the original, the rewritten model) with provenance recorded as a pipeline does."""
    m = chain()
    _, out = PlantedGemm(bad).apply(m, PassContext())
    return m, out


def feeds(runs: int = 2, seed: int = 1) -> Feeds:
    rng = np.random.default_rng(seed)
    return Feeds([{"x": rng.standard_normal((4, WIDTH)).astype(np.float32)} for _ in range(runs)])
