"""Passes inside If / Loop / Scan bodies.

**Running a graph pass everywhere** (:func:`run_everywhere`, used when ``Pass.subgraphs`` is
set): the pass runs on the main graph, then on every body (outer bodies first), each time with
a context whose ``allow`` and ``sites`` speak the body's keys (``<scope>::<key>`` outside, see
:mod:`onnxopt.scopes`), so the pass manager bisects body sites like any other and the report
says where each one lives. Before a body is rewritten:
- its tensors and the outer tensors it reads get the dtypes and shapes that whole-model shape
  inference gives (onnx infers inside bodies), so rules that need ranks work there;
- it knows its parent (:data:`~onnxopt.scopes.PARENT`), so an outer-scope graph input counts
  as an input (an overridable initializer is never folded) and an outer tensor is never
  renamed or turned into a body output by a rewrite (:func:`~onnxopt.scopes.is_outer`);
- it knows every name of the model (:data:`~onnxopt.scopes.TAKEN`), so new tensors get
  globally unique names.
Constant folding across the boundary is then valid by construction: inside a body, only
initializers (of any scope, not overridable) and Constant outputs count as constants; an
outer value computed at run time, a loop-carried value or an iteration count never does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from onnxopt.graph_shapes import infer_light
from onnxopt.scopes import (
    PARENT,
    SEP,
    TAKEN,
    _proto_bodies,
    all_graphs,
    has_bodies,
    scope_name,
    site_key,
    walk,
)

logger = logging.getLogger(__name__)

#: notes kept per body
MAX_BODY_NOTES = 10


def _annotate(graph: gs.Graph) -> None:
    """Dtypes and shapes of every scope's tensors from whole-model shape inference."""
    try:
        inferred = infer_light(graph)
    except Exception as e:  # the bodies then see only what the graph states
        logger.debug("whole-model shape inference failed: %s", e)
        return
    types: dict[str, onnx.TypeProto] = {}

    def collect(g: onnx.GraphProto) -> None:
        for v in list(g.input) + list(g.value_info) + list(g.output):
            types.setdefault(v.name, v.type)
        for n in g.node:
            for body in _proto_bodies(n).values():
                collect(body)

    collect(inferred.graph)
    for g in all_graphs(graph)[1:]:
        for t in g.tensors().values():
            ty = types.get(t.name)
            if not isinstance(t, gs.Variable) or ty is None or not ty.HasField("tensor_type"):
                continue
            tt = ty.tensor_type
            if t.dtype is None and tt.elem_type:
                t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
            if t.shape is None and tt.HasField("shape"):
                t.shape = [
                    d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in tt.shape.dim
                ]


def _link(graph: gs.Graph) -> list[tuple[str, gs.Graph]]:
    """Set PARENT and TAKEN on every body; returns (scope, body), outer bodies first."""
    taken = {name for g in all_graphs(graph) for name in g.tensors()}
    out = []
    for path, g in walk(graph):
        for node in g.nodes:
            for value in node.attrs.values():
                if isinstance(value, gs.Graph):
                    setattr(value, PARENT, g)
                    setattr(value, TAKEN, taken)
        if path:
            out.append((scope_name(path), g))
    return out


def scoped_context(ctx: Any, scope: str) -> Any:
    """``ctx`` for a body: site keys there are the body's own (the filter is translated)."""
    f = ctx.site_filter
    if f is not None:
        prefix = scope + SEP
        f = {k[len(prefix) :] for k in f if k.startswith(prefix)}
    return dataclasses.replace(ctx, site_filter=f)


def run_everywhere(run: Callable[[gs.Graph, Any], Any], graph: gs.Graph, ctx: Any) -> Any:
    """Run a graph pass's ``run`` on the main graph, then on every If/Loop/Scan body.

    Returns the main graph's PassResult with the bodies' rewrites, notes (prefixed with the
    body) and sites (``<scope>::<key>``) added, and ``details["subgraphs"]`` per body.
    """
    result = run(graph, ctx)
    if not has_bodies(graph):
        return result
    _annotate(graph)
    for scope, body in _link(graph):
        try:
            r = run(body, scoped_context(ctx, scope))
        except Exception as e:
            logger.debug("body %s raised", scope, exc_info=True)
            result.notes.append(f"in {scope}: not rewritten ({type(e).__name__}: {e})")
            continue
        result.notes.extend(f"in {scope}: {n}" for n in r.notes[:MAX_BODY_NOTES])
        if not r.changed:
            continue
        result.changed = True
        result.rewrites += r.rewrites
        result.sites.extend(site_key(scope, k) for k in r.sites)
        sub = result.details.setdefault("subgraphs", {})
        sub[scope] = {"rewrites": r.rewrites, **r.details}
    return result


def prepare_bodies(graph: gs.Graph) -> list[tuple[str, gs.Graph]]:
    """(scope, graph) for the main graph (scope "") and every body, each body annotated with
    the types whole-model inference gives and linked to its parent (for passes that handle
    bodies themselves, such as static int8)."""
    if not has_bodies(graph):
        return [("", graph)]
    _annotate(graph)
    return [("", graph), *_link(graph)]
