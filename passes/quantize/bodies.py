"""Static int8 inside If / Loop / Scan bodies: planning per scope, calibration of body tensors.

Planning and Q/DQ insertion run on each graph of the model (the main graph, then every body,
see :func:`onnxopt.subgraphs.prepare_bodies`); a body's sites are keyed ``<scope>::<node>``
like every body site, so the fallback and the manager's bisection treat them as any other.

Calibration reads a body tensor by exposing it as an output of the model (:func:`expose`):

- in a Loop or Scan body it becomes an extra *scan output* of the body and of the node, which
  ONNX stacks over the iterations along a new first axis: the statistics cover every
  iteration of every run;
- in an If branch it becomes an extra output of that branch, and the other branch outputs an
  empty tensor of the same type (an empty array adds nothing to the statistics);
- in a nested body, it is lifted one level at a time up to the main graph.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.scopes import SEP

logger = logging.getLogger(__name__)

Path = list[tuple[onnx.NodeProto, str]]


def split_key(key: str) -> tuple[str, str]:
    """``scope::node`` -> (scope, node); a main-graph key -> ("", key)."""
    scope, sep, name = key.rpartition(SEP)
    return (scope, name) if sep else ("", key)


def _locate(model: onnx.ModelProto) -> dict[str, Path]:
    """Each tensor name of a body -> the (node, attribute) path to the body defining it."""
    where: dict[str, Path] = {}

    def visit(g: onnx.GraphProto, path: Path) -> None:
        for n in g.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    sub = path + [(n, a.name)]
                    for v in a.g.input:
                        where[v.name] = sub
                    for m in a.g.node:
                        for o in m.output:
                            where[o] = sub
                    visit(a.g, sub)

    visit(model.graph, [])
    return where


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _lift(node: onnx.NodeProto, attr: str, tensor: str) -> str:
    """Make ``tensor`` of ``node``'s body ``attr`` an output of ``node``; returns its name."""
    vi = onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None)
    out = f"{tensor}__onnxopt_{node.op_type.lower()}"
    if node.op_type in ("Loop", "Scan"):
        _attr(node, attr).g.output.append(vi)
        if node.op_type == "Scan":
            for extra in ("scan_output_axes", "scan_output_directions"):
                a = _attr(node, extra)
                if a is not None:
                    a.ints.append(0)
    elif node.op_type == "If":
        other = "else_branch" if attr == "then_branch" else "then_branch"
        _attr(node, attr).g.output.append(vi)
        empty = f"{tensor}__onnxopt_empty"
        og = _attr(node, other).g
        og.node.append(
            onnx.helper.make_node(
                "Constant",
                [],
                [empty],
                value=onnx.numpy_helper.from_array(np.zeros(0, np.float32)),
            )
        )
        og.output.append(onnx.helper.make_tensor_value_info(empty, onnx.TensorProto.FLOAT, None))
    else:
        raise ValueError(f"{node.op_type} '{node.name}': bodies of this op are not calibrated")
    node.output.append(out)
    return out


def expose(model: onnx.ModelProto, names: list[str]) -> dict[str, str]:
    """Edit ``model`` (a private copy) so that every tensor in ``names`` can be read as a
    graph output; returns {tensor: the output that carries its values}."""
    where = _locate(model)
    have = {o.name for o in model.graph.output}
    out: dict[str, str] = {}
    for name in names:
        current = name
        try:
            for node, attr in reversed(where.get(name, [])):
                current = _lift(node, attr, current)
        except ValueError as e:
            logger.debug("%s", e)
            continue
        out[name] = current
        if current not in have:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, None)
            )
            have.add(current)
    return out


def scoped(keys: set[str]) -> dict[str, set[str]]:
    """Site keys grouped by scope: {scope: {node names}}."""
    out: dict[str, set[str]] = {}
    for k in keys:
        scope, name = split_key(k)
        out.setdefault(scope, set()).add(name)
    return out


def scope_graphs(graph: gs.Graph) -> list[tuple[str, gs.Graph]]:
    """(scope, graph) for the main graph and every body, ready for planning."""
    from onnxopt.graph import node_names_unique
    from onnxopt.subgraphs import prepare_bodies

    scopes = prepare_bodies(graph)
    for scope, g in scopes:
        if scope:
            node_names_unique(g, prefix="onnxopt_body")
    return scopes
