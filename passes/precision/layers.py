"""The MatMul and Gemm nodes ``quantize-int4`` can rewrite, and their MatMulNBits form.

A layer is ``Y = X·W (+ b)`` with a constant 2-D float32 ``W`` (K×N), in the main graph or
in an If/Loop/Scan body (its site is then keyed ``<scope>::<node>``, see
:mod:`onnxopt.scopes`; the weight may be an initializer of the body or of an enclosing graph):
- ``MatMul(X, W)``;
- ``Gemm(X, B, C)`` with ``transA = 0``: ``W = α·B`` (``Bᵀ`` when ``transB = 1``) and
  ``b = β·C`` when ``C`` is a constant of ``N`` values;
- a ``MatMul`` whose only reader is ``Add(Y, c)`` with a constant ``c`` of ``N`` values takes
  ``c`` as MatMulNBits' bias (``fuse_bias``), and the Add goes.

MatMulNBits (onnxruntime contrib op, domain ``com.microsoft``) computes ``Y = X·Ŵ (+ b)`` with
``Ŵ`` dequantized block-wise along K (see :mod:`.nbits` for the packing).

With ``embeddings`` (``embedding_bits`` > 0), a ``Gather(E, ids)`` on axis 0 of a constant V×D float32 table whose D is a
multiple of the block size becomes ``GatherBlockQuantized``: ``E`` is quantized as the D×V
weight ``Eᵀ`` (blocks along D for each row), the same codes, scales and zero points, packed
the same way (data ``(V, D·bits/8)``, scales ``(V, D/bs)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.scopes import SEP, site_key
from onnxopt.weights import array as tensor_array

from .nbits import Quantized

DOMAIN = "com.microsoft"


@dataclass
class Layer:
    """One rewritable node: its name, input tensor, weight (K×N) and optional bias."""

    node: onnx.NodeProto
    x: str
    weight: np.ndarray
    weight_name: str
    bias: np.ndarray | None = None
    #: the Add folded in as the bias (removed with the node)
    bias_add: onnx.NodeProto | None = None
    output: str = ""
    notes: list[str] = field(default_factory=list)
    #: "matmul" (MatMulNBits) or "gather" (GatherBlockQuantized; ``x`` holds the indices)
    kind: str = "matmul"
    #: the body holding the node ("" for the main graph) and that graph
    scope: str = ""
    graph: onnx.GraphProto | None = None

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def key(self) -> str:
        """The pipeline's site key: the node name, prefixed by its body's scope."""
        return site_key(self.scope, self.node.name)


def scoped_graphs(
    g: onnx.GraphProto, scope: str = "", inits: dict[str, onnx.TensorProto] | None = None
):
    """``(scope, graph, constants visible there)`` for ``g`` and every If/Loop/Scan body in it,
    outer graphs first. A body sees its own initializers and those of every enclosing graph,
    less the names its own inputs shadow; the main graph's initializers that are also graph
    inputs (a caller may override them) are not constants."""
    if inits is None:
        inputs = {v.name for v in g.input}
        visible = {t.name: t for t in g.initializer if t.name not in inputs}
    else:
        shadowed = {v.name for v in g.input}
        visible = {k: t for k, t in inits.items() if k not in shadowed}
        visible.update({t.name: t for t in g.initializer})
    yield scope, g, visible
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                inner = f"{n.name}.{a.name}"
                yield from scoped_graphs(a.g, f"{scope}{SEP}{inner}" if scope else inner, visible)


def find_layers(
    model: onnx.ModelProto,
    exclude: tuple[str, ...],
    fuse_bias: bool,
    embeddings: bool = False,
    block_size: int = 32,
) -> tuple[list[Layer], list[str]]:
    """The rewritable layers of every graph (main graph first, each in graph order) and why
    others were skipped."""
    layers: list[Layer] = []
    notes: list[str] = []
    for scope, g, inits in scoped_graphs(model.graph):
        found, why = _graph_layers(g, inits, exclude, fuse_bias, embeddings, block_size)
        for x in found:
            x.scope, x.graph = scope, g
        layers += found
        notes += [site_key(scope, w) for w in why]
    return layers, notes


def _graph_layers(
    g: onnx.GraphProto,
    inits: dict[str, onnx.TensorProto],
    exclude: tuple[str, ...],
    fuse_bias: bool,
    embeddings: bool,
    block_size: int,
) -> tuple[list[Layer], list[str]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        read = set(n.input)
        for a in n.attribute:  # a body reading an outer tensor reads it through its node
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                read |= _read_names(sub)
        for i in read:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    layers: list[Layer] = []
    notes: list[str] = []
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Gather" and embeddings and node.name not in exclude:
            layer, why = _embedding(node, inits, block_size)
            if layer is not None:
                layers.append(layer)
            elif why:
                notes.append(f"{node.name}: {why}")
            continue
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if node.name in exclude or node.op_type in exclude:
            notes.append(f"{node.name}: excluded")
            continue
        layer, why = _layer(node, inits)
        if layer is None:
            notes.append(f"{node.name}: {why}")
            continue
        if fuse_bias and layer.bias is None and node.op_type == "MatMul":
            _fold_bias(layer, readers, inits, outputs)
        layers.append(layer)
    return layers, notes


def _const(name: str, inits: dict[str, onnx.TensorProto]) -> np.ndarray | None:
    t = inits.get(name)
    return None if t is None else tensor_array(t)


def _layer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple[Layer | None, str]:
    if len(node.input) < 2 or node.input[0] in inits:
        return None, "input is a constant"
    w = _const(node.input[1], inits)
    if w is None:
        return None, "second input is not a constant (activation × activation)"
    if w.dtype != np.float32 or w.ndim != 2:
        return None, f"weight is {w.dtype} of rank {w.ndim}, not a 2-D float32 matrix"
    out = node.output[0]
    if node.op_type == "MatMul":
        return Layer(node, node.input[0], w, node.input[1], output=out), ""
    a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
    if a.get("transA", 0):
        return None, "Gemm with transA is left float"
    w = (w.T if a.get("transB", 0) else w) * np.float32(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = _const(node.input[2], inits)
        if c is None or c.size != w.shape[1] or c.ndim > 2:
            return None, "Gemm C is not a constant of N values"
        bias = (c.reshape(-1) * np.float32(a.get("beta", 1.0))).astype(np.float32)
    return Layer(node, node.input[0], np.ascontiguousarray(w), node.input[1], bias, output=out), ""


def _embedding(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], block_size: int
) -> tuple[Layer | None, str]:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    table = _const(node.input[0], inits)
    if table is None or table.dtype != np.float32 or table.ndim != 2 or axis != 0:
        return None, ""  # not an embedding table: nothing to say
    if table.shape[1] % block_size:
        return None, f"embedding width {table.shape[1]} is not a multiple of {block_size}"
    w = np.ascontiguousarray(table.T)
    return Layer(node, node.input[1], w, node.input[0], output=node.output[0], kind="gather"), ""


def _fold_bias(layer: Layer, readers, inits, outputs: set[str]) -> None:
    y = layer.node.output[0]
    users = readers.get(y, [])
    if y in outputs or len(users) != 1 or users[0].op_type != "Add":
        return
    add = users[0]
    other = add.input[1] if add.input[0] == y else add.input[0]
    c = _const(other, inits)
    n = layer.weight.shape[1]
    if c is None or c.dtype != np.float32 or c.size != n or c.shape[-1:] != (n,) or c.ndim > 1:
        return
    layer.bias, layer.bias_add, layer.output = c.astype(np.float32), add, add.output[0]


def nbits_node(
    layer: Layer, q: Quantized, accuracy_level: int, taken: set[str]
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    """The MatMulNBits (or GatherBlockQuantized) node for ``layer`` quantized as ``q``, and
    its new initializers."""
    if layer.kind == "gather":
        return _gather_node(layer, q, taken)
    k, n = layer.weight.shape
    base = _unique(f"{layer.name}_Q{q.bits}", taken)
    tensors = [
        numpy_helper.from_array(q.packed_codes(), f"{base}_B"),
        numpy_helper.from_array(q.scales.astype(np.float32), f"{base}_scales"),
    ]
    inputs = [layer.x, tensors[0].name, tensors[1].name]
    if not q.symmetric:
        tensors.append(numpy_helper.from_array(q.packed_zeros(), f"{base}_zero_points"))
        inputs.append(tensors[-1].name)
    if layer.bias is not None:
        tensors.append(numpy_helper.from_array(layer.bias, f"{base}_bias"))
        inputs += [""] * (5 - len(inputs)) + [tensors[-1].name]
    for t in tensors:
        taken.add(t.name)
    node = onnx.helper.make_node(
        "MatMulNBits",
        inputs,
        [layer.output],
        name=base,
        domain=DOMAIN,
        K=k,
        N=n,
        bits=q.bits,
        block_size=q.block_size,
        accuracy_level=accuracy_level,
    )
    return node, tensors


def _gather_node(
    layer: Layer, q: Quantized, taken: set[str]
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    n = layer.weight.shape[1]
    base = _unique(f"{layer.name}_Q{q.bits}", taken)
    tensors = [
        numpy_helper.from_array(q.packed_codes().reshape(n, -1), f"{base}_B"),
        numpy_helper.from_array(q.scales.astype(np.float32), f"{base}_scales"),
    ]
    if not q.symmetric:
        tensors.append(numpy_helper.from_array(q.packed_zeros(), f"{base}_zero_points"))
    for t in tensors:
        taken.add(t.name)
    inputs = [tensors[0].name, layer.x, *[t.name for t in tensors[1:]]]
    node = onnx.helper.make_node(
        "GatherBlockQuantized",
        inputs,
        [layer.output],
        name=base,
        domain=DOMAIN,
        bits=q.bits,
        block_size=q.block_size,
        gather_axis=0,
        quantize_axis=1,
    )
    return node, tensors


def _unique(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken or f"{name}_B" in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def replace_layers(
    model: onnx.ModelProto, done: list[tuple[Layer, onnx.NodeProto, list[onnx.TensorProto]]]
) -> None:
    """Put the MatMulNBits nodes in place of their layers (in place, in whichever graph holds
    each); drop weights no longer read; add the ``com.microsoft`` opset import."""
    for layer, node, tensors in done:
        g = layer.graph if layer.graph is not None else model.graph
        # in place: the Layer objects of nested bodies keep pointing into live protos
        layer.node.CopyFrom(node)
        if layer.bias_add is not None:
            g.node.remove(layer.bias_add)
        g.initializer.extend(tensors)
    _drop_unread(model.graph)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))


def _drop_unread(g: onnx.GraphProto) -> None:
    """Remove the initializers of ``g`` and of every body that nothing reads any more."""
    read = _read_names(g)
    keep = [t for t in g.initializer if t.name in read]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    for n in g.node:
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                _drop_unread(sub)


def _read_names(g: onnx.GraphProto) -> set[str]:
    read = {o.name for o in g.output}
    for n in g.node:
        read.update(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                read |= _read_names(sub)
    return read
