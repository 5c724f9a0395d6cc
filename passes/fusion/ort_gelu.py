"""com.microsoft GELU family (``--target onnxruntime`` only).

- erf GELU subgraph            -> Gelu (com.microsoft), any opset
- tanh GELU subgraph           -> FastGelu (com.microsoft)
- Gelu(x + b), b constant 1-D  -> BiasGelu(x, b)          (both the standard and contrib Gelu)
- FastGelu(x + b)              -> FastGelu(x, b)
- x · Sigmoid(x)               -> QuickGelu(x, α=1)       (x·σ(αx) with α = 1 is SiLU)

The bias must have the size of the last axis (onnxruntime broadcasts it along that axis only).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.passes.fusion._base import FusionPass, static_shape, var
from onnxopt.passes.fusion._gelu_patterns import erf_gelu_patterns, tanh_gelu_patterns
from onnxopt.passes.fusion.gelu import _GeluRule
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

MS = "com.microsoft"


class ContribGelu(_GeluRule):
    name: ClassVar[str] = "ort_gelu"
    patterns: ClassVar[tuple[Op, ...]] = erf_gelu_patterns()
    contrib: ClassVar[bool] = True
    domain: ClassVar[str] = MS


class ContribFastGelu(_GeluRule):
    name: ClassVar[str] = "ort_fastgelu"
    patterns: ClassVar[tuple[Op, ...]] = tanh_gelu_patterns()
    contrib: ClassVar[bool] = True
    op: ClassVar[str] = "FastGelu"
    domain: ClassVar[str] = MS


def _bias_ok(m: Match) -> MatchResult:
    b = m.values["bias"]
    x = m.tensors["x"]
    if b.ndim != 1 or not np.issubdtype(b.dtype, np.floating):
        return MatchResult.fail(f"bias of shape {list(b.shape)} is not 1-D float")
    shape = getattr(x, "shape", None)
    if shape is None or not shape or shape[-1] != b.shape[0]:
        return MatchResult.fail("bias size differs from the last axis (or shape unknown)")
    out = static_shape(m.nodes["add"].outputs[0])
    if out is not None and static_shape(x) is not None and out != static_shape(x):
        return MatchResult.fail("the bias Add broadcasts the input")
    return MatchResult.success()


class BiasGelu(Rule):
    """Gelu(x + b) -> BiasGelu(x, b)."""

    name: ClassVar[str] = "ort_biasgelu"
    contrib: ClassVar[bool] = True
    patterns = (
        Op("Gelu", Op("Add", Var("x"), Const("bias"), name="add"), name="gelu", domain=MS),
        Op("Gelu", Op("Add", Var("x"), Const("bias"), name="add"), name="gelu"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        g = m.nodes["gelu"]
        approx = g.attrs.get("approximate", "none")
        if approx not in ("none", b"none"):
            return MatchResult.fail(f"approximate={approx!r}")
        return _bias_ok(m)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        name = m.root.name
        new = gs.Node(
            "BiasGelu",
            name,
            inputs=[m.tensors["x"], m.tensors["bias"]],
            outputs=[var(graph, f"{name}_bg", dtype=m.output.dtype)],
            domain=MS,
        )
        replace_root(graph, m, [new])


class FastGeluBias(Rule):
    """FastGelu(x + b) -> FastGelu(x, b)."""

    name: ClassVar[str] = "ort_fastgelu_bias"
    contrib: ClassVar[bool] = True
    patterns = (
        Op("FastGelu", Op("Add", Var("x"), Const("bias"), name="add"), name="gelu", domain=MS),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        return _bias_ok(m)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        name = m.root.name
        new = gs.Node(
            "FastGelu",
            name,
            inputs=[m.tensors["x"], m.tensors["bias"]],
            outputs=[var(graph, f"{name}_fg", dtype=m.output.dtype)],
            domain=MS,
        )
        replace_root(graph, m, [new])


class QuickGelu(Rule):
    """x · Sigmoid(x) -> QuickGelu(x, alpha=1)."""

    name: ClassVar[str] = "ort_quickgelu"
    contrib: ClassVar[bool] = True
    patterns = (Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul"),)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        name = m.root.name
        new = gs.Node(
            "QuickGelu",
            name,
            attrs={"alpha": 1.0},
            inputs=[m.tensors["x"]],
            outputs=[var(graph, f"{name}_qg", dtype=m.output.dtype)],
            domain=MS,
        )
        replace_root(graph, m, [new])


class OrtFuseGelu(FusionPass):
    """com.microsoft Gelu / FastGelu / BiasGelu / QuickGelu (--target onnxruntime)."""

    name: ClassVar[str] = "ort-fuse-gelu"
    summary: ClassVar[str] = "GELU/SiLU -> com.microsoft Gelu, FastGelu, BiasGelu, QuickGelu"
    contrib_only: ClassVar[bool] = True

    def rules(self) -> list[Rule]:
        return [ContribGelu(), ContribFastGelu(), BiasGelu(), FastGeluBias(), QuickGelu()]
