"""LayerNormalization(a + b [+ bias]) -> SkipLayerNormalization (``--target onnxruntime``).

    SkipLayerNormalization(input, skip, γ, β, bias) = LayerNorm(input + skip + bias; γ, β)

over the last axis. Declines: a normalisation axis other than the last, operands of different
or unknown shapes (onnxruntime's kernel expects equal shapes), non-constant γ/β, a bias that is
not 1-D of the hidden size, and (via the helper) a sum that is used elsewhere.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value
from onnxopt.passes.fusion._base import FusionPass, var
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

MS = "com.microsoft"


class SkipLayerNorm(Rule):
    """LayerNormalization over an Add of two same-shaped tensors (plus an optional bias)."""

    name: ClassVar[str] = "ort_skiplayernorm"
    contrib: ClassVar[bool] = True
    patterns = (
        Op(
            "LayerNormalization",
            Op("Add", Op("Add", Var("a"), Const("bias"), name="badd"), Var("b"), name="add"),
            Var("gamma"),
            name="ln",
            exact_arity=False,
        ),
        Op(
            "LayerNormalization",
            Op("Add", Var("a"), Var("b"), name="add"),
            Var("gamma"),
            name="ln",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        ln = m.nodes["ln"]
        if any(t.outputs for t in ln.outputs[1:]):
            return MatchResult.fail("LayerNormalization statistics outputs are used")
        a, b = m.tensors["a"], m.tensors["b"]
        sa, sb = getattr(a, "shape", None), getattr(b, "shape", None)
        if sa is None or sb is None or list(sa) != list(sb) or len(sa) not in (2, 3):
            return MatchResult.fail("addends are not known to have the same 2-D/3-D shape")
        if int(ln.attrs.get("axis", -1)) not in (-1, len(sa) - 1):
            return MatchResult.fail("normalisation axis is not the last")
        g = const_value(m.tensors["gamma"])
        if g is None or g.ndim != 1:
            return MatchResult.fail("gamma is not a 1-D constant")
        if len(ln.inputs) > 2 and ln.inputs[2].name and const_value(ln.inputs[2]) is None:
            return MatchResult.fail("beta is not constant")
        if "bias" in m.values:
            bias = m.values["bias"]
            if bias.ndim != 1 or bias.shape[0] != g.shape[0]:
                return MatchResult.fail("bias is not 1-D of the hidden size")
        if a.dtype is not None and np.dtype(a.dtype) not in (np.float32, np.float16):
            return MatchResult.fail(f"dtype {a.dtype}")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        ln = m.nodes["ln"]
        g = m.tensors["gamma"]
        inputs = [m.tensors["a"], m.tensors["b"], g]
        if len(ln.inputs) > 2 and ln.inputs[2].name:
            inputs.append(ln.inputs[2])
        else:
            gv = const_value(g)
            inputs.append(gs.Constant(f"{ln.name}_beta0", np.zeros_like(gv)))
        if "bias" in m.values:
            inputs.append(m.tensors["bias"])
        name = ln.name
        new = gs.Node(
            "SkipLayerNormalization",
            name,
            attrs={"epsilon": float(ln.attrs.get("epsilon", 1e-5))},
            inputs=inputs,
            outputs=[var(graph, f"{name}_sln", dtype=m.output.dtype)],
            domain=MS,
        )
        replace_root(graph, m, [new])


class OrtFuseSkipLayerNorm(FusionPass):
    """LayerNormalization(a + b [+ bias]) -> com.microsoft SkipLayerNormalization."""

    name: ClassVar[str] = "ort-fuse-skiplayernorm"
    summary: ClassVar[str] = "residual Add + LayerNormalization -> SkipLayerNormalization"
    contrib_only: ClassVar[bool] = True

    def rules(self) -> list[Rule]:
        return [SkipLayerNorm()]
