"""Provenance: which nodes of the original model each node of a rewritten model came from.

Stored on the node itself, in ``NodeProto.metadata_props`` under the key ``onnxopt.from``, as a
JSON list of node names of the pipeline's input model, so it survives save and load (onnx >= 1.16
carries node metadata at every IR version; onnx's checker and onnxruntime accept it). A node
without the key comes from itself: the original nodes are never annotated.

Three places record it, once for every pass:

- :func:`onnxopt.graph.to_graph` / :func:`onnxopt.graph.to_model` carry it across
  onnx-graphsurgeon (which drops node metadata) as an attribute of the ``gs.Node``;
- rewrites that know their sources say so with :func:`inherit` (fusion's ``replace_root``: the
  new nodes come from every matched node; the int8 Q/DQ builder: a Q/DQ pair comes from the
  node whose tensor it quantizes);
- :meth:`onnxopt.contract.Pass.rewrite` fills in the rest by comparing the nodes before and
  after the pass (:func:`snapshot`, :func:`record`): a node keeps the origins of the node of the
  same name; a new node inherits those of the nodes that produced its output tensors; a removed
  node's origins go to its heirs (the new producer of a tensor it produced, else the producer of
  the tensor its consumers read instead, else the new nodes that read its inputs, else the
  first surviving producers downstream).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import onnx

#: the metadata key
KEY = "onnxopt.from"
#: the attribute of a ``gs.Node`` that holds its origins while a graph is edited
ATTR = "onnxopt_from"
#: how far downstream a removed node looks for a surviving heir
_MAX_DEPTH = 6


def from_proto(node: onnx.NodeProto) -> tuple[str, ...] | None:
    """The origins recorded on ``node`` (None: none recorded, it is its own origin)."""
    for e in node.metadata_props:
        if e.key == KEY:
            try:
                value = json.loads(e.value)
            except ValueError:
                return None
            return tuple(str(v) for v in value) if isinstance(value, list) else None
    return None


def set_proto(node: onnx.NodeProto, origins: Iterable[str]) -> None:
    """Record ``origins`` on ``node`` (replacing what was there)."""
    value = json.dumps(list(origins))
    for e in node.metadata_props:
        if e.key == KEY:
            e.value = value
            return
    e = node.metadata_props.add()
    e.key, e.value = KEY, value


def origins(node: Any) -> tuple[str, ...]:
    """The original nodes ``node`` (a ``gs.Node`` or a ``NodeProto``) came from."""
    got = from_proto(node) if isinstance(node, onnx.NodeProto) else getattr(node, ATTR, None)
    if got is not None:
        return tuple(got)
    return (node.name,) if node.name else ()


def inherit(new_nodes: Iterable[Any], sources: Iterable[Any]) -> None:
    """``new_nodes`` (gs.Nodes) come from ``sources`` (gs.Nodes of the graph being edited)."""
    merged = _union(origins(s) for s in sources)
    for n in new_nodes:
        setattr(n, ATTR, merged)


def model_origins(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Every named node of the main graph and its origins."""
    return {n.name: origins(n) for n in model.graph.node if n.name}


def to_gs(model: onnx.ModelProto, graph: Any) -> None:
    """After ``gs.import_onnx(model)``: put recorded origins on the gs nodes."""
    protos = model.graph.node
    if len(protos) != len(graph.nodes):
        return
    for p, n in zip(protos, graph.nodes):
        got = from_proto(p)
        if got is not None and p.name == n.name:
            setattr(n, ATTR, got)


def from_gs(graph: Any, model: onnx.ModelProto) -> None:
    """After ``gs.export_onnx(graph)``: write the gs nodes' origins into the exported nodes."""
    protos = model.graph.node
    if len(protos) != len(graph.nodes):
        by_name = {p.name: p for p in protos if p.name}
        pairs = [(by_name.get(n.name), n) for n in graph.nodes]
    else:
        pairs = list(zip(protos, graph.nodes))
    for p, n in pairs:
        got = getattr(n, ATTR, None)
        if p is not None and got is not None:
            set_proto(p, got)


# ------------------------------------------------------------------------------------------------
# the generic record: compare the nodes before and after a pass


@dataclass(frozen=True)
class Rec:
    """One node as the record sees it."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    origins: tuple[str, ...]
    #: origins were recorded explicitly (on a new node, by the rewrite itself)
    explicit: bool


def records(form: Any) -> list[Rec]:
    """The nodes of a gs.Graph or a ModelProto (detached gs nodes are left out)."""
    if isinstance(form, onnx.ModelProto):
        return [
            Rec(n.name, tuple(n.input), tuple(n.output), origins(n), from_proto(n) is not None)
            for n in form.graph.node
        ]
    out = []
    for n in form.nodes:
        if not n.outputs:
            continue  # detached by the rewrite: removed at export
        out.append(
            Rec(
                n.name,
                tuple(t.name for t in n.inputs),
                tuple(t.name for t in n.outputs),
                origins(n),
                getattr(n, ATTR, None) is not None,
            )
        )
    return out


def snapshot(form: Any) -> list[Rec]:
    """The nodes before a pass (see :func:`record`)."""
    return records(form)


def record(before: list[Rec], form: Any) -> int:
    """Fill in the origins of the nodes of ``form`` (the working graph or proto after a pass)
    from ``before``. Returns how many nodes got a record."""
    after = records(form)
    found = _assign(before, after)
    names = {r.name for r in before}
    changed = {
        r.name: found[r.name]
        for r in after
        if r.name
        and found.get(r.name)
        and (r.name not in names or set(found[r.name]) != set(r.origins))
        and not (r.explicit and found[r.name] == r.origins)
    }
    if isinstance(form, onnx.ModelProto):
        for n in form.graph.node:
            if n.name in changed:
                set_proto(n, changed[n.name])
    else:
        for n in form.nodes:
            if n.name in changed:
                setattr(n, ATTR, changed[n.name])
    return len(changed)


def _assign(before: list[Rec], after: list[Rec]) -> dict[str, tuple[str, ...]]:
    bname = {r.name: r for r in before if r.name}
    aname = {r.name: r for r in after if r.name}
    bprod = {t: r for r in before for t in r.outputs if t}
    aprod = {t: r for r in after for t in r.outputs if t}
    found: dict[str, list[str]] = {}
    for r in after:
        if r.explicit or r.name in bname:
            base = r.origins if r.explicit else bname[r.name].origins
        else:
            base = _union(bprod[t].origins for t in r.outputs if t in bprod)
        found[r.name] = list(base)
    cons: dict[str, list[tuple[Rec, int]]] = {}
    for r in before:
        for i, t in enumerate(r.inputs):
            cons.setdefault(t, []).append((r, i))
    new = [r for r in after if r.name not in bname]
    for r in before:
        if r.name and r.name not in aname:
            for heir in _heirs(r, aname, aprod, cons, new):
                _extend(found.setdefault(heir, []), r.origins)
    for r in after:  # new nodes still without origins: those of their first known producer
        if not found.get(r.name) and r.name not in bname:
            for t in r.inputs:
                p = aprod.get(t)
                if p is not None and p.name != r.name and found.get(p.name) and t in bprod:
                    found[r.name] = list(found[p.name])
                    break
    return {k: tuple(v) for k, v in found.items()}


def _heirs(
    r: Rec,
    aname: dict[str, Rec],
    aprod: dict[str, Rec],
    cons: dict[str, list[tuple[Rec, int]]],
    new: list[Rec],
) -> list[str]:
    """The nodes after the pass that took over removed node ``r``'s work."""
    heirs = [aprod[t].name for t in r.outputs if t in aprod]
    if heirs:
        return heirs
    for t in r.outputs:  # bypassed: a surviving consumer reads another tensor in that slot
        for c, slot in cons.get(t, []):
            now = aname.get(c.name)
            if now is not None and slot < len(now.inputs) and now.inputs[slot] != t:
                p = aprod.get(now.inputs[slot])
                heirs.append(p.name if p is not None else now.name)
    if heirs:
        return heirs
    heirs = [a.name for a in new for t in r.inputs if t in a.inputs]  # new nodes reading its inputs
    if heirs:
        return heirs
    frontier, seen = list(r.outputs), set(r.outputs)
    for _ in range(_MAX_DEPTH):
        nxt = []
        for t in frontier:
            for c, _slot in cons.get(t, []):
                for o in c.outputs:
                    if o in aprod:
                        heirs.append(aprod[o].name)
                    elif o not in seen:
                        seen.add(o)
                        nxt.append(o)
        if heirs or not nxt:
            break
        frontier = nxt
    return heirs


def _union(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for g in groups:
        _extend(out, g)
    return tuple(out)


def _extend(into: list[str], more: Iterable[str]) -> None:
    for x in more:
        if x and x not in into:
            into.append(x)
