"""GELU in erf and tanh forms -> Gelu (opset >= 20).

    Gelu(x)                      = x · ½ · (1 + erf(x / √2))
    Gelu(x, approximate="tanh")  = x · ½ · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))

The exporters' variants are listed in :mod:`onnxopt.passes.fusion._gelu_patterns`. Models below
opset 20 keep the decomposed form (noted); ``--target onnxruntime`` fuses them into the
com.microsoft Gelu / FastGelu instead (``ort_gelu``).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import onnx_graphsurgeon as gs

from onnxopt.passes.fusion._base import FusionPass, var
from onnxopt.passes.fusion._gelu_patterns import erf_gelu_patterns, tanh_gelu_patterns
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, replace_root

logger = logging.getLogger(__name__)


class _GeluRule(Rule):
    op: ClassVar[str] = "Gelu"
    domain: ClassVar[str] = ""
    attrs: ClassVar[dict] = {}

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        x = m.tensors["x"]
        if x.dtype is not None and str(x.dtype) not in (
            "float32",
            "float16",
            "float64",
            "bfloat16",
        ):
            return MatchResult.fail(f"GELU on {x.dtype}")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        name = m.root.name
        new = gs.Node(
            self.op,
            name,
            attrs=dict(self.attrs),
            inputs=[m.tensors["x"]],
            outputs=[var(graph, f"{name}_gelu", dtype=m.output.dtype)],
            domain=self.domain or None,
        )
        replace_root(graph, m, [new])


class ErfGelu(_GeluRule):
    """x·½·(1 + erf(x/√2)) -> Gelu."""

    name: ClassVar[str] = "gelu_erf"
    patterns: ClassVar[tuple[Op, ...]] = erf_gelu_patterns()
    min_opset: ClassVar[int] = 20


class TanhGelu(_GeluRule):
    """x·½·(1 + tanh(√(2/π)(x + 0.044715x³))) -> Gelu(approximate="tanh")."""

    name: ClassVar[str] = "gelu_tanh"
    patterns: ClassVar[tuple[Op, ...]] = tanh_gelu_patterns()
    min_opset: ClassVar[int] = 20
    attrs: ClassVar[dict] = {"approximate": "tanh"}


class FuseGelu(FusionPass):
    """GELU (erf and tanh forms) -> Gelu, opset >= 20."""

    name: ClassVar[str] = "fuse-gelu"
    summary: ClassVar[str] = "erf/tanh GELU subgraphs -> Gelu (opset >= 20)"

    def rules(self) -> list[Rule]:
        return [ErfGelu(), TanhGelu()]
