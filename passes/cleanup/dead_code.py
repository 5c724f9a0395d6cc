"""dead-code: remove nodes no graph output depends on, and initializers nothing reads.

Works on the ModelProto so that unused initializers (which onnx-graphsurgeon never imports) are
counted: import, onnx-graphsurgeon ``cleanup`` (recursing into subgraphs), export. Graph inputs
are never removed, even when unused, because callers feed them by name. Not bisectable:
removing values nothing reads cannot change an output.
"""

from __future__ import annotations

import logging

import onnx

from onnxopt.graph import to_graph, to_model
from onnxopt.passes.base import Pass, PassContext, PassResult, register

logger = logging.getLogger(__name__)


def _count(model: onnx.ModelProto) -> tuple[int, int]:
    return len(model.graph.node), len(model.graph.initializer)


@register
class DeadCode(Pass):
    """Dead nodes and unused initializers."""

    name = "dead-code"
    exact = True
    summary = "remove dead nodes and unused initializers (graph inputs untouched)"
    tags = ("cleanup",)
    needs_model = True

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        nodes_before, inits_before = _count(model)
        graph = to_graph(model)
        graph.cleanup(remove_unused_graph_inputs=False)
        out = to_model(graph, like=model)
        nodes_after, inits_after = _count(out)
        removed_nodes = max(0, nodes_before - nodes_after)
        removed_inits = max(0, inits_before - inits_after)
        n = removed_nodes + removed_inits
        if not n:
            return PassResult.unchanged()
        return PassResult(
            changed=True, rewrites=n,
            notes=[f"removed {removed_nodes} nodes and {removed_inits} initializers"],
            details={"nodes": removed_nodes, "initializers": removed_inits}, model=out,
        )

    def run(self, graph, ctx: PassContext) -> PassResult:  # noqa: ANN001 - gs.Graph
        """Graph form (for callers without a ModelProto): counts nodes only."""
        before = len(graph.nodes)
        graph.cleanup(remove_unused_graph_inputs=False)
        n = before - len(graph.nodes)
        return PassResult(changed=n > 0, rewrites=n)


PASSES = [DeadCode]
