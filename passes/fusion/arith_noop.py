"""Arithmetic no-ops removed: x·1, x+0, x/1, x−0, x^1.

An identity constant c is dropped only when broadcasting with it cannot change the result's
shape or type: c.ndim <= rank(x) and every dimension of c is 1 or equals x's (when x's rank is
unknown, c must be a 0-d scalar). ``1·x`` and ``0+x`` are covered (commutative), ``1/x`` and
``0−x`` are not identities and never match.

Declines: non-identity constants, shapes that could broadcast x, dtype mismatches, a graph
output that would end up fed directly by a graph input or initializer.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import bypass, merge_refusal
from onnxopt.passes.fusion._base import FusionPass
from onnxopt.passes.fusion.pattern import Const, Match, MatchResult, Op, Rule, Var

logger = logging.getLogger(__name__)


def _all(value: float):
    def pred(a: np.ndarray) -> bool:
        return a.size > 0 and bool(np.all(a == value))

    return pred


class ArithNoop(Rule):
    """x*1, x+0, x/1, x-0, x^1."""

    name: ClassVar[str] = "arith_noop"
    patterns = (
        Op("Mul", Var("x"), Const("c", _all(1)), name="op"),
        Op("Add", Var("x"), Const("c", _all(0)), name="op"),
        Op("Div", Var("x"), Const("c", _all(1)), name="op"),
        Op("Sub", Var("x"), Const("c", _all(0)), name="op"),
        Op("Pow", Var("x"), Const("c", _all(1)), name="op"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        x, c = m.tensors["x"], m.values["c"]
        out = m.output
        shape = getattr(x, "shape", None)
        if shape is None:
            if c.ndim != 0:
                return MatchResult.fail(f"rank of '{x.name}' unknown; constant may broadcast it")
        else:
            if c.ndim > len(shape):
                return MatchResult.fail(f"constant of rank {c.ndim} broadcasts '{x.name}'")
            for dc, dx in zip(reversed(c.shape), reversed(list(shape)), strict=False):
                if dc != 1 and dc != dx:
                    return MatchResult.fail(
                        f"constant shape {list(c.shape)} may broadcast '{x.name}'"
                    )
        if (
            x.dtype is not None
            and out.dtype is not None
            and np.dtype(x.dtype) != np.dtype(out.dtype)
        ):
            return MatchResult.fail("dtype changes")
        why = merge_refusal(graph, out, x)
        return MatchResult.fail(why) if why else MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        reason = bypass(graph, m.root, m.tensors["x"], m.output)
        if reason:  # pragma: no cover - excluded by check
            raise RuntimeError(reason)


class RemoveArithNoop(FusionPass):
    """Remove x*1, x+0, x/1, x-0 and x^1 where broadcasting cannot change the result."""

    name: ClassVar[str] = "remove-arith-noop"
    summary: ClassVar[str] = "x*1, x+0, x/1, x-0 removed (broadcasting respected)"

    def rules(self) -> list[Rule]:
        return [ArithNoop()]
