"""Random valid ONNX graphs built from the motifs the passes target (NNSmith-style fuzzing).

``generate(seed)`` is deterministic: the seed picks an opset (13 to the newest onnxruntime
runs), a float type (float32 or float16), static or dynamic shapes, and one to four motifs,
each of which takes a tensor from the pool and writes its nodes (see ``builder``). A motif is
a family of spellings and near misses of one pattern; :data:`MOTIFS` lists them.

The generated :class:`Case` carries what the oracle needs to feed the graph: each input's
shape, type and, for integer inputs, the valid range of values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from tests.fuzz import motifs_conv, motifs_linear, motifs_misc, motifs_norm, motifs_tensor
from tests.fuzz.builder import Builder, InputInfo

#: the oldest opset generated
MIN_OPSET = 13

#: motif name -> builder function
MOTIFS: dict[str, Callable[[Builder], None]] = {
    "conv_bn": motifs_conv.conv_bn,
    "conv_affine": motifs_conv.conv_affine,
    "affine_between_convs": motifs_conv.affine_between_convs,
    "pad_conv": motifs_conv.pad_conv,
    "matmul_add": motifs_linear.matmul_add,
    "decayed_weights": motifs_linear.decayed_weights,
    "attention": motifs_linear.attention,
    "embedding": motifs_linear.embedding,
    "layernorm": motifs_norm.layernorm,
    "gelu": motifs_norm.gelu,
    "activations": motifs_norm.activations,
    "layout": motifs_tensor.layout,
    "shape_path": motifs_tensor.shape_path,
    "arith_noop": motifs_tensor.arith_noop,
    "concat_split_slice": motifs_tensor.concat_split_slice,
    "duplicates": motifs_misc.duplicates,
    "dropout_identity": motifs_misc.dropout_identity,
    "cast": motifs_misc.cast,
    "constants": motifs_misc.constants,
    "if": motifs_misc.if_motif,
    "noops": motifs_misc.noops,
}


@dataclass
class Case:
    """A generated graph and how to feed it."""

    seed: int
    model: onnx.ModelProto
    inputs: list[InputInfo]
    motifs: list[str] = field(default_factory=list)
    opset: int = 17
    float_type: str = "float32"
    dynamic: str = ""
    #: NaN / Inf inputs are meaningful (every motif's rewrites are exact on them)
    specials: bool = True

    def describe(self) -> str:
        dyn = f", dynamic {self.dynamic}" if self.dynamic else ""
        return (
            f"seed {self.seed}: opset {self.opset}, {self.float_type}{dyn}, {'+'.join(self.motifs)}"
        )


@functools.lru_cache(maxsize=1)
def newest_opset() -> int:
    """The newest default-domain opset that both onnx and onnxruntime know."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    for v in range(onnx.defs.onnx_opset_version(), MIN_OPSET, -1):
        g = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])],
            "probe",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", v)])
        m.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", v)])
        try:
            ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
            return v
        except Exception:  # noqa: BLE001 - an opset this onnxruntime does not load
            continue
    return MIN_OPSET


def opsets() -> list[int]:
    return list(range(MIN_OPSET, newest_opset() + 1))


def generate(
    seed: int,
    *,
    motifs: Sequence[str] | None = None,
    opset: int | None = None,
    float_type: str | None = None,
    dynamic: str | None = None,
) -> Case:
    """The random graph of ``seed``; the keyword arguments pin what the seed would pick."""
    rng = np.random.default_rng(seed)
    opset = int(rng.choice(opsets())) if opset is None else opset
    float_type = float_type or ("float16" if rng.random() < 0.25 else "float32")
    if dynamic is None:
        dynamic = str(rng.choice(["", "", "", "batch", "batch", "all"]))
    if motifs is None:
        names = sorted(MOTIFS)
        motifs = [str(rng.choice(names)) for _ in range(int(rng.integers(1, 5)))]
    b = Builder(rng, opset, float_type, dynamic)
    for name in motifs:
        MOTIFS[name](b)
        b.motifs.append(name)
    model = b.finish()
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    used = _used_names(model.graph)
    inputs = [i for i in b.inputs if i.name in used]
    keep = {i.name for i in inputs}
    kept = [v for v in model.graph.input if v.name in keep]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return Case(seed, model, inputs, list(motifs), opset, float_type, dynamic, b.specials)


def _used_names(g: onnx.GraphProto) -> set[str]:
    """Every name a node (in any subgraph) or a graph output reads."""
    used = {o.name for o in g.output}
    for node in g.node:
        used.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(a.g)
    return used
