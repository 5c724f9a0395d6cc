"""Running two models chunk by chunk for :mod:`onnxopt.layerwise`: a chunk's size from the
inferred shapes, and one model's sessions whose weights are fed from the mapped file.

A chunk holds consecutive tensors whose estimated outputs (both models) fit a byte budget; the
estimate is corrected by the bytes the runs actually return. A :class:`Side` builds a session
per chunk with the chunk's tensors as the graph's outputs and only the nodes they depend on (so
the chunks together cost about half of one full run each, not one each); the weights are
inputs of each run (:mod:`onnxopt.mapped`), and the mapped pages are dropped after the run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import ModelError, first_line
from onnxopt.mapped import MappedModel

logger = logging.getLogger(__name__)


def estimate_bytes(pairs: list[Any], model: MappedModel, run: dict[str, np.ndarray]) -> None:
    """Fill each pair's ``est_bytes`` (:class:`onnxopt.layerwise.Pair`) from shape inference
    (dynamic dims named like an input's take the size the first run gives them; other unknown
    dims count as 1 and are corrected later)."""
    sizes: dict[str, int] = {}
    for v in model.proto.graph.input:
        if v.name in run:
            for d, n in zip(v.type.tensor_type.shape.dim, np.shape(run[v.name])):
                if d.HasField("dim_param"):
                    sizes[d.dim_param] = int(n)
    try:
        inferred = onnx.shape_inference.infer_shapes(model.session_model(), data_prop=True)
        infos = list(inferred.graph.value_info) + list(inferred.graph.output)
    except Exception as e:  # noqa: BLE001 - sizes are an estimate only
        logger.info("shape inference failed (%s); chunk sizes from the runs", first_line(e))
        infos = []
    known = {}
    for v in infos:
        t = v.type.tensor_type
        if not t.elem_type:
            continue
        item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, 1)
        known[v.name] = n * item
    fallback = max(known.values(), default=4096)
    for p in pairs:
        p.est_bytes = known.get(p.a, fallback)


def chunks(pairs: list[Any], max_bytes: int, scale: float = 1.0) -> list[list[Any]]:
    """Consecutive slices of ``pairs`` whose estimated outputs (both models) fit ``max_bytes``."""
    out: list[list[Any]] = []
    cur: list[Any] = []
    used = 0.0
    for p in pairs:
        need = 2 * p.est_bytes * scale
        if cur and used + need > max_bytes:
            out.append(cur)
            cur, used = [], 0.0
        cur.append(p)
        used += need
    if cur:
        out.append(cur)
    return out


def keep_needed(graph: onnx.GraphProto, outputs: list[str]) -> None:
    """Drop the nodes that no tensor of ``outputs`` depends on: a chunk of early tensors then
    runs the graph only up to them (nodes must be in topological order, as ONNX requires)."""
    needed = set(outputs)
    keep: list[int] = []
    for i in range(len(graph.node) - 1, -1, -1):
        n = graph.node[i]
        if any(o in needed for o in n.output):
            keep.append(i)
            needed.update(n.input)
            needed.update(_subgraph_reads(n))
    if len(keep) == len(graph.node):
        return
    kept = [graph.node[i] for i in reversed(keep)]
    copies = [onnx.NodeProto() for _ in kept]
    for c, n in zip(copies, kept):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name the subgraphs of ``node`` (If, Loop, Scan) read, outer ones included."""
    out: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                out.update(n.input)
                out.update(_subgraph_reads(n))
    return out


class Side:
    """One model's sessions (one per set of outputs), its weights fed from the mapped file."""

    def __init__(self, model: MappedModel, threads: int) -> None:
        self.model = model
        self.base = model.session_model()
        self.threads = threads
        self.copied = False  # onnxruntime refused weights as inputs: initializers instead

    def session(self, outputs: list[str]) -> Any:
        """A session computing ``outputs`` (graph optimizations off)."""
        import onnxruntime as ort

        from onnxopt.runner import build_session

        m = onnx.ModelProto()
        m.CopyFrom(self.model.proto if self.copied else self.base)
        del m.graph.output[:]
        m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in outputs)
        keep_needed(m.graph, outputs)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")
        if self.threads:
            so.intra_op_num_threads = self.threads
        names = list(self.model.weights) if self.copied else []
        arrays = [np.ascontiguousarray(self.model.weights[n]) for n in names]
        try:
            return build_session(m.SerializeToString(), names, arrays, so)
        except ModelError:
            if self.copied or not self.model.weights:
                raise
            logger.info("weights as inputs refused; giving them as initializers (copied)")
            self.copied = True
            return self.session(outputs)

    def run(self, sess: Any, run: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run; the mapped weights' pages are dropped afterwards."""
        feed = run if self.copied else self.model.feeds(run)
        names = [o.name for o in sess.get_outputs()]
        try:
            values = sess.run(names, feed)
        except Exception as e:
            raise ModelError(f"onnxruntime failed to run the model: {first_line(e)}") from e
        finally:
            self.model.release()
        return dict(zip(names, values))
