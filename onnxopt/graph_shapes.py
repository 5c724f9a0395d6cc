"""Shape inference on onnx-graphsurgeon graphs without exporting their large weights
(:func:`infer_light`, cached per graph fingerprint), and :func:`annotate_shapes`, which writes
the inferred dtypes and shapes back onto a graph's tensors for the passes that read them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.errors import first_line


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
