"""cse: common-subexpression elimination.

Two nodes compute the same values when they have the same op, domain, inputs (the same tensor
objects, in order), attributes and number of outputs, and the op is deterministic. Nodes are
visited in topological order, so chains of duplicates collapse in one sweep: once ``b`` is merged
into ``a``, every consumer of ``b`` reads ``a`` and becomes a candidate itself. Graph outputs
keep their names (the surviving tensor takes the output's name, see
``onnxopt.graph.merge_tensors``). Nodes with subgraphs are not compared. Attribute values are
compared only between nodes that already share op, domain, inputs and attribute names.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Hashable
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.graph import has_subgraph, merge_tensors, node_names_unique
from onnxopt.passes.cleanup._util import NONDETERMINISTIC, detach

logger = logging.getLogger(__name__)


def _norm(value: Any) -> Hashable:
    """A hashable, exact key for an attribute value."""
    if isinstance(value, gs.Constant):
        return _norm(np.asarray(value.values))
    if isinstance(value, np.ndarray):
        data = value.tobytes() if value.dtype != object else repr(value.tolist()).encode()
        return ("array", str(value.dtype), value.shape, hashlib.sha1(data).hexdigest())
    if isinstance(value, (list, tuple)):
        return _norm_list(value)
    if isinstance(value, float):
        return ("float", value.hex()) if value == value else ("float", "nan")
    if isinstance(value, (int, str, bool, bytes)) or value is None:
        return (type(value).__name__, value)
    return ("repr", type(value).__name__, repr(value))


def _norm_list(value: list | tuple) -> Hashable:
    """A list attribute's key. ONNX list attributes hold one type (ints, floats, strings), so a
    list that numpy reads as a flat int, float or str array is keyed by that array's bytes:
    exact (float bits, so -0.0 and 0.0 differ) and fast on the 10^5-entry lists of tree
    ensembles. Anything else is keyed element by element."""
    if value and isinstance(value[0], (int, float, str)) and not isinstance(value[0], bool):
        arr = np.asarray(value)
        if arr.ndim == 1 and arr.dtype.kind in "iufU":
            return ("list", arr.dtype.str, len(arr), arr.tobytes())
    return ("list", tuple(_norm(v) for v in value))


def _shallow_key(node: gs.Node) -> Hashable:
    """What two duplicates must share before their attribute values are compared."""
    return (
        node.op,
        node.domain or "",
        tuple(id(t) for t in node.inputs),
        tuple(bool(t.name) for t in node.outputs),
        tuple(sorted(node.attrs)),
    )


def node_key(node: gs.Node) -> Hashable:
    attrs = tuple(sorted((k, _norm(v)) for k, v in node.attrs.items()))
    return (*_shallow_key(node)[:4], attrs)


class _Seen:
    """The nodes met so far, bucketed by :func:`_shallow_key`; a node's exact key (attribute
    values included) is computed only when another node shares its bucket, so a large lone
    node (a tree ensemble with 10^5-entry attribute lists) costs nothing."""

    def __init__(self) -> None:
        self.buckets: dict[Hashable, list[gs.Node]] = {}
        self.keys: dict[int, Hashable] = {}

    def key(self, node: gs.Node) -> Hashable:
        if id(node) not in self.keys:
            self.keys[id(node)] = node_key(node)
        return self.keys[id(node)]

    def first(self, node: gs.Node) -> gs.Node | None:
        """The earlier node that computes what ``node`` computes, or None (``node`` is kept)."""
        bucket = self.buckets.setdefault(_shallow_key(node), [])
        if bucket:
            key = self.key(node)
            for other in bucket:
                try:
                    same = self.key(other) == key
                except Exception:  # ``other`` cannot be keyed: it matches nothing
                    continue
                if same:
                    return other
        bucket.append(node)
        return None


class CommonSubexpressions(Pass):
    """Merge nodes that compute the same values from the same inputs."""

    name = "cse"
    exact = True
    summary = "merge duplicate nodes (same op, inputs and attributes)"
    tags = ("cleanup",)
    subgraphs = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        node_names_unique(graph)
        graph.toposort()
        seen = _Seen()
        notes: list[str] = []
        sites: list[str] = []
        for node in list(graph.nodes):
            if (
                node.op in NONDETERMINISTIC
                or has_subgraph(node)
                or not node.outputs
                or node.op.startswith("Random")
            ):
                continue
            try:
                first = seen.first(node)
            except Exception as e:
                notes.append(f"{node.name}: not compared ({type(e).__name__})")
                continue
            if first is None:
                continue
            if not ctx.allow(node.name):
                continue
            pairs = [(d, k) for d, k in zip(node.outputs, first.outputs, strict=True) if d.name]
            refused = None
            for d, k in pairs:
                if d.dtype is not None and k.dtype is not None and d.dtype != k.dtype:
                    refused = f"output types differ ({d.dtype} vs {k.dtype})"
                    break
            merged = 0
            if refused is None:
                for d, k in pairs:
                    refused = merge_tensors(graph, d, k)
                    if refused:
                        break
                    merged += 1
            if refused:
                if merged:  # partially merged: keep the node computing the remaining outputs
                    sites.append(node.name)
                notes.append(f"{node.name}: duplicate of {first.name} kept, {refused}")
                continue
            detach(node)
            sites.append(node.name)
        return PassResult(changed=bool(sites), rewrites=len(sites), notes=notes, sites=sites)
