"""fold-shapes: fold shape computations whose answer is static after shape inference.

- ``Shape(x)`` with a fully static ``x`` is ``x.shape[start:end]`` (opset 15 ``start``/``end``
  follow Python slicing: negative values count from the end, out-of-range values clamp);
- ``Size(x)`` is ``prod(x.shape)``;
- ``Gather(Shape(x), i)`` (axis 0, constant ``i``) is ``x.shape[i]`` whenever the dims it picks
  are static, even if others are dynamic (the usual ``batch, -1`` reshape of an exported model).
Everything downstream that becomes constant (``Concat``, ``Unsqueeze``, arithmetic ...) is then
folded with the constant folder, up to the ``Reshape`` / ``Expand`` that consumes it.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import const_value, node_names_unique
from onnxopt.passes.cleanup._util import STANDARD_DOMAINS, TypeShape, infer_facts, materialize
from onnxopt.passes.cleanup.fold_constants import FoldConfig, fold

logger = logging.getLogger(__name__)


def shape_value(node: gs.Node, ts: TypeShape | None) -> np.ndarray | None:
    """The value of a Shape/Size node when its input's shape is static, else None."""
    if ts is None or ts.static_shape is None:
        return None
    shape = ts.static_shape
    if node.op == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end", None)
    return np.array(shape[start : None if end is None else int(end)], dtype=np.int64)


def gathered_dims(node: gs.Node, ts: TypeShape | None) -> np.ndarray | None:
    """The value of ``Gather(Shape(x), i, axis=0)`` when the picked dims of x are static."""
    shape_node = node.inputs[0].inputs[0]
    if ts is None or ts.shape is None or len(node.inputs) < 2:
        return None
    if int(node.attrs.get("axis", 0)) != 0:
        return None
    idx = const_value(node.inputs[1])
    if idx is None or idx.dtype.kind not in "iu":
        return None
    dims = list(ts.shape)
    start = int(shape_node.attrs.get("start", 0))
    end = shape_node.attrs.get("end", None)
    dims = dims[start : None if end is None else int(end)]
    n = len(dims)
    flat = idx.astype(np.int64).reshape(-1)
    if any(i < -n or i >= n for i in flat):
        return None
    picked = [dims[int(i)] for i in flat]
    if any(not isinstance(d, int) or d < 0 for d in picked):
        return None
    return np.array(picked, dtype=np.int64).reshape(idx.shape)


class FoldShapes(Pass):
    """Static Shape / Size / Gather(Shape) folding, then folding of the shape arithmetic."""

    name = "fold-shapes"
    exact = True
    summary = "fold Shape/Size (and the shape arithmetic after them) when shapes are static"
    tags = ("cleanup",)
    subgraphs = True

    config_class = FoldConfig

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        node_names_unique(graph)
        graph.toposort()
        facts, note = infer_facts(graph)
        notes = [note] if note else []
        sites: list[str] = []
        roots: set[int] = set()
        for node in list(graph.nodes):
            if node.domain not in STANDARD_DOMAINS or not node.inputs or not node.outputs:
                continue
            value = None
            if node.op in ("Shape", "Size"):
                value = shape_value(node, facts.get(node.inputs[0].name))
                if value is None:
                    continue
            elif node.op == "Gather":
                src = node.inputs[0]
                p = src.inputs[0] if len(src.inputs) else None
                if p is None or p.op != "Shape" or p.domain not in STANDARD_DOMAINS:
                    continue
                if not p.inputs:
                    continue
                value = gathered_dims(node, facts.get(p.inputs[0].name))
                if value is None:
                    continue
            else:
                continue
            if not ctx.allow(node.name):
                continue
            out = node.outputs[0]
            materialize(graph, out, value)
            roots.add(id(out))
            sites.append(node.name)
        if not sites:
            return PassResult(changed=False, notes=notes)
        graph.cleanup(remove_unused_graph_inputs=False)
        folded, fold_notes = fold(
            graph,
            ctx,
            max_bytes=int(self.config.max_bytes),
            growth=float(self.config.growth),
            skip_ops={"DequantizeLinear"},
            roots=roots,
            keys=False,
        )
        notes.extend(fold_notes)
        return PassResult(
            changed=True,
            rewrites=len(sites),
            notes=notes,
            sites=sites,
            details={"folded_after": len(folded)},
        )
