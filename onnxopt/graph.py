"""Small helpers over onnx-graphsurgeon that every pass shares.

gs.Graph is the editing representation; ``to_graph``/``to_model`` convert while keeping what gs
does not carry (IR version, metadata, doc strings, producer, non-default opset domains).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import weights
from onnxopt.errors import first_line
from onnxopt.scopes import (
    OVERRIDABLE,
    PARENT,
    TAKEN,
    all_graphs,
    is_outer,
    mark,
    place_initializers,
)

logger = logging.getLogger(__name__)

# gs logs warnings through its own logger at import time; keep library output quiet.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a ModelProto into a fresh gs.Graph (arrays are copied, the proto is untouched).

    Node domains are normalized: torch's exporters leave the field unset, which gs reads as
    None; every pass can then compare against "" for the standard domain.
    """
    from onnxopt import provenance

    graph = gs.import_onnx(model)
    provenance.to_gs(model, graph)
    _normalize_domains(graph)
    setattr(graph, UNUSED_INITIALIZERS, unused_initializers(model.graph))
    setattr(graph, OVERRIDABLE, overridable(model))
    _mark_overridable(graph)
    _adopt_mapped(graph)
    return graph


#: attribute set on a gs.Constant that is also a model input (an overridable initializer):
#: :func:`const_value` gives it no value, so no pass folds or fuses its default away
OVERRIDABLE_TENSOR = "onnxopt_overridable_tensor"


def _mark_overridable(graph: gs.Graph) -> None:
    names = vars(graph).get(OVERRIDABLE) or set()
    if not names:
        return
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and t.name in names:
            setattr(t, OVERRIDABLE_TENSOR, True)


def overridable(model: onnx.ModelProto) -> set[str]:
    """Initializers that are also graph inputs: defaults a caller may override (IR >= 4;
    before, every initializer had to be listed as an input). gs keeps them as constants."""
    if 0 < model.ir_version < 4:
        return set()
    return {v.name for v in model.graph.input} & {t.name for t in model.graph.initializer}


#: attribute of an imported gs.Graph: whether its model held mapped weights (onnxopt.weights)
MAPPED = "onnxopt_mapped"


class MappedValues(gs.ir.tensor.LazyValues):
    """The values of a mapped initializer: loading them gives a read-only view of the file's
    mapping (no copy), and an unloaded one is exported as its stub."""

    def load(self) -> np.ndarray:
        return weights.array(self.tensor)


def _constants(graph: gs.Graph):
    seen: set[int] = set()
    for g in all_graphs(graph):
        for t in g.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


def _adopt_mapped(graph: gs.Graph) -> None:
    found = False
    for t in _constants(graph):
        lazy = t._values
        if isinstance(lazy, gs.ir.tensor.LazyValues) and weights.is_mapped(lazy.tensor):
            t._values = MappedValues(lazy.tensor)
            t.data_location = None
            found = True
    setattr(graph, MAPPED, found)


def _prepare_mapped(graph: gs.Graph) -> None:
    """Before export: a constant whose values are a view of a mapping is exported as a stub of
    that view, and a large new one is spilled once to the scratch file (see weights)."""
    if not vars(graph).get(MAPPED):
        return
    for t in _constants(graph):
        arr = t._values
        if isinstance(arr, gs.ir.tensor.LazyValues) or not isinstance(arr, np.ndarray):
            continue
        if t.export_dtype is not None and np.dtype(t.export_dtype) != arr.dtype:
            continue
        if arr.dtype.kind in "OSUV" or arr.nbytes < weights.MAP_MIN_TENSOR_BYTES:
            continue
        s = weights.stub_for(t.name, arr) or weights.spill(t.name, arr)
        t._values = MappedValues(s)
        t.data_location = None


#: attribute of an imported gs.Graph: names of initializers nothing read (gs drops them)
UNUSED_INITIALIZERS = "onnxopt_unused_initializers"


def unused_initializers(g: onnx.GraphProto) -> list[str]:
    """Initializers of ``g`` that no node (in any subgraph) and no graph output reads."""
    read: set[str] = {o.name for o in g.output}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            read.update(node.input)
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        visit(sub)
        for o in graph.output:
            read.add(o.name)

    visit(g)
    return [t.name for t in g.initializer if t.name not in read]


def _normalize_domains(graph: gs.Graph) -> None:
    for node in graph.nodes:
        if node.domain is None or node.domain == "ai.onnx":
            node.domain = ""
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                _normalize_domains(attr)


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export ``graph``; copy model-level fields from ``like`` so nothing silently changes
    (node provenance included: :mod:`onnxopt.provenance`)."""
    from onnxopt import provenance

    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _prepare_mapped(graph)
    out = gs.export_onnx(graph, do_type_check=False)
    provenance.from_gs(graph, out)
    place_initializers(graph, out.graph)
    if like is not None:
        out.ir_version = like.ir_version
        out.producer_name = like.producer_name
        out.producer_version = like.producer_version
        out.domain = like.domain
        out.model_version = like.model_version
        out.doc_string = like.doc_string
        out.graph.doc_string = like.graph.doc_string
        out.graph.name = like.graph.name
        del out.metadata_props[:]
        out.metadata_props.extend(like.metadata_props)
        have = {o.domain: o for o in out.opset_import}
        for o in like.opset_import:
            if o.domain not in have:
                out.opset_import.append(copy.deepcopy(o))
            else:
                have[o.domain].version = max(have[o.domain].version, o.version)
        if len(out.functions) == 0 and len(like.functions):
            out.functions.extend(like.functions)
        _keep_overridable_inputs(out, like)
    if 0 < out.ir_version < 4:
        _initializers_as_inputs(out)
    used = {n.domain for n in out.graph.node if n.domain not in ("", "ai.onnx")}
    have = {o.domain for o in out.opset_import}
    for d in sorted(used - have):  # e.g. com.microsoft contrib ops added by a fusion
        out.opset_import.append(onnx.helper.make_opsetid(d, 1))
    return out


def _initializers_as_inputs(out: onnx.ModelProto) -> None:
    """Before IR version 4 every initializer must also be a graph input (onnx.checker refuses
    the model otherwise): list the ones a pass added (a folded constant) after the others."""
    have = {v.name for v in out.graph.input}
    for t in out.graph.initializer:
        if t.name not in have:
            out.graph.input.append(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            )


def _keep_overridable_inputs(out: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """gs drops initializers that are also graph inputs from the inputs; restore them in order."""
    inits = {t.name for t in out.graph.initializer}
    have = {v.name for v in out.graph.input}
    wanted = [v for v in like.graph.input if v.name in inits and v.name not in have]
    if not wanted:
        return
    order = {v.name: i for i, v in enumerate(like.graph.input)}
    merged = list(out.graph.input) + [copy.deepcopy(v) for v in wanted]
    merged.sort(key=lambda v: order.get(v.name, len(order)))
    del out.graph.input[:]
    out.graph.input.extend(merged)


def infer_light(
    graph: gs.Graph, *, data_prop: bool = True, strict: bool = False
) -> onnx.ModelProto:
    """Shape inference on ``graph`` without exporting its large weights (do not modify the result).

    Constants with more than 1024 elements become typed graph inputs of a copy (shape inference
    needs only their shapes); the original graph is untouched. Returns the inferred light model.
    The result is cached on the graph under a fingerprint of everything inference reads, so the
    passes of a batch that leave the graph alone do not infer it again.
    """
    key = (_fingerprint(graph), data_prop, strict)
    cached = vars(graph).get(_INFER_CACHE)
    if cached is not None and cached[0] == key:
        return cached[1]
    copy = graph.copy()
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    for t in list(copy.tensors().values()):
        if isinstance(t, gs.Constant) and int(np.prod(t.shape)) > 1024:
            var = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
            for node in list(t.outputs):
                node.inputs = [var if x is t else x for x in node.inputs]
            copy.inputs.append(var)
    model = gs.export_onnx(copy, do_type_check=False)
    _declare_outer(copy, model.graph)
    inferred = onnx.shape_inference.infer_shapes(
        model, check_type=strict, strict_mode=strict, data_prop=data_prop
    )
    setattr(graph, _INFER_CACHE, (key, inferred))
    return inferred


_INFER_CACHE = "onnxopt_inferred"


def _declare_outer(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """A body exported alone reads outer-scope names nothing defines: declare those whose type
    is known as inputs, so shape inference sees them."""
    defined = {v.name for v in proto.input} | {t.name for t in proto.initializer} | {""}
    defined |= {o for n in proto.node for o in n.output}
    tensors = graph.tensors()
    for name in dict.fromkeys(i for n in proto.node for i in n.input):
        t = tensors.get(name)
        if name in defined or t is None or t.dtype is None:
            continue
        shape = None if t.shape is None else [d if isinstance(d, int) else None for d in t.shape]
        dtype = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(t.dtype))
        proto.input.append(onnx.helper.make_tensor_value_info(name, dtype, shape))
        defined.add(name)


def _fingerprint(graph: gs.Graph) -> int:
    """Hash of what shape inference sees: nodes, attributes, small constants' values, the
    dtypes and shapes of every tensor, the graph's inputs and outputs (opsets do not change)."""
    parts: list = []
    for node in graph.nodes:
        attrs = tuple((k, _attr_key(v)) for k, v in node.attrs.items())
        parts.append(
            (
                node.op,
                node.domain,
                tuple(t.name for t in node.inputs),
                tuple(t.name for t in node.outputs),
                attrs,
            )
        )
    for name, t in graph.tensors().items():
        if isinstance(t, gs.Constant):
            parts.append(_const_key(t))
        else:
            parts.append((name, str(t.dtype), repr(t.shape)))
    parts.append(tuple(t.name for t in graph.inputs))
    parts.append(tuple(t.name for t in graph.outputs))
    return hash(tuple(parts))


def _attr_key(v: object) -> object:
    """A hashable stand-in for one attribute value. A list is hashed as a tuple (with its
    element type: ONNX lists hold one type), not through ``repr``, which costs a quarter of a
    second for each of a tree ensemble's 10^5-entry lists, on every pass."""
    if isinstance(v, gs.Graph):
        return _fingerprint(v)
    if isinstance(v, gs.Constant):
        return _const_key(v)
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, (list, tuple)):
        try:
            return ("list", type(v[0]).__name__ if v else "", hash(tuple(v)))
        except TypeError:  # unhashable elements
            return repr(v)
    return repr(v)


def _const_key(t: gs.Constant) -> tuple:
    shape = tuple(int(d) for d in t.shape)
    if int(np.prod(shape)) > 1024:  # inference sees only its type and shape
        return (t.name, str(t.dtype), shape)
    return (t.name, str(t.dtype), shape, np.asarray(t.values).tobytes())


def annotate_shapes(graph: gs.Graph) -> str | None:
    """Set dtype and shape on the graph's Variables from shape inference (see infer_light).

    Returns:
        None, or a note when inference failed (rules then see only the shapes already known).
    """
    try:
        inferred = infer_light(graph)
    except Exception as e:
        msg = first_line(e, 160)
        return f"shape inference failed ({msg})"
    tensors = graph.tensors()
    g = inferred.graph
    for vi in list(g.value_info) + list(g.output):
        t = tensors.get(vi.name)
        if not isinstance(t, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if tt.elem_type:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if tt.HasField("shape"):
            t.shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            ]
    # the annotations came from this inference: inferring the annotated graph gives it again
    key = vars(graph)[_INFER_CACHE][0]
    setattr(graph, _INFER_CACHE, ((_fingerprint(graph),) + key[1:], inferred))
    return None


def opset_version(graph_or_model: gs.Graph | onnx.ModelProto, domain: str = "") -> int:
    if isinstance(graph_or_model, onnx.ModelProto):
        for o in graph_or_model.opset_import:
            if o.domain in (domain, "ai.onnx" if domain == "" else domain):
                return o.version
        return 0
    if domain in ("", "ai.onnx"):
        return int(graph_or_model.opset or 0)
    for o in graph_or_model.import_domains or []:
        if o.domain == domain:
            return int(o.version)
    return 0


def producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if len(tensor.inputs) else None


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.outputs)


def is_graph_input(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """An input of ``graph`` or, for a body, of a graph enclosing it (an outer initializer
    that is also a model input can be overridden: it is never a constant)."""
    g: gs.Graph | None = graph
    while g is not None:
        if any(t is tensor for t in g.inputs):
            return True
        root, g = g, mark(g, PARENT)
    return isinstance(tensor, gs.Constant) and tensor.name in (mark(root, OVERRIDABLE) or ())


def const_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, looking through Identity
    chains (the TorchScript exporter shares equal weights as ``Identity(initializer)``), else
    None (an overridable initializer has no fixed value). The one constant-value helper of the
    project."""
    for _ in range(16):
        if tensor is None:
            return None
        if isinstance(tensor, gs.Constant):
            return None if getattr(tensor, OVERRIDABLE_TENSOR, False) else np.asarray(tensor.values)
        node = producer(tensor)
        if node is None:
            return None
        if node.op == "Constant" and "value" in node.attrs:
            v = node.attrs["value"]
            return np.asarray(v.values) if isinstance(v, gs.Constant) else np.asarray(v)
        if node.op != "Identity" or not node.inputs:
            return None
        tensor = node.inputs[0]
    return None


def is_empty_tensor(tensor: gs.Tensor) -> bool:
    """An omitted optional input is an empty-named Variable in gs."""
    return isinstance(tensor, gs.Variable) and tensor.name == ""


def subgraphs(graph: gs.Graph) -> list[gs.Graph]:
    """The graphs held by ``graph``'s nodes' attributes (they hold their own in turn)."""
    return [a for node in graph.nodes for a in node.attrs.values() if isinstance(a, gs.Graph)]


def replace_uses(
    graph: gs.Graph, old: gs.Tensor, new: gs.Tensor, subs: list[gs.Graph] | None = None
) -> None:
    """Point every consumer of ``old`` (nodes, including subgraph nodes) at ``new``.

    ``subs``: ``subgraphs(graph)``, when a caller replaces many tensors of a graph whose nodes
    it does not add or remove in between (finding them visits every node: on a 1,700-node
    graph with 700 replacements that was most of the pass).
    """
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
    # nodes inside subgraphs reference outer tensors by object too
    for sub in subgraphs(graph) if subs is None else subs:
        _replace_in_subgraph(sub, old, new)


def _replace_in_subgraph(sub: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    for node in sub.nodes:
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
        for attr in node.attrs.values():
            if isinstance(attr, gs.Graph):
                _replace_in_subgraph(attr, old, new)


def has_subgraph(node: gs.Node) -> bool:
    return any(isinstance(a, gs.Graph) for a in node.attrs.values())


def used_in_subgraph(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """Whether a node inside any subgraph of ``graph`` reads ``tensor`` (an outer-scope value)."""

    def walk(sub: gs.Graph) -> bool:
        for n in sub.nodes:
            if any(t is tensor for t in n.inputs):
                return True
            if any(isinstance(a, gs.Graph) and walk(a) for a in n.attrs.values()):
                return True
        return False

    return any(
        isinstance(a, gs.Graph) and walk(a) for node in graph.nodes for a in node.attrs.values()
    )


def merge_refusal(graph: gs.Graph, drop: gs.Tensor, keep: gs.Tensor) -> str | None:
    """Why :func:`merge_tensors` would refuse to merge ``drop`` into ``keep`` (None if it
    would not): rules check this before they rewrite anything."""
    if drop is keep or not is_graph_output(graph, drop):
        return None
    if is_outer(graph, keep):
        return f"'{keep.name}' belongs to an enclosing graph and '{drop.name}' is a body output"
    if isinstance(keep, gs.Constant) or is_graph_input(graph, keep):
        return f"'{drop.name}' is a graph output and '{keep.name}' an input or initializer"
    if is_graph_output(graph, keep):
        return f"'{keep.name}' and '{drop.name}' are both graph outputs"
    if used_in_subgraph(graph, keep) or used_in_subgraph(graph, drop):
        return f"'{keep.name}' or '{drop.name}' is used inside a subgraph"
    return None


def merge_tensors(graph: gs.Graph, drop: gs.Tensor, keep: gs.Tensor) -> str | None:
    """Route every use of ``drop`` to ``keep`` (same value, same type).

    A graph output keeps its name: when ``drop`` is one, ``keep`` is renamed, which is only legal
    for a plain intermediate tensor. The producer of ``drop`` is not touched.

    Returns:
        None on success, or why the merge was refused (nothing changed then).
    """
    if drop is keep:
        return None
    why = merge_refusal(graph, drop, keep)
    if why:
        return why
    if is_graph_output(graph, drop):
        name = drop.name
        replace_uses(graph, drop, keep)
        drop.name = name + "__merged"
        keep.name = name
        if keep.dtype is None:
            keep.dtype = drop.dtype
        if keep.shape is None:
            keep.shape = drop.shape
        graph.outputs = [keep if t is drop else t for t in graph.outputs]
        return None
    replace_uses(graph, drop, keep)
    return None


def bypass(graph: gs.Graph, node: gs.Node, keep: gs.Tensor, drop: gs.Tensor) -> str | None:
    """Remove ``node`` by routing consumers of ``drop`` (its output) to ``keep`` (an input).

    Returns:
        None on success, or the reason the node was left alone (see :func:`merge_tensors`).
    """
    why = merge_tensors(graph, drop, keep)
    if why:
        return f"{node.name}: {why}"
    node.outputs.clear()
    node.inputs.clear()
    return None


def node_names_unique(graph: gs.Graph, prefix: str = "onnxopt") -> None:
    """Give every unnamed or duplicate-named node a unique name (site keys rely on names)."""
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            base = node.name or f"{prefix}_{node.op}"
            name, k = f"{base}_{i}", i
            while name in seen:
                k += 1
                name = f"{base}_{k}"
            node.name = name
        seen.add(node.name)


def make_constant(name: str, value: np.ndarray) -> gs.Constant:
    # np.ascontiguousarray would turn a 0-d array into shape (1,)
    return gs.Constant(name, np.array(value, order="C", copy=True))


def unique_name(graph: gs.Graph, base: str, taken: Iterable[str] | None = None) -> str:
    names = set(taken) if taken is not None else set(graph.tensors().keys())
    names |= mark(graph, TAKEN) or set()
    if base not in names:
        return base
    i = 1
    while f"{base}_{i}" in names:
        i += 1
    return f"{base}_{i}"
