"""Evaluate a constant subgraph in onnxruntime: one session for the whole subgraph.

The nodes to fold are copied into a small model whose outputs are the requested tensors and
whose initializers are the constants they read; it runs once with graph optimizations off (so
onnxruntime computes exactly what the node kernels compute). If that session cannot be built or
run (an op or dtype onnxruntime lacks), the nodes are retried one at a time so that one bad node
does not block the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.passes.cleanup._util import short

logger = logging.getLogger(__name__)

#: per-node retries are quadratic-ish in the worst case; above this, give up after the batch
MAX_SINGLE_RETRIES = 400


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _build(
    graph: gs.Graph,
    nodes: Sequence[gs.Node],
    outputs: Sequence[gs.Tensor],
    values: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """A model computing ``outputs`` from ``nodes``; ``values`` are extra known constants."""
    node_protos = []
    inits: dict[str, onnx.TensorProto] = {}
    produced = {t.name for n in nodes for t in n.outputs}
    exported = gs.export_onnx(
        gs.Graph(
            nodes=list(nodes),
            inputs=[],
            outputs=list(outputs),
            opset=graph.opset,
            import_domains=graph.import_domains,
        ),
        do_type_check=False,
    )
    node_protos = list(exported.graph.node)
    for init in exported.graph.initializer:
        inits[init.name] = init
    for n in nodes:
        for t in n.inputs:
            if t.name and t.name not in produced and t.name not in inits:
                if t.name in values:
                    inits[t.name] = onnx.numpy_helper.from_array(values[t.name], t.name)
    outs = [onnx.helper.make_empty_tensor_value_info(t.name) for t in outputs]
    g = onnx.helper.make_graph(node_protos, "fold", [], outs, initializer=list(inits.values()))
    model = onnx.helper.make_model(g, opset_imports=list(exported.opset_import))
    model.ir_version = min(model.ir_version, 10)
    return model


def evaluate(
    graph: gs.Graph,
    nodes: Sequence[gs.Node],
    outputs: Sequence[gs.Tensor],
    values: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Compute ``outputs`` (tensors produced by ``nodes``, all of whose inputs are constant).

    Args:
        graph: the graph the nodes belong to (for opsets).
        nodes: the constant nodes, in topological order.
        outputs: the tensors wanted.
        values: known values of Constant-node outputs (folded in as initializers).

    Returns:
        ({tensor name: value} for every output that could be computed, notes on failures).
    """
    values = dict(values or {})
    if not outputs:
        return {}, []
    try:
        model = _build(graph, nodes, outputs, values)
        sess = _session(model)
        names = [o.name for o in sess.get_outputs()]
        res = sess.run(names, {})
        out = {n: v for n, v in zip(names, res, strict=True) if isinstance(v, np.ndarray)}
        return out, []
    except Exception as e:
        logger.debug("batch fold failed: %s", short(e))
        batch_error = short(e)
    if len(nodes) > MAX_SINGLE_RETRIES:
        return {}, [f"constant subgraph of {len(nodes)} nodes failed in onnxruntime: {batch_error}"]
    known = dict(values)
    notes: list[str] = []
    wanted = {t.name for t in outputs}
    for node in nodes:
        if any(
            t.name and t.name not in known and not isinstance(t, gs.Constant) for t in node.inputs
        ):
            continue  # an input could not be computed
        outs = [t for t in node.outputs if t.name]
        try:
            model = _build(graph, [node], outs, known)
            sess = _session(model)
            names = [o.name for o in sess.get_outputs()]
            for n, v in zip(names, sess.run(names, {}), strict=True):
                if isinstance(v, np.ndarray):
                    known[n] = v
        except Exception as e:
            notes.append(f"{node.name} ({node.op}): not folded, onnxruntime: {short(e)}")
    return {n: v for n, v in known.items() if n in wanted}, notes
