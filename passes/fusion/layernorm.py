"""Decomposed layer normalisation -> LayerNormalization (opset >= 17).

    μ = ReduceMean(x, axes);  d = x − μ;  v = ReduceMean(d², axes)
    y = d / √(v + ε)  [· γ]  [+ β]

Variants matched: d² as Pow(d, 2) or Mul(d, d); division as Div(d, s) or Mul(d, Reciprocal(s)).
The reduced axes must be the trailing ones (LayerNormalization's ``axis`` is the first of them)
and both ReduceMeans must reduce the same axes with keepdims=1. The affine part is absorbed by a
second rule: Mul(LayerNormalization(x, γ, β), g) -> LayerNormalization(x, γ·g, β·g) and
Add(LayerNormalization(x, γ, β), b) -> LayerNormalization(x, γ, β + b) when g, b have the
normalised shape (or broadcast to it along the normalised axes only).

Declines: non-trailing or mismatched axes, ε not a scalar constant, unknown ranks, an affine
constant that broadcasts over batch axes.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value
from onnxopt.passes.fusion._base import FusionPass, const, int_list, rank, static_shape, var
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)


def _core(square: Op) -> Op:
    return Op(
        "Sqrt",
        Op(
            "Add",
            Op("ReduceMean", square, name="rm2", exact_arity=False),
            Const("eps", lambda a: a.size == 1),
            name="add_eps",
        ),
        name="sqrt",
    )


def _sub() -> Op:
    return Op(
        "Sub", Var("x"), Op("ReduceMean", Var("x"), name="rm1", exact_arity=False), name="sub"
    )


_SUB_REF = Op("Sub", name="sub")  # second reference to the matched Sub
_SQUARES = (
    Op(
        "Pow",
        _SUB_REF,
        Const("two", lambda a: a.size == 1 and float(a.reshape(-1)[0]) == 2),
        name="sq",
    ),
    Op("Mul", _SUB_REF, _SUB_REF, name="sq"),
)


def _patterns() -> tuple[Op, ...]:
    out = []
    for sq in _SQUARES:
        out.append(Op("Div", _sub(), _core(sq), name="div"))
        out.append(Op("Mul", _sub(), Op("Reciprocal", _core(sq), name="recip"), name="div"))
    return tuple(out)


def _reduce_axes(node: gs.Node, r: int) -> list[int] | None:
    axes = int_list(node, "axes", 1)
    if not axes:
        return None
    if int(node.attrs.get("keepdims", 1)) != 1:
        return None
    return sorted(a % r for a in axes)


class DecomposedLayerNorm(Rule):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div -> LayerNormalization."""

    name: ClassVar[str] = "layernorm"
    patterns = _patterns()
    min_opset: ClassVar[int] = 17

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        x = m.tensors["x"]
        r = rank(x)
        if r is None:
            return MatchResult.fail(f"rank of '{x.name}' unknown")
        a1 = _reduce_axes(m.nodes["rm1"], r)
        a2 = _reduce_axes(m.nodes["rm2"], r)
        if a1 is None or a1 != a2:
            return MatchResult.fail("ReduceMean axes differ, are not constant, or keepdims=0")
        if a1 != list(range(r - len(a1), r)):
            return MatchResult.fail(f"reduced axes {a1} are not the trailing axes")
        if x.dtype is not None and np.dtype(x.dtype) not in (np.float32, np.float16, np.float64):
            return MatchResult.fail("not a float tensor")
        shape = static_shape(x)
        if shape is None or any(d <= 0 for d in shape[r - len(a1) :]):
            xs = getattr(x, "shape", None)
            tail = None if xs is None else xs[r - len(a1) :]
            if tail is None or not all(isinstance(d, (int, np.integer)) for d in tail):
                return MatchResult.fail("normalised dimensions are not static")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        x = m.tensors["x"]
        r = rank(x)
        axes = _reduce_axes(m.nodes["rm1"], r)
        norm_shape = [int(d) for d in x.shape[r - len(axes) :]]
        dt = np.dtype(x.dtype) if x.dtype is not None else np.dtype(np.float32)
        eps = float(np.asarray(m.values["eps"]).reshape(-1)[0])
        name = m.root.name
        new = gs.Node(
            "LayerNormalization",
            name,
            attrs={"axis": r - len(axes), "epsilon": eps},
            inputs=[
                x,
                const(graph, f"{name}_scale", np.ones(norm_shape, dt)),
                const(graph, f"{name}_bias", np.zeros(norm_shape, dt)),
            ],
            outputs=[var(graph, f"{name}_ln", dtype=dt)],
        )
        replace_root(graph, m, [new])


class LayerNormAffine(Rule):
    """Mul / Add by a constant of the normalised shape absorbed into LayerNormalization."""

    name: ClassVar[str] = "layernorm_affine"
    patterns = (
        Op(
            ("Mul", "Add"),
            Op("LayerNormalization", Var("x"), Const("g"), name="ln", exact_arity=False),
            Const("c"),
            name="op",
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        ln = m.nodes["ln"]
        if any(t.outputs for t in ln.outputs[1:]):
            return MatchResult.fail("LayerNormalization mean/inv-std outputs are used")
        if len(ln.inputs) > 2 and ln.inputs[2].name and const_value(ln.inputs[2]) is None:
            return MatchResult.fail("LayerNormalization bias is not constant")
        x = m.tensors["x"]
        r = rank(x)
        if r is None:
            return MatchResult.fail("rank unknown")
        axis = int(ln.attrs.get("axis", -1)) % r
        c = m.values["c"]
        if not np.issubdtype(c.dtype, np.floating):
            return MatchResult.fail("non-float constant")
        norm = list(m.values["g"].shape)
        if c.ndim > len(norm) and any(d != 1 for d in c.shape[: c.ndim - len(norm)]):
            return MatchResult.fail(f"constant of shape {list(c.shape)} broadcasts over batch axes")
        if c.ndim > r:
            return MatchResult.fail("constant rank exceeds the input's")
        try:
            np.broadcast_to(c.reshape(c.shape[max(0, c.ndim - len(norm)) :]), norm)
        except ValueError:
            return MatchResult.fail(
                f"constant of shape {list(c.shape)} does not fit normalised shape {norm}"
            )
        if len(norm) != r - axis:
            return MatchResult.fail("scale shape differs from the normalised shape")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        ln = m.nodes["ln"]
        g = m.values["g"]
        norm = list(g.shape)
        c = m.values["c"]
        c = np.broadcast_to(c.reshape(c.shape[max(0, c.ndim - len(norm)) :]), norm).astype(
            np.float64
        )
        b = np.zeros(norm)
        if len(ln.inputs) > 2 and ln.inputs[2].name:
            b = const_value(ln.inputs[2]).astype(np.float64)
        g2, b2 = g.astype(np.float64), b
        if m.nodes["op"].op == "Mul":
            g2, b2 = g2 * c, b * c
        else:
            b2 = b + c
        name = ln.name
        new = gs.Node(
            "LayerNormalization",
            name,
            attrs=dict(ln.attrs),
            inputs=[
                m.tensors["x"],
                const(graph, f"{name}_scale", g2.astype(g.dtype)),
                const(graph, f"{name}_bias", np.asarray(b2).astype(g.dtype)),
            ],
            outputs=[var(graph, f"{name}_affine", dtype=g.dtype)],
        )
        replace_root(graph, m, [new])


class FuseLayerNorm(FusionPass):
    """Decomposed LayerNorm (and its affine Mul/Add) -> LayerNormalization (opset >= 17)."""

    name: ClassVar[str] = "fuse-layernorm"
    summary: ClassVar[str] = "ReduceMean/Sub/Pow/.../Div[/Mul/Add] -> LayerNormalization"

    def rules(self) -> list[Rule]:
        return [DecomposedLayerNorm(), LayerNormAffine()]
