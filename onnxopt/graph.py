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

from onnxopt.mapped_graph import adopt_mapped, prepare_mapped
from onnxopt.scopes import (
    OVERRIDABLE,
    PARENT,
    TAKEN,
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
    adopt_mapped(graph)
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
    prepare_mapped(graph)
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
    """gs drops initializers that are also graph inputs from the inputs; restore them in order.
    One that nothing reads any more (its readers were dead) is dropped by gs altogether: its
    input and its default come back too, since callers may still feed it by name."""
    inits = {t.name for t in out.graph.initializer}
    have = {v.name for v in out.graph.input}
    defaults = {t.name: t for t in like.graph.initializer}
    produced = {o for n in out.graph.node for o in n.output}
    keep = overridable(like)  # before IR 4 every initializer was an input: none is a default
    wanted = []
    for v in like.graph.input:
        if v.name in have or v.name not in defaults:
            continue
        if v.name not in inits:
            if v.name in produced or v.name not in keep:
                continue  # the name now belongs to a computed tensor, or was never a default
            out.graph.initializer.append(copy.deepcopy(defaults[v.name]))
        wanted.append(v)
    if not wanted:
        return
    order = {v.name: i for i, v in enumerate(like.graph.input)}
    merged = list(out.graph.input) + [copy.deepcopy(v) for v in wanted]
    merged.sort(key=lambda v: order.get(v.name, len(order)))
    del out.graph.input[:]
    out.graph.input.extend(merged)


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


def peek_values(t: gs.Constant) -> np.ndarray:
    """``t``'s values without loading them into the graph.

    An unloaded constant keeps its original TensorProto, which the export reuses as it is;
    once loaded it must be re-encoded from the array (~1 s per export on a 400 MB model).
    """
    lazy = t._values
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        return np.asarray(lazy.load())
    return np.asarray(t.values)


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
