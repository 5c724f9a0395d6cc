"""A constant-zero Pad folded into the pads of the following Conv or AveragePool.

Pad's pads are [x1_begin, x2_begin, ..., x1_end, x2_end, ...] over every axis; the batch and
channel axes must be unpadded. Conv pads are [h_begin, w_begin, ..., h_end, w_end, ...]:
conv.pads' = conv.pads + pad.pads[spatial].

Declines: non-constant mode or value, a non-zero pad value, negative pads, ``auto_pad`` set,
MaxPool (it pads with −∞, not 0), AveragePool without ``count_include_pad=1``.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value, is_empty_tensor
from onnxopt.passes.fusion._base import FusionPass, int_list, rank, var
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)


def _pad_spec(pad: gs.Node, r: int) -> tuple[list[int] | None, str]:
    mode = pad.attrs.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode != "constant":
        return None, f"Pad mode '{mode}'"
    pads = int_list(pad, "pads", 1)
    if pads is None:
        return None, "Pad pads are not constant"
    value = float(pad.attrs.get("value", 0.0))
    if len(pad.inputs) > 2 and not is_empty_tensor(pad.inputs[2]):
        v = const_value(pad.inputs[2])
        if v is None:
            return None, "Pad value is not constant"
        value = float(np.asarray(v).reshape(-1)[0]) if np.asarray(v).size else 0.0
    if value != 0.0:
        return None, f"Pad value {value} is not 0"
    if len(pad.inputs) > 3 and not is_empty_tensor(pad.inputs[3]):
        axes = const_value(pad.inputs[3])
        if axes is None:
            return None, "Pad axes are not constant"
        full = [0] * (2 * r)
        axes = [int(a) % r for a in np.asarray(axes).reshape(-1)]
        for i, a in enumerate(axes):
            full[a] = pads[i]
            full[a + r] = pads[i + len(axes)]
        pads = full
    if len(pads) != 2 * r:
        return None, "Pad rank differs from the consumer's"
    if any(p < 0 for p in pads):
        return None, "negative pads (cropping)"
    if pads[0] or pads[1] or pads[r] or pads[r + 1]:
        return None, "Pad pads the batch or channel axis"
    return pads, ""


def _merged(op: gs.Node, pads: list[int], r: int) -> list[int]:
    k = r - 2
    old = [int(p) for p in op.attrs.get("pads", [0] * (2 * k))]
    return [old[i] + pads[2 + i] for i in range(k)] + [
        old[k + i] + pads[r + 2 + i] for i in range(k)
    ]


class PadInto(Rule):
    """Pad (constant 0) -> Conv / AveragePool."""

    name: ClassVar[str] = "pad_conv"
    patterns = (
        Op(
            ("Conv", "AveragePool", "MaxPool"),
            Op("Pad", Var("x"), name="pad", exact_arity=False),
            name="op",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        op = m.nodes["op"]
        if op.op == "MaxPool":
            return MatchResult.fail("MaxPool pads with -inf, not 0")
        if op.op == "AveragePool" and not int(op.attrs.get("count_include_pad", 0)):
            return MatchResult.fail("AveragePool excludes padding from the average")
        auto_pad = op.attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", b"NOTSET"):
            return MatchResult.fail(f"{op.op} auto_pad={auto_pad!r}")
        r = rank(m.tensors["x"])
        if r is None and op.op == "Conv":
            w = const_value(op.inputs[1])
            r = w.ndim if w is not None else None
        if r is None:
            return MatchResult.fail("input rank unknown")
        pads, reason = _pad_spec(m.nodes["pad"], r)
        if pads is None:
            return MatchResult.fail(reason)
        if op.op != "Conv":
            kernel = [int(k) for k in op.attrs.get("kernel_shape", [])]
            if any(p >= kernel[i % len(kernel)] for i, p in enumerate(_merged(op, pads, r))):
                return MatchResult.fail("pool pads would reach the kernel size")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        op = m.nodes["op"]
        r = rank(m.tensors["x"])
        if r is None:
            r = const_value(op.inputs[1]).ndim
        pads, _ = _pad_spec(m.nodes["pad"], r)
        attrs = dict(op.attrs)
        attrs["pads"] = _merged(op, pads, r)
        attrs.pop("auto_pad", None)
        new = gs.Node(
            op.op,
            op.name,
            attrs=attrs,
            inputs=[m.tensors["x"], *op.inputs[1:]],
            outputs=[var(graph, f"{op.name}_padded", dtype=op.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


class FoldPad(FusionPass):
    """Fold constant-zero Pad into Conv / AveragePool pads."""

    name: ClassVar[str] = "fold-pad"
    summary: ClassVar[str] = "Pad (constant 0) folded into Conv/AveragePool pads"

    def rules(self) -> list[Rule]:
        return [PadInto()]
