"""affine-to-conv: a per-channel affine after a Conv's activation -> a 1x1 depthwise Conv.

For a float32 tensor x of C channels (NCHW) that an activation after a Conv makes, a
per-channel or scalar affine

    y = x·a + b   (also x/a, x − b, x + b, x·a − b)   ->   y = Conv(x, W, B, group=C)

with W[c, 0, 0, 0] = a[c] and B[c] = b[c], a 1x1 depthwise Conv that computes the same
products and sums.

Why: onnxruntime's CPU provider runs Convs in its blocked NCHWc layout, and its elementwise
Mul/Add with a constant only in plain NCHW. Every such affine between two Convs costs a
ReorderOutput, the Mul, the Add and a ReorderInput: four passes over the tensor. As a
depthwise Conv it stays in NCHWc and costs one, and NCHWc readers (Convs, pooling) read it
without a reorder (a plain reader still gets one, as before). PP-OCRv5's PaddlePaddle exports
put a scalar affine (a "learnable affine block") after every HardSwish; ``fold-bias`` folds
those a 1x1 Conv reads, and the others stay: a padded depthwise Conv reads them (a shift
before a zero-padded Conv changes its border) or a pooling does. Rewritten, the recognizer
drops from 20 reorders to 6.

Applies where onnxruntime 1.32 keeps the Conv in NCHWc (``nchwc_transformer.cc``): C is a
multiple of 16 (its NCHWc block is 8 or 16 channels; a depthwise Conv needs whole blocks) and
x is the output of an activation it fuses into the Conv before it. An affine right after a
Conv is left to fold-bias and to onnxruntime's own Conv+Mul/Add fusions, which cost nothing.
NCHWc is x86-64 only (MLAS's blocked kernels): on other machines the pass declines, since a
depthwise Conv in plain NCHW is no cheaper than the Mul and Add.

Exactness: each output is ``x·a + b`` in float32 either way (the Conv kernel may fuse the
multiply-add: at most one rounding apart).
"""

from __future__ import annotations

import logging
import platform
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import PassContext, PassResult
from onnxopt.graph import producer
from onnxopt.passes.fusion._base import FusionPass, const, var
from onnxopt.passes.fusion.bias_fold import per_channel
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

#: machines whose onnxruntime runs Convs in NCHWc (``platform.machine()``)
NCHWC_MACHINES = frozenset({"x86_64", "AMD64", "amd64", "i686", "x86"})
#: channels a multiple of this fill whole NCHWc blocks (8 on AVX2, 16 on AVX-512)
BLOCK = 16
#: activations onnxruntime fuses into the Conv before them (its output stays NCHWc)
FUSED_ACTIVATIONS = frozenset(
    {"Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh"}
)


def _after_activation(x: gs.Tensor) -> bool:
    """``x`` is the output of an activation onnxruntime fuses into the Conv before it (so ``x``
    is in NCHWc). A Conv's own output is left to fold-bias, and to onnxruntime's Conv+Mul and
    Conv+Add fusions, which cost nothing at run time."""
    node = producer(x)
    if node is None or node.op not in FUSED_ACTIVATIONS or not node.inputs:
        return False
    conv = producer(node.inputs[0])
    if conv is None or conv.op != "Conv" or (conv.domain or "") not in ("", "ai.onnx"):
        return False
    return len(node.inputs[0].outputs) == 1  # onnxruntime fuses a Conv only into its one reader


def static_channels(x: gs.Tensor) -> int | None:
    """The channel count of a 4-D float32 tensor (None when unknown or another type)."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4 or getattr(x, "dtype", None) != np.float32:
        return None
    c = shape[1]
    return int(c) if isinstance(c, (int, np.integer)) and c > 0 else None


class AffineToDepthwise(Rule):
    """[Mul|Div by a] then Add|Sub b, per channel, after a Conv's activation -> depthwise 1x1
    Conv."""

    name: ClassVar[str] = "affine_depthwise"
    patterns = (
        Op(
            ("Add", "Sub"),
            Op(("Mul", "Div"), Var("x"), Const("a"), name="scale"),
            Const("b"),
            name="shift",
        ),
        Op(("Add", "Sub"), Var("x"), Const("b"), name="shift"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        x = m.tensors["x"]
        channels = static_channels(x)
        if channels is None:
            return MatchResult.not_applicable("not a 4-D float32 tensor of known channels")
        if not _after_activation(x):
            return MatchResult.not_applicable(
                "not after an activation fused into a Conv (fold-bias folds it)"
            )
        if channels % BLOCK:
            return MatchResult.fail(f"{channels} channels do not fill {BLOCK}-channel blocks")
        affine = self._affine(m, channels)
        if affine is None:
            return MatchResult.fail("the constants are not per channel, float, or nonzero")
        m.extra = (channels, *affine)
        return MatchResult.success()

    @staticmethod
    def _affine(m: Match, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(a, b) as float64 [C] vectors with y = x·a + b, or None when not per channel."""
        scale = np.ones(channels)
        if "scale" in m.nodes:
            scale = per_channel(m.values["a"], 4, channels)
            if scale is None or not np.all(np.isfinite(scale)):
                return None
            if m.nodes["scale"].op == "Div":
                if np.any(scale == 0):
                    return None
                scale = 1.0 / scale
        shift = per_channel(m.values["b"], 4, channels)
        if shift is None or not np.all(np.isfinite(shift)):
            return None
        return scale, (-shift if m.nodes["shift"].op == "Sub" else shift)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        channels, scale, shift = m.extra
        name = m.root.name or m.root.outputs[0].name
        w = const(graph, f"{name}_dw_w", scale.astype(np.float32).reshape(channels, 1, 1, 1))
        b = const(graph, f"{name}_dw_b", shift.astype(np.float32))
        conv = gs.Node(
            "Conv",
            f"{name}_dw",
            attrs={"group": channels, "kernel_shape": [1, 1]},
            inputs=[m.tensors["x"], w, b],
            outputs=[var(graph, f"{name}_dw_out", dtype=np.float32)],
        )
        replace_root(graph, m, [conv])


class AffineToConv(FusionPass):
    """Per-channel Mul/Add after a Conv's activation -> a 1x1 depthwise Conv (onnxruntime
    keeps NCHWc)."""

    name: ClassVar[str] = "affine-to-conv"
    summary: ClassVar[str] = (
        "per-channel Mul/Add after a Conv's activation -> 1x1 depthwise Conv (no NCHWc reorders)"
    )

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        machine = platform.machine()
        if machine not in NCHWC_MACHINES:
            return PassResult.unchanged(
                f"{self.name}: onnxruntime's NCHWc layout is x86-64 only (this is {machine})"
            )
        return super().run(graph, ctx)

    def rules(self) -> list[Rule]:
        return [AffineToDepthwise()]


__all__ = ["AffineToConv", "AffineToDepthwise"]
