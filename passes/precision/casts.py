"""Casts that cancel or do nothing, removed after a precision change (exact rewrites).

- ``Cast(x, to=T)`` with ``x`` already of type ``T``: its readers read ``x``.
- ``Cast(Cast(x, to=A), to=B)`` with ``x`` of type ``B`` and ``A`` holding every value of ``B``
  (float16 → float32 → float16): the pair is the identity; its readers read ``x``.
- ``Cast(Cast(x, to=A), to=B)`` with ``x`` an integer or half type and ``A`` float32 (which
  holds ``x`` exactly below 2²⁴, beyond any half type's precision): the second Cast reads ``x``
  directly, so Casts never stand back to back.

A Cast whose output is a graph output is kept (the output keeps its name); Casts left without
readers are removed.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from .plan import INTEGER_TYPES
from .schema import graphs

#: A -> the types whose every value A holds exactly
HOLDS = {
    TensorProto.FLOAT: {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.FLOAT},
    TensorProto.DOUBLE: {
        TensorProto.FLOAT16,
        TensorProto.BFLOAT16,
        TensorProto.FLOAT,
        TensorProto.DOUBLE,
    },
}
HALVES = {TensorProto.FLOAT16, TensorProto.BFLOAT16}


def _to(n: onnx.NodeProto) -> int:
    return next((a.i for a in n.attribute if a.name == "to"), 0)


def simplify_casts(model: onnx.ModelProto, types: dict[str, int]) -> int:
    """Remove cancelling and no-op Casts in every graph of ``model`` (in place); ``types``:
    element types after the rewrite. Returns how many Casts went."""
    removed = 0
    for index in reversed(range(len(list(graphs(model.graph))))):
        # innermost first, each graph fetched afresh: rebuilding a node list copies its nodes
        g = list(graphs(model.graph))[index]
        producers = {o: n for n in g.node for o in n.output}
        outputs = {o.name for o in g.output}
        rename: dict[str, str] = {}
        for n in g.node:
            if n.op_type != "Cast" or n.domain not in ("", "ai.onnx") or not n.input:
                continue
            x, to = rename.get(n.input[0], n.input[0]), _to(n)
            n.input[0] = x
            src = producers.get(x)
            if types.get(x) == to and n.output[0] not in outputs:
                rename[n.output[0]] = x
                continue
            if src is None or src.op_type != "Cast" or src.domain not in ("", "ai.onnx"):
                continue
            inner, mid = src.input[0], _to(src)
            kind = types.get(inner)
            if kind == to and to in HOLDS.get(mid, ()) and n.output[0] not in outputs:
                rename[n.output[0]] = inner
            elif mid == TensorProto.FLOAT and (kind in INTEGER_TYPES or kind in HALVES):
                n.input[0] = inner
        if rename:
            _rename_uses(model.graph, rename)
        removed += _drop_unread_casts(model, g)
    return removed


def _rename_uses(root: onnx.GraphProto, rename: dict[str, str]) -> None:
    def final(x: str) -> str:
        while x in rename:
            x = rename[x]
        return x

    for g in graphs(root):
        for n in g.node:
            for i, x in enumerate(n.input):
                if x in rename:
                    n.input[i] = final(x)


def _drop_unread_casts(model: onnx.ModelProto, g: onnx.GraphProto) -> int:
    removed = 0
    while True:
        read = {o.name for o in g.output}
        for sub in graphs(model.graph):
            for n in sub.node:
                read.update(n.input)
            read.update(o.name for o in sub.output)
        dead = [
            n
            for n in g.node
            if n.op_type == "Cast" and n.domain in ("", "ai.onnx") and n.output[0] not in read
        ]
        if not dead:
            return removed
        gone = {n.name for n in dead}
        keep = [n for n in g.node if n.name not in gone]
        del g.node[:]
        g.node.extend(keep)
        removed += len(dead)
