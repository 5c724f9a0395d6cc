"""Per-channel constants after a Conv (or Gemm) folded into its weights and bias.

For Conv y = W∗x + b with a constant c that broadcasts per output channel (shape [C,1,..],
[1,C,1,..] or a scalar):

- y + c -> W∗x + (b + c);   y − c -> W∗x + (b − c)
- y · c -> (W·c[o])∗x + b·c;   y / c -> (W/c[o])∗x + b/c

For Gemm y = α·A·B + β·C followed by + c with c of shape [N] or [1, N]: C' = β·C + c, β' = 1.

Declines: constants that broadcast over the batch or spatial axes (they are not per-channel),
weights or biases shared with another node, non-float constants, division by zero.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_empty_tensor
from onnxopt.passes.fusion._base import FusionPass, const, rank, shared_const_reason, var
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)


def per_channel(c: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """``c`` as a [channels] vector when it broadcasts per channel (axis 1) of a rank-r output."""
    if c.ndim > out_rank or not np.issubdtype(c.dtype, np.floating):
        return None
    shape = [1] * (out_rank - c.ndim) + list(c.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(c.reshape(-1).astype(np.float64), (channels,))


class ConvArith(Rule):
    """Conv followed by Add / Sub / Mul / Div with a per-channel constant."""

    name: ClassVar[str] = "conv_bias"
    patterns = (
        Op(
            ("Add", "Mul"),
            Op("Conv", Var("x"), Const("w"), name="conv", exact_arity=False),
            Const("c"),
            name="op",
        ),
        Op(
            ("Sub", "Div"),
            Op("Conv", Var("x"), Const("w"), name="conv", exact_arity=False),
            Const("c"),
            name="op",
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        conv, w = m.nodes["conv"], m.values["w"]
        if not np.issubdtype(w.dtype, np.floating):
            return MatchResult.fail("non-float conv weight")
        c = per_channel(m.values["c"], w.ndim, w.shape[0])
        if c is None:
            return MatchResult.fail(
                f"constant of shape {list(m.values['c'].shape)} is not per output channel"
            )
        op = m.nodes["op"].op
        if op == "Div" and np.any(c == 0):
            return MatchResult.fail("division by zero")
        if op in ("Mul", "Div"):
            reason = shared_const_reason(m.tensors["w"], conv)
            if reason:
                return MatchResult.fail(reason)
        if len(conv.inputs) > 2 and not is_empty_tensor(conv.inputs[2]):
            if const_value(conv.inputs[2]) is None:
                return MatchResult.fail("conv bias is not a constant")
            reason = shared_const_reason(conv.inputs[2], conv)
            if reason:
                return MatchResult.fail(reason)
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        conv, w = m.nodes["conv"], m.values["w"]
        op = m.nodes["op"].op
        c = per_channel(m.values["c"], w.ndim, w.shape[0])
        b = np.zeros(w.shape[0])
        if len(conv.inputs) > 2 and not is_empty_tensor(conv.inputs[2]):
            b = const_value(conv.inputs[2]).astype(np.float64)
        w_t = m.tensors["w"]
        shape = (-1, *([1] * (w.ndim - 1)))
        if op == "Add":
            b = b + c
        elif op == "Sub":
            b = b - c
        elif op == "Mul":
            w_t = const(graph, f"{conv.name}_w_scaled", (w * c.reshape(shape)).astype(w.dtype))
            b = b * c
        else:
            w_t = const(graph, f"{conv.name}_w_scaled", (w / c.reshape(shape)).astype(w.dtype))
            b = b / c
        new = gs.Node(
            "Conv",
            conv.name,
            attrs=dict(conv.attrs),
            inputs=[m.tensors["x"], w_t, const(graph, f"{conv.name}_b", b.astype(w.dtype))],
            outputs=[var(graph, f"{conv.name}_out", dtype=w.dtype)],
        )
        replace_root(graph, m, [new])


class GemmAdd(Rule):
    """Gemm followed by Add of a per-column constant: folded into C."""

    name: ClassVar[str] = "gemm_bias"
    patterns = (
        Op(
            "Add",
            Op("Gemm", Var("a"), Var("b"), name="gemm", exact_arity=False),
            Const("c"),
            name="add",
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        gemm = m.nodes["gemm"]
        c = m.values["c"]
        if not np.issubdtype(c.dtype, np.floating):
            return MatchResult.fail("non-float constant")
        if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
            return MatchResult.fail(f"constant of shape {list(c.shape)} is not per column")
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            old = const_value(gemm.inputs[2])
            if old is None:
                return MatchResult.fail("Gemm bias is not a constant")
            try:
                np.broadcast_shapes(old.shape, c.shape)
            except ValueError:
                return MatchResult.fail("bias shapes do not broadcast")
        out_shape = getattr(m.nodes["add"].outputs[0], "shape", None)
        gshape = getattr(gemm.outputs[0], "shape", None)
        if out_shape is None or gshape is None or list(out_shape) != list(gshape):
            if c.size != 1 and (gshape is None or len(gshape) != 2 or gshape[1] != c.shape[-1]):
                return MatchResult.fail("cannot prove the Add keeps the Gemm's shape")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        gemm = m.nodes["gemm"]
        c = m.values["c"].astype(np.float64)
        beta = float(gemm.attrs.get("beta", 1.0))
        if len(gemm.inputs) > 2 and not is_empty_tensor(gemm.inputs[2]):
            c = beta * const_value(gemm.inputs[2]).astype(np.float64) + c
        attrs = dict(gemm.attrs)
        attrs["beta"] = 1.0
        dt = m.values["c"].dtype
        new = gs.Node(
            "Gemm",
            gemm.name,
            attrs=attrs,
            inputs=[m.tensors["a"], m.tensors["b"], const(graph, f"{gemm.name}_c", c.astype(dt))],
            outputs=[var(graph, f"{gemm.name}_out", dtype=dt)],
        )
        replace_root(graph, m, [new])


class FoldBias(FusionPass):
    """Fold per-channel Add/Sub/Mul/Div constants into the preceding Conv or Gemm."""

    name: ClassVar[str] = "fold-bias"
    summary: ClassVar[str] = "per-channel constant arithmetic folded into Conv/Gemm"

    def rules(self) -> list[Rule]:
        return [ConvArith(), GemmAdd()]


__all__ = ["FoldBias", "ConvArith", "GemmAdd", "per_channel", "rank"]
