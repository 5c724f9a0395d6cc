"""Per-channel constants after a Conv, ConvTranspose (or Gemm) folded into its weights and
bias.

For Conv y = W∗x + b with a constant c that broadcasts per output channel (shape [C,1,..],
[1,C,1,..] or a scalar; a ConvTranspose alike, its output channels on axis 1 of W within each
group, and PaddlePaddle exports write every ConvTranspose bias as such an Add):

- y + c -> W∗x + (b + c);   y − c -> W∗x + (b − c)
- y · c -> (W·c[o])∗x + b·c;   y / c -> (W/c[o])∗x + b/c

For Gemm y = α·A·B + β·C followed by + c with c of shape [N] or [1, N]:
C' = β·C + c, β' = 1.

Constants before a Conv, per input channel (or scalar), fold into it the other way:

- W∗(x · c) -> (W·c[i])∗x, any padding (a zero pad scaled stays zero); x / c likewise;
- W∗(x + t) -> W∗x + Σ W·t[i], only without padding (a padded border would read 0, not t).

PP-OCRv5's PaddlePaddle exports put such a scalar affine (a "learnable affine block") after
every HardSwish; onnxruntime runs each in plain NCHW between two layout reorders. Folded into
the next 1x1 Conv, the recognizer runs 11 % faster and the detector 5 %.

Declines: constants that broadcast over the batch or spatial axes (they are not per-channel),
weights or biases shared with another node, non-float constants, division by zero.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt import provenance
from onnxopt.graph import const_value, is_empty_tensor, is_graph_output
from onnxopt.passes.fusion._base import (
    CONV_OR_TRANSPOSE,
    FusionPass,
    const,
    conv_bias,
    conv_bias_reason,
    out_channels,
    rank,
    scale_out_channels,
    shared_const_reason,
    var,
)
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
    """Conv or ConvTranspose followed by Add / Sub / Mul / Div with a per-channel constant."""

    name: ClassVar[str] = "conv_bias"
    patterns = (
        Op(("Add", "Mul"), CONV_OR_TRANSPOSE, Const("c"), name="op"),
        Op(("Sub", "Div"), CONV_OR_TRANSPOSE, Const("c"), name="op"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        conv, w = m.nodes["conv"], m.values["w"]
        if not np.issubdtype(w.dtype, np.floating):
            return MatchResult.fail("non-float conv weight")
        c = per_channel(m.values["c"], w.ndim, out_channels(conv, w))
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
        reason = conv_bias_reason(conv)
        return MatchResult.fail(reason) if reason else MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        conv, w = m.nodes["conv"], m.values["w"]
        op = m.nodes["op"].op
        channels = out_channels(conv, w)
        c = per_channel(m.values["c"], w.ndim, channels)
        b = conv_bias(conv, channels)
        w_t = m.tensors["w"]
        if op == "Add":
            b = b + c
        elif op == "Sub":
            b = b - c
        else:
            k = c if op == "Mul" else 1.0 / c
            w_t = const(
                graph, f"{conv.name}_w_scaled", scale_out_channels(conv, w, k).astype(w.dtype)
            )
            b = b * k
        new = gs.Node(
            conv.op,
            conv.name,
            attrs=dict(conv.attrs),
            inputs=[m.tensors["x"], w_t, const(graph, f"{conv.name}_b", b.astype(w.dtype))],
            outputs=[var(graph, f"{conv.name}_out", dtype=w.dtype)],
        )
        replace_root(graph, m, [new])


def per_input_channel(c: np.ndarray, conv: gs.Node, w: np.ndarray) -> np.ndarray | None:
    """``c`` (broadcasting over a Conv's input, per channel or scalar) as a [O, C/g] matrix: the
    constant each weight ``w[o, i]`` multiplies (group-aware); None when it is not such."""
    groups = int(conv.attrs.get("group", 1))
    channels = w.shape[1] * groups
    v = per_channel(c, w.ndim, channels)
    if v is None or w.shape[0] % groups:
        return None
    per_group = v.reshape(groups, w.shape[1])
    return per_group[np.arange(w.shape[0]) // (w.shape[0] // groups)]


class ConvInputArith(Rule):
    """Mul / Div / Add / Sub of a per-input-channel constant whose every consumer is a Conv
    reading it as its input: folded into each Conv's weights (scale) or bias (shift, when the
    Conv pads nothing). The site is the arithmetic node."""

    name: ClassVar[str] = "conv_input_affine"
    patterns = (
        Op(("Mul", "Add"), Var("x"), Const("c"), name="op"),
        Op(("Div", "Sub"), Var("x"), Const("c"), name="op"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        op = m.nodes["op"]
        out = op.outputs[0]
        convs = list(out.outputs)
        if not convs or any(n.op != "Conv" or n.inputs[0] is not out for n in convs):
            return MatchResult.not_applicable("not read by Convs only")
        if is_graph_output(graph, out):
            return MatchResult.fail(f"'{out.name}' is a graph output")
        x_rank = rank(m.tensors["x"])
        for conv in convs:
            why = self._conv_reason(conv, op.op, m.values["c"], x_rank, out)
            if why:
                return MatchResult.fail(f"{why} ('{conv.name}')")
        return MatchResult.success()

    @staticmethod
    def _conv_reason(
        conv: gs.Node, op: str, c: np.ndarray, x_rank: int | None, out: gs.Tensor
    ) -> str:
        w = const_value(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or not np.issubdtype(w.dtype, np.floating):
            return "the Conv's weight is not a float constant"
        if any(t is out for t in conv.inputs[1:]):
            return "the Conv reads it as a weight"
        k = per_input_channel(c, conv, w)
        if k is None:
            return f"constant of shape {list(c.shape)} is not per input channel"
        if x_rank is not None and x_rank != w.ndim:
            return "the constant broadcasts the Conv's input to another rank"
        if op == "Div" and np.any(k == 0):
            return "division by zero"
        if op in ("Add", "Sub") and (
            any(int(p) for p in conv.attrs.get("pads", []))
            or conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
        ):
            return "the Conv pads its input: a shift would change the border"
        return shared_const_reason(conv.inputs[1], conv) or conv_bias_reason(conv)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        op = m.nodes["op"]
        for conv in list(op.outputs[0].outputs):
            w = const_value(conv.inputs[1])
            k = per_input_channel(m.values["c"], conv, w)
            b = conv_bias(conv, w.shape[0])
            w64 = w.astype(np.float64)
            shape = (*k.shape, *([1] * (w.ndim - 2)))
            w_t = conv.inputs[1]
            if op.op in ("Mul", "Div"):
                scale = (k if op.op == "Mul" else 1.0 / k).reshape(shape)
                w_t = const(graph, f"{conv.name}_w_scaled", (w64 * scale).astype(w.dtype))
            else:
                shift = (k if op.op == "Add" else -k).reshape(shape)
                b = b + (w64 * shift).reshape(w.shape[0], -1).sum(axis=1)
            new = gs.Node(
                "Conv",
                conv.name,
                attrs=dict(conv.attrs),
                inputs=[m.tensors["x"], w_t, const(graph, f"{conv.name}_b", b.astype(w.dtype))],
                outputs=list(conv.outputs),
            )
            provenance.inherit([new], [conv, op])
            conv.outputs.clear()
            conv.inputs.clear()
            graph.nodes.append(new)
        op.outputs.clear()
        op.inputs.clear()


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
    """Fold per-channel Add/Sub/Mul/Div constants into the preceding Conv, ConvTranspose or
    Gemm, or into the next Conv."""

    name: ClassVar[str] = "fold-bias"
    summary: ClassVar[str] = (
        "per-channel constants folded into the Conv/ConvTranspose/Gemm before them or the Conv after"
    )

    def rules(self) -> list[Rule]:
        return [ConvArith(), ConvInputArith(), GemmAdd()]


__all__ = ["FoldBias", "ConvArith", "ConvInputArith", "GemmAdd", "per_channel", "rank"]
