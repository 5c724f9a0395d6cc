"""remove-identity: drop ``Identity`` and inference-mode ``Dropout``.

``Identity(x) = x``. In inference mode ``Dropout(x, ratio) = x`` (the mask is all ones), which
holds when ``training_mode`` is absent or a constant false (opset >= 12), always for opsets 7-11,
and when ``is_test = 1`` before opset 7. A Dropout whose mask output is read is kept.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import (
    const_value,
    is_empty_tensor,
    is_graph_output,
    merge_tensors,
    node_names_unique,
    opset_version,
)
from onnxopt.passes.cleanup._util import STANDARD_DOMAINS, detach

logger = logging.getLogger(__name__)


def _mask_used(graph: gs.Graph, node: gs.Node) -> bool:
    if len(node.outputs) < 2:
        return False
    mask = node.outputs[1]
    return bool(mask.name) and (len(mask.outputs) > 0 or is_graph_output(graph, mask))


def dropout_is_inference(graph: gs.Graph, node: gs.Node) -> str | None:
    """None when ``node`` (a Dropout) is the identity, else why not."""
    opset = opset_version(graph)
    if opset and opset < 7:
        if int(node.attrs.get("is_test", 0)) != 1:
            return f"{node.name}: Dropout (opset {opset}) without is_test=1"
    if len(node.inputs) >= 3 and not is_empty_tensor(node.inputs[2]):
        mode = const_value(node.inputs[2])
        if mode is None:
            return f"{node.name}: training_mode is not a constant"
        if bool(np.asarray(mode).reshape(-1)[0]):
            return f"{node.name}: training_mode is true"
    if _mask_used(graph, node):
        return f"{node.name}: the dropout mask '{node.outputs[1].name}' is used"
    return None


class RemoveIdentity(Pass):
    """Identity and inference-mode Dropout removal."""

    name = "remove-identity"
    exact = True
    summary = "remove Identity and inference-mode Dropout nodes"
    tags = ("cleanup",)
    subgraphs = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        node_names_unique(graph)
        notes: list[str] = []
        sites: list[str] = []
        for node in list(graph.nodes):
            if node.domain not in STANDARD_DOMAINS or node.op not in ("Identity", "Dropout"):
                continue
            if not node.inputs or not node.outputs or is_empty_tensor(node.inputs[0]):
                continue
            if node.op == "Dropout":
                why = dropout_is_inference(graph, node)
                if why:
                    notes.append(why)
                    continue
            if not ctx.allow(node.name):
                continue
            why = merge_tensors(graph, node.outputs[0], node.inputs[0])
            if why:
                notes.append(f"{node.name}: kept, {why}")
                continue
            detach(node)
            sites.append(node.name)
        return PassResult(changed=bool(sites), rewrites=len(sites), notes=notes, sites=sites)
