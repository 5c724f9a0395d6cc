"""MatMul + Add -> Gemm (2-D), and Transposes absorbed into Gemm's transA / transB.

- MatMul(A, B) + C with A, B 2-D and C broadcastable to [M, N] as [N], [1, N], [M, N] or a
  scalar:  Gemm(A, B, C).
- Gemm(Transpose(A, [1, 0]), B) -> Gemm(A, B, transA = 1 − transA), and likewise for B.

Declines: operands not known to be 2-D (MatMul broadcasts batches, Gemm does not), a bias whose
shape would change the output's shape, non-float types.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import const_value
from onnxopt.passes.fusion._base import FusionPass, const, rank, static_shape, var
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, Var, replace_root

logger = logging.getLogger(__name__)

_FLOATS = (np.float32, np.float64, np.float16)


class MatMulAdd(Rule):
    """MatMul of 2-D operands followed by an Add: one Gemm."""

    name: ClassVar[str] = "matmul_add_gemm"
    patterns = (Op("Add", Op("MatMul", Var("a"), Var("b"), name="mm"), Var("c"), name="add"),)

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        a, b, c = m.tensors["a"], m.tensors["b"], m.tensors["c"]
        if rank(a) != 2 or rank(b) != 2:
            return MatchResult.fail("MatMul operands are not known to be 2-D")
        dt = m.nodes["mm"].outputs[0].dtype
        if dt is not None and np.dtype(dt).type not in _FLOATS:
            return MatchResult.fail(f"Gemm does not take {np.dtype(dt)}")
        mm_shape = static_shape(m.nodes["mm"].outputs[0])
        c_shape = static_shape(c)
        if c_shape is None:
            return MatchResult.fail("bias shape unknown")
        if len(c_shape) > 2:
            return MatchResult.fail("bias rank > 2")
        if mm_shape is not None:
            try:
                if list(np.broadcast_shapes(tuple(mm_shape), tuple(c_shape))) != mm_shape:
                    return MatchResult.fail("the Add broadcasts beyond the MatMul's shape")
            except ValueError:
                return MatchResult.fail("shapes do not broadcast")
        elif not (len(c_shape) <= 1 or c_shape[0] == 1):
            return MatchResult.fail("MatMul shape unknown and bias not per column")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        mm = m.nodes["mm"]
        c = m.tensors["c"]
        value = const_value(c)
        if value is not None and value.ndim == 2 and value.shape[0] == 1:
            # a [1, N] row bias broadcasts over the rows exactly as the [N] bias Gemm is
            # usually given (and as int8 quantization needs it)
            c = const(graph, f"{c.name}_row", value.reshape(-1))
        new = gs.Node(
            "Gemm",
            mm.name,
            attrs={"alpha": 1.0, "beta": 1.0},
            inputs=[m.tensors["a"], m.tensors["b"], c],
            outputs=[var(graph, f"{mm.name}_gemm", dtype=mm.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


class _GemmTranspose(Rule):
    index: ClassVar[int] = 0
    attr: ClassVar[str] = "transA"

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        gemm = m.nodes["gemm"]
        attrs = dict(gemm.attrs)
        attrs[self.attr] = 1 - int(attrs.get(self.attr, 0))
        inputs = list(gemm.inputs)
        inputs[self.index] = m.tensors["t_in"]
        new = gs.Node(
            "Gemm",
            gemm.name,
            attrs=attrs,
            inputs=inputs,
            outputs=[var(graph, f"{gemm.name}_t", dtype=gemm.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


class TransposeGemmA(_GemmTranspose):
    """Transpose([1, 0]) feeding Gemm's A input."""

    name: ClassVar[str] = "transpose_gemm"
    patterns = (
        Op(
            "Gemm",
            Op("Transpose", Var("t_in"), name="tr", attrs={"perm": [1, 0]}),
            Var("b"),
            name="gemm",
            exact_arity=False,
        ),
    )


class TransposeGemmB(_GemmTranspose):
    """Transpose([1, 0]) feeding Gemm's B input."""

    name: ClassVar[str] = "transpose_gemm"
    index: ClassVar[int] = 1
    attr: ClassVar[str] = "transB"
    patterns = (
        Op(
            "Gemm",
            Var("a"),
            Op("Transpose", Var("t_in"), name="tr", attrs={"perm": [1, 0]}),
            name="gemm",
            exact_arity=False,
        ),
    )


class FuseGemm(FusionPass):
    """MatMul + Add into Gemm (2-D) and Transposes into Gemm's transA/transB."""

    name: ClassVar[str] = "fuse-gemm"
    summary: ClassVar[str] = "MatMul+Add -> Gemm for 2-D; Transpose into transA/transB"

    def rules(self) -> list[Rule]:
        return [MatMulAdd(), TransposeGemmA(), TransposeGemmB()]
