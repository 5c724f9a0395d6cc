"""Self-attention subgraph -> com.microsoft Attention (``--target onnxruntime``).

The BERT-style block both torch exporters write::

    q = Transpose(Reshape(x·Wq [+ bq], [B, S, H, d]), [0, 2, 1, 3])        (k, v alike)
    kᵀ = Transpose(Reshape(x·Wk [+ bk]), [0, 2, 3, 1])   (or two Transposes)
    p = Softmax(scale · q·kᵀ [+ mask_bias])
    y = Reshape(Transpose(p·v, [0, 2, 1, 3]), [B, S, H·d])

becomes ``Attention(x, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=mask_bias', num_heads=H,
scale=scale)``, where ``scale`` comes from ``/c``, ``·c`` on the scores or ``·s`` on both q and
k, and ``mask_bias'`` is the additive mask expanded once to [B, 1, S, T] (onnxruntime needs the
query axis spelled out); missing biases are zeros.

Declines: cross-attention (q, k, v from different tensors), non-constant weights, head counts
or sizes that disagree, perms other than the above, a mask of unknown shape.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, producer
from onnxopt.passes.fusion._base import FusionPass, const, static_shape, var
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, Var, exclusive, replace_root

logger = logging.getLogger(__name__)

MS = "com.microsoft"


class _Fail(Exception):
    pass


def _prod(t: gs.Tensor, *ops: str) -> gs.Node:
    node = producer(t)
    if node is None or node.op not in ops or node.outputs[0] is not t:
        raise _Fail(f"'{t.name}' is not produced by {'/'.join(ops)}")
    return node


def _scalar(t: gs.Tensor) -> float:
    v = const_value(t)
    if v is None or v.size != 1:
        raise _Fail(f"'{t.name}' is not a scalar constant")
    return float(v.reshape(-1)[0])


def _perm(node: gs.Node) -> list[int]:
    return [int(p) for p in node.attrs.get("perm", [])]


def _projection(t: gs.Tensor, perm: list[int], nodes: list[gs.Node]) -> dict:
    """Parse Transpose(Reshape(x·W [+ b], [B, S, H, d]), perm)."""
    tr = _prod(t, "Transpose")
    nodes.append(tr)
    if _perm(tr) == perm:
        src = tr.inputs[0]
    elif perm == [0, 2, 3, 1] and _perm(tr) == [0, 1, 3, 2]:
        tr2 = _prod(tr.inputs[0], "Transpose")
        if _perm(tr2) != [0, 2, 1, 3]:
            raise _Fail("key transposes do not form [0, 2, 3, 1]")
        nodes.append(tr2)
        src = tr2.inputs[0]
    else:
        raise _Fail(f"perm {_perm(tr)} is not {perm}")
    rs = _prod(src, "Reshape")
    nodes.append(rs)
    shape = const_value(rs.inputs[1])
    if shape is None or shape.size != 4 or shape[2] <= 0 or shape[3] <= 0:
        raise _Fail("head split shape is not a constant [B, S, H, d]")
    lin = _prod(rs.inputs[0], "Add", "MatMul")
    bias = None
    if lin.op == "Add":
        nodes.append(lin)
        mm = None
        for a, b in ((0, 1), (1, 0)):
            n = producer(lin.inputs[a])
            if n is not None and n.op == "MatMul" and const_value(lin.inputs[b]) is not None:
                mm, bias = n, const_value(lin.inputs[b])
                break
        if mm is None:
            raise _Fail("projection Add is not MatMul + constant")
        lin = mm
    nodes.append(lin)
    w = const_value(lin.inputs[1])
    if w is None or w.ndim != 2:
        raise _Fail("projection weight is not a constant 2-D matrix")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != w.shape[1]):
        raise _Fail("projection bias is not 1-D of the output size")
    return {"x": lin.inputs[0], "w": w, "b": bias, "heads": int(shape[2]), "head": int(shape[3])}


def _scores(t: gs.Tensor, nodes: list[gs.Node]) -> tuple[gs.Tensor, gs.Tensor, float]:
    """Parse scale · (q·kᵀ): Div/Mul by a scalar on the product or Mul on q and k."""
    node = producer(t)
    scale = 1.0
    if node is not None and node.op in ("Div", "Mul") and node.outputs[0] is t:
        s = _scalar(node.inputs[1])
        if node.op == "Div":
            if s == 0:
                raise _Fail("division by zero")
            s = 1.0 / s
        scale *= s
        nodes.append(node)
        t = node.inputs[0]
    mm = _prod(t, "MatMul")
    nodes.append(mm)
    q, k = mm.inputs[0], mm.inputs[1]
    out = []
    for side in (q, k):
        n = producer(side)
        if (
            n is not None
            and n.op == "Mul"
            and n.outputs[0] is side
            and const_value(n.inputs[1]) is not None
            and const_value(n.inputs[1]).size == 1
        ):
            scale *= _scalar(n.inputs[1])
            nodes.append(n)
            side = n.inputs[0]
        out.append(side)
    return out[0], out[1], scale


class SelfAttention(Rule):
    """BERT-style multi-head self-attention -> com.microsoft Attention."""

    name: ClassVar[str] = "ort_attention"
    contrib: ClassVar[bool] = True
    patterns = (
        Op(
            "Reshape",
            Op(
                "Transpose",
                Op("MatMul", Op("Softmax", Var("scores"), name="sm"), Var("v4"), name="pv"),
                name="tr_out",
                attrs={"perm": [0, 2, 1, 3]},
            ),
            Var("oshape"),
            name="root",
        ),
    )

    def __init__(self) -> None:
        self._expanded: dict[int, gs.Tensor] = {}

    def _parse(self, m: Match) -> dict:
        sm = m.nodes["sm"]
        if int(sm.attrs.get("axis", -1)) not in (-1, 3):
            raise _Fail("Softmax is not over the last axis")
        nodes: list[gs.Node] = []
        scores, mask = m.tensors["scores"], None
        add = producer(scores)
        if add is not None and add.op == "Add":
            for a, b in ((0, 1), (1, 0)):
                try:
                    sub: list[gs.Node] = []
                    q4, k4, scale = _scores(add.inputs[a], sub)
                    nodes += [add, *sub]
                    mask = add.inputs[b]
                    break
                except _Fail:
                    continue
            else:
                raise _Fail("scores are not scale·q·kᵀ + mask")
        else:
            q4, k4, scale = _scores(scores, nodes)
        q = _projection(q4, [0, 2, 1, 3], nodes)
        k = _projection(k4, [0, 2, 3, 1], nodes)
        v = _projection(m.tensors["v4"], [0, 2, 1, 3], nodes)
        if not (q["x"] is k["x"] is v["x"]):
            raise _Fail("q, k and v come from different inputs (cross-attention)")
        heads, head = q["heads"], q["head"]
        d = q["w"].shape[0]
        for p in (q, k, v):
            if p["heads"] != heads or p["head"] != head or p["w"].shape != (d, heads * head):
                raise _Fail("head counts or projection sizes differ")
        xs = static_shape(q["x"])
        if xs is None or len(xs) != 3:
            raise _Fail("attention input is not a static 3-D tensor")
        mask_shape = None
        if mask is not None:
            mask_shape = static_shape(mask)
            if (
                mask_shape is None
                or len(mask_shape) != 4
                or mask_shape[3] != xs[1]
                or (mask_shape[1] not in (1, heads))
                or mask_shape[2] not in (1, xs[1])
                or (mask_shape[0] not in (1, xs[0]))
            ):
                raise _Fail("attention mask shape is unknown or not [B, 1|H, 1|S, T]")
            mdt = mask.dtype
            if mdt is not None and np.dtype(mdt) != np.float32:
                raise _Fail("attention mask is not float32")
        return {
            "q": q,
            "k": k,
            "v": v,
            "scale": scale,
            "mask": mask,
            "mask_shape": mask_shape,
            "nodes": nodes,
            "x": q["x"],
            "xs": xs,
            "heads": heads,
        }

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        try:
            info = self._parse(m)
        except _Fail as e:
            return MatchResult.fail(str(e))
        if m.output.dtype is not None and np.dtype(m.output.dtype) != np.float32:
            return MatchResult.fail("not float32")
        m.matched.extend(n for n in info["nodes"] if all(n is not o for o in m.matched))
        return exclusive(graph, m)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        info = self._parse(m)
        q, k, v = info["q"], info["k"], info["v"]
        dt = q["w"].dtype
        w = np.concatenate([q["w"], k["w"], v["w"]], axis=1).astype(dt)
        zeros = np.zeros(q["w"].shape[1], dt)
        b = np.concatenate([p["b"] if p["b"] is not None else zeros for p in (q, k, v)]).astype(dt)
        name = m.root.name
        inputs = [info["x"], const(graph, f"{name}_qkv_w", w), const(graph, f"{name}_qkv_b", b)]
        new_nodes = []
        if info["mask"] is not None:
            ms = info["mask_shape"]
            mask = info["mask"]
            if ms[2] != info["xs"][1]:
                key = id(mask)
                if key not in self._expanded:
                    target = np.array([ms[0], ms[1], info["xs"][1], ms[3]], np.int64)
                    out = var(
                        graph,
                        f"{mask.name}_expanded",
                        dtype=np.float32,
                        shape=[int(d) for d in target],
                    )
                    new_nodes.append(
                        gs.Node(
                            "Expand",
                            f"{mask.name}_expand",
                            inputs=[mask, const(graph, f"{mask.name}_shape", target)],
                            outputs=[out],
                        )
                    )
                    self._expanded[key] = out
                mask = self._expanded[key]
            empty = gs.Variable.empty()
            inputs += [empty, empty, mask]
        # the matched Reshape/MatMul/... are detached by replace_root
        new_nodes.append(
            gs.Node(
                "Attention",
                name,
                attrs={"num_heads": info["heads"], "scale": float(info["scale"])},
                inputs=inputs,
                outputs=[var(graph, f"{name}_att", dtype=dt)],
                domain=MS,
            )
        )
        m.matched.extend(n for n in info["nodes"] if all(n is not o for o in m.matched))
        replace_root(graph, m, new_nodes, new_output=new_nodes[-1].outputs[0])


class OrtFuseAttention(FusionPass):
    """BERT-style self-attention -> com.microsoft Attention (packed QKV, one kernel)."""

    name: ClassVar[str] = "ort-fuse-attention"
    summary: ClassVar[str] = "multi-head self-attention -> com.microsoft Attention"
    contrib_only: ClassVar[bool] = True

    def rules(self) -> list[Rule]:
        return [SelfAttention()]
