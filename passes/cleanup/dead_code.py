"""dead-code: remove nodes no graph output depends on, and initializers nothing reads.

A graph pass: onnx-graphsurgeon ``cleanup`` (recursing into subgraphs) removes dead nodes and
the constants only they read. Initializers that nothing read even before (which gs never
imports, so every export drops them) are recorded by ``onnxopt.graph.to_graph`` and counted
here. Graph inputs are never removed, even when unused, because callers feed them by name;
that includes an initializer that is also a graph input (its default) once its readers died.
Not bisectable: removing values nothing reads cannot change an output.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import OVERRIDABLE_TENSOR, UNUSED_INITIALIZERS

logger = logging.getLogger(__name__)


def _constants(graph: gs.Graph) -> set[str]:
    """Initializer names, less those that are also graph inputs (the export keeps them)."""
    return {
        name
        for name, t in graph.tensors().items()
        if isinstance(t, gs.Constant) and not getattr(t, OVERRIDABLE_TENSOR, False)
    }


class DeadCode(Pass):
    """Dead nodes and unused initializers."""

    name = "dead-code"
    exact = True
    summary = "remove dead nodes and unused initializers (graph inputs untouched)"
    tags = ("cleanup",)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        nodes_before, consts_before = len(graph.nodes), _constants(graph)
        graph.cleanup(remove_unused_graph_inputs=False)
        removed_nodes = nodes_before - len(graph.nodes)
        never_read = vars(graph).get(UNUSED_INITIALIZERS, [])
        setattr(graph, UNUSED_INITIALIZERS, [])  # reported once
        removed_inits = len(consts_before - _constants(graph)) + len(never_read)
        n = removed_nodes + removed_inits
        if not n:
            return PassResult.unchanged()
        return PassResult(
            changed=True,
            rewrites=n,
            notes=[f"removed {removed_nodes} nodes and {removed_inits} initializers"],
            details={"nodes": removed_nodes, "initializers": removed_inits},
        )
