"""The regions a pipeline changed: small before/after subgraphs to draw, not the whole graph.

A node of the original is *changed* when the optimized model has no node of its name with the
same op type, inputs and outputs; a node of the optimized model is *changed* when the original
has no such node. Changed nodes are grouped into regions: two changed nodes of the same model
are in one region when a tensor links them, and a changed optimized node joins the region of
the original nodes it came from (:mod:`onnxopt.provenance`). Each region is drawn with its
unchanged neighbours (the producers of its inputs and the consumers of its outputs) for
context; at most ``max_nodes`` changed nodes per side are kept, a connected piece of a larger
region (the optimized side's piece starts from the nodes that came from the original's).
"""

from __future__ import annotations

from typing import Any

import onnx

from onnxopt import provenance


def _key(n: onnx.NodeProto) -> tuple:
    return (n.op_type, tuple(n.input), tuple(n.output))


def changed_regions(
    a: onnx.ModelProto, b: onnx.ModelProto, *, max_regions: int = 4, max_nodes: int = 16
) -> dict[str, Any]:
    """``{"regions": [{"before": side, "after": side, "changed": (n_before, n_after)}],
    "total": regions in all, "changed_before", "changed_after"}``; a side is
    ``{"nodes": [{"name", "op", "inputs", "outputs", "changed"}], "truncated": int}``."""
    an, bn = list(a.graph.node), list(b.graph.node)
    a_keys = {(n.name, _key(n)) for n in an}
    b_keys = {(n.name, _key(n)) for n in bn}
    ca = [i for i, n in enumerate(an) if (n.name, _key(n)) not in b_keys]
    cb = [i for i, n in enumerate(bn) if (n.name, _key(n)) not in a_keys]
    consts = {t.name for m in (a, b) for t in m.graph.initializer}  # weights link nothing
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(x: tuple[str, int], y: tuple[str, int]) -> None:
        parent[find(x)] = find(y)

    for side, nodes, changed in (("a", an, ca), ("b", bn, cb)):
        by_tensor: dict[str, tuple[str, int]] = {}
        for i in changed:
            find((side, i))
            for t in (*nodes[i].input, *nodes[i].output):
                if t in consts or not t:
                    continue
                if t in by_tensor:
                    union((side, i), by_tensor[t])
                else:
                    by_tensor[t] = (side, i)
    a_index = {n.name: i for i, n in enumerate(an) if n.name}
    ca_set = set(ca)
    for i in cb:
        for o in provenance.origins(bn[i]):
            j = a_index.get(o)
            if j is not None and j in ca_set:
                union(("b", i), ("a", j))
    groups: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for x in [("a", i) for i in ca] + [("b", i) for i in cb]:
        groups.setdefault(find(x), []).append(x)
    ordered = sorted(groups.values(), key=lambda g: min(_pos(x, an, bn) for x in g))
    regions = [_region(g, an, bn, max_nodes, consts) for g in ordered[:max_regions]]
    return {
        "regions": regions,
        "total": len(ordered),
        "changed_before": len(ca),
        "changed_after": len(cb),
    }


def _pos(x: tuple[str, int], an: list, bn: list) -> float:
    """Where a changed node sits, as a fraction of its graph (to order the regions)."""
    side, i = x
    return i / max(len(an if side == "a" else bn), 1)


def _region(
    group: list[tuple[str, int]], an: list, bn: list, max_nodes: int, consts: set[str]
) -> dict[str, Any]:
    before = sorted(i for s, i in group if s == "a")
    after = sorted(i for s, i in group if s == "b")
    shown_before = _connected(an, before, max_nodes, [], consts)
    names = {an[i].name for i in shown_before}
    seeds = [i for i in after if names & set(provenance.origins(bn[i]))]
    return {
        "before": _side(an, before, shown_before),
        "after": _side(bn, after, _connected(bn, after, max_nodes, seeds, consts)),
        "changed": [len(before), len(after)],
    }


def _connected(
    nodes: list, picked: list[int], limit: int, seeds: list[int], consts: set[str]
) -> list[int]:
    """At most ``limit`` of ``picked``, linked by tensors (not weights): a breadth-first walk
    from ``seeds`` (or the first picked node), so a large region is shown as one piece."""
    if len(picked) <= limit:
        return picked
    by_tensor: dict[str, list[int]] = {}
    for i in picked:
        for t in (*nodes[i].input, *nodes[i].output):
            if t not in consts:
                by_tensor.setdefault(t, []).append(i)
    queue = list(seeds[:limit]) or picked[:1]
    chosen: list[int] = []
    while queue and len(chosen) < limit:
        i = queue.pop(0)
        if i in chosen:
            continue
        chosen.append(i)
        for t in (*nodes[i].input, *nodes[i].output):
            queue.extend(j for j in by_tensor.get(t, []) if j not in chosen)
    return sorted(chosen)


def _side(nodes: list[onnx.NodeProto], picked: list[int], shown: list[int]) -> dict[str, Any]:
    inside = set(shown)
    reads = {t for i in shown for t in nodes[i].input if t}
    makes = {t for i in shown for t in nodes[i].output if t}
    context = [
        j
        for j, n in enumerate(nodes)
        if j not in inside
        and n.op_type != "Constant"
        and (any(t in reads for t in n.output) or any(t in makes for t in n.input))
    ][: len(shown) // 2 + 2]
    keep = sorted(inside | set(context))
    return {
        "nodes": [
            {
                "name": nodes[j].name,
                "op": nodes[j].op_type,
                "inputs": [t for t in nodes[j].input if t],
                "outputs": [t for t in nodes[j].output if t],
                "changed": j in inside,
            }
            for j in keep
        ],
        "truncated": len(picked) - len(shown),
    }
