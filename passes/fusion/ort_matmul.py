"""MatMul with transposes and scalar scales -> FusedMatMul (``--target onnxruntime``).

    FusedMatMul(A, B; α, transA, transB) = α · op(A) · op(B),  op = swap of the last two axes

- MatMul(Transpose(a, swap-last-two), b) -> FusedMatMul(a, b, transA=1) (likewise for B);
- MatMul|FusedMatMul(a · s, b), (a, b · s) or its output · s or / s, s a scalar constant:
  α ← α·s (or α/s).

Declines: perms that move batch axes, unknown ranks, non-scalar or non-float scales.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.passes.fusion._base import FusionPass, rank, var
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

MS = "com.microsoft"
_MM = ("MatMul", "FusedMatMul")


def _scalar(a: np.ndarray) -> bool:
    return a.size == 1 and np.issubdtype(a.dtype, np.floating)


def _attrs(node: gs.Node) -> dict:
    if node.op == "FusedMatMul":
        return dict(node.attrs)
    return {"alpha": 1.0, "transA": 0, "transB": 0}


def _emit(graph: gs.Graph, m: Match, a: gs.Tensor, b: gs.Tensor, attrs: dict) -> None:
    mm = m.nodes["mm"]
    new = gs.Node(
        "FusedMatMul",
        mm.name,
        attrs=attrs,
        inputs=[a, b],
        outputs=[var(graph, f"{mm.name}_fmm", dtype=m.output.dtype)],
        domain=MS,
    )
    replace_root(graph, m, [new])


def _mm_ok(m: Match) -> MatchResult:
    mm = m.nodes["mm"]
    if mm.op == "FusedMatMul" and (mm.domain or "") != MS:
        return MatchResult.fail("FusedMatMul outside com.microsoft")
    if mm.op == "FusedMatMul" and (
        int(mm.attrs.get("transBatchA", 0)) or int(mm.attrs.get("transBatchB", 0))
    ):
        return MatchResult.fail("transBatch set")
    return MatchResult.success()


class TransposeMatMul(Rule):
    """A Transpose swapping the last two axes feeding a MatMul input."""

    name: ClassVar[str] = "ort_fusedmatmul_transpose"
    contrib: ClassVar[bool] = True
    patterns = (
        Op(_MM, Op("Transpose", Var("t"), name="tr"), Var("b"), name="mm", domain=None),
        Op(_MM, Var("a"), Op("Transpose", Var("t"), name="tr"), name="mm", domain=None),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _mm_ok(m)
        if not res:
            return res
        perm = m.nodes["tr"].attrs.get("perm")
        r = rank(m.tensors["t"])
        if perm is None or r is None or r < 2:
            return MatchResult.fail("perm or rank unknown")
        want = list(range(r - 2)) + [r - 1, r - 2]
        if list(perm) != want:
            return MatchResult.fail(f"perm {list(perm)} moves batch axes")
        if rank(m.nodes["mm"].inputs[0]) != rank(m.nodes["mm"].inputs[1]):
            return MatchResult.fail("operand ranks differ (batch broadcasting)")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        attrs = _attrs(m.nodes["mm"])
        if m.pattern_index == 0:
            attrs["transA"] = 1 - int(attrs.get("transA", 0))
            _emit(graph, m, m.tensors["t"], m.tensors["b"], attrs)
        else:
            attrs["transB"] = 1 - int(attrs.get("transB", 0))
            _emit(graph, m, m.tensors["a"], m.tensors["t"], attrs)


class ScaleMatMul(Rule):
    """Scalar Mul/Div on a MatMul input or output folded into alpha."""

    name: ClassVar[str] = "ort_fusedmatmul_scale"
    contrib: ClassVar[bool] = True
    patterns = (
        Op(
            "Mul",
            Op(_MM, Var("a"), Var("b"), name="mm", domain=None),
            Const("s", _scalar),
            name="sc",
        ),
        Op(
            "Div",
            Op(_MM, Var("a"), Var("b"), name="mm", domain=None),
            Const("s", _scalar),
            name="sc",
        ),
        Op(
            _MM,
            Op("Mul", Var("a"), Const("s", _scalar), name="sc"),
            Var("b"),
            name="mm",
            domain=None,
        ),
        Op(
            _MM,
            Var("a"),
            Op("Mul", Var("b"), Const("s", _scalar), name="sc"),
            name="mm",
            domain=None,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        res = _mm_ok(m)
        if not res:
            return res
        s = float(m.values["s"].reshape(-1)[0])
        if m.nodes["sc"].op == "Div" and s == 0.0:
            return MatchResult.fail("division by zero")
        for k in ("a", "b"):
            if rank(m.tensors[k]) is None:
                return MatchResult.fail("operand rank unknown")
        if m.values["s"].ndim > min(rank(m.tensors["a"]), rank(m.tensors["b"])):
            return MatchResult.fail("scale has a higher rank than the operands")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        attrs = _attrs(m.nodes["mm"])
        s = float(m.values["s"].reshape(-1)[0])
        alpha = float(attrs.get("alpha", 1.0))
        attrs["alpha"] = alpha / s if m.nodes["sc"].op == "Div" else alpha * s
        _emit(graph, m, m.tensors["a"], m.tensors["b"], attrs)


class OrtFuseMatMul(FusionPass):
    """Transposes and scalar scales folded into com.microsoft FusedMatMul."""

    name: ClassVar[str] = "ort-fuse-matmul"
    summary: ClassVar[str] = "MatMul + Transpose / scalar scale -> FusedMatMul"
    contrib_only: ClassVar[bool] = True

    def rules(self) -> list[Rule]:
        return [TransposeMatMul(), ScaleMatMul()]
