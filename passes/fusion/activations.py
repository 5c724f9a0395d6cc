"""Activation subgraphs -> single ops.

- HardSigmoid:  Clip(x + 3, 0, 6) / 6  (or · 1/6)  -> HardSigmoid(x, α=1/6, β=½)
- HardSwish:    x · HardSigmoid(x, α=1/6, β=½)      -> HardSwish(x)         (opset >= 14)
                (x · Clip(x + 3, 0, 6)) / 6         -> HardSwish(x)
- Swish / SiLU: x · Sigmoid(x)                      -> Swish(x)             (opset >= 24;
                off by default: onnxruntime 1.32 has no Swish-24 kernel, so the verifier would
                roll it back; option ``swish=true`` enables it. With ``--target onnxruntime``
                the contrib QuickGelu(α=1) in ``ort_gelu`` covers SiLU instead)

Declines: Clip bounds other than (0, 6), non-constant bounds, other HardSigmoid α/β.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import PassConfig
from onnxopt.graph import const_value, is_empty_tensor
from onnxopt.passes.fusion._base import FusionPass, var
from onnxopt.passes.fusion.pattern import (
    Const,
    Match,
    MatchResult,
    Op,
    Rule,
    Var,
    replace_root,
    scalar_close,
)

logger = logging.getLogger(__name__)


def _clip_bounds(clip: gs.Node) -> tuple[float | None, float | None]:
    lo = clip.attrs.get("min")
    hi = clip.attrs.get("max")
    if len(clip.inputs) > 1 and not is_empty_tensor(clip.inputs[1]):
        v = const_value(clip.inputs[1])
        lo = None if v is None else float(np.asarray(v).reshape(-1)[0])
    if len(clip.inputs) > 2 and not is_empty_tensor(clip.inputs[2]):
        v = const_value(clip.inputs[2])
        hi = None if v is None else float(np.asarray(v).reshape(-1)[0])
    return lo, hi


def _relu6_of_x_plus_3() -> Op:
    return Op(
        "Clip",
        Op("Add", Var("x"), Const("three", scalar_close(3.0)), name="add3"),
        name="clip",
        exact_arity=False,
    )


def _check_clip(m: Match) -> MatchResult:
    lo, hi = _clip_bounds(m.nodes["clip"])
    if lo != 0.0 or hi != 6.0:
        return MatchResult.fail(f"Clip bounds ({lo}, {hi}) are not (0, 6)")
    return MatchResult.success()


def _single(
    graph: gs.Graph, m: Match, op: str, attrs: dict | None = None, domain: str | None = None
) -> None:
    name = m.root.name
    new = gs.Node(
        op,
        name,
        attrs=attrs or {},
        inputs=[m.tensors["x"]],
        outputs=[var(graph, f"{name}_{op.lower()}", dtype=m.output.dtype)],
        domain=domain,
    )
    replace_root(graph, m, [new])


class HardSigmoidRule(Rule):
    """Clip(x + 3, 0, 6) / 6 -> HardSigmoid(α=1/6, β=0.5)."""

    name: ClassVar[str] = "hardsigmoid"
    patterns = (
        Op("Div", _relu6_of_x_plus_3(), Const("six", scalar_close(6.0)), name="div"),
        Op("Mul", _relu6_of_x_plus_3(), Const("six", scalar_close(1 / 6)), name="div"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        return _check_clip(m)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        _single(graph, m, "HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5})


class HardSwishRule(Rule):
    """x · HardSigmoid(x) (α=1/6, β=0.5) or x·Clip(x+3, 0, 6)/6 -> HardSwish."""

    name: ClassVar[str] = "hardswish"
    min_opset: ClassVar[int] = 14
    patterns = (
        Op("Mul", Var("x"), Op("HardSigmoid", Var("x"), name="hs"), name="mul"),
        Op(
            "Div",
            Op("Mul", Var("x"), _relu6_of_x_plus_3(), name="mul"),
            Const("six", scalar_close(6.0)),
            name="div",
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        if "hs" in m.nodes:
            hs = m.nodes["hs"]
            alpha = float(hs.attrs.get("alpha", 0.2))
            beta = float(hs.attrs.get("beta", 0.5))
            if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
                return MatchResult.fail(
                    f"HardSigmoid alpha={alpha:g}, beta={beta:g} (HardSwish needs 1/6, 0.5)"
                )
            return MatchResult.success()
        return _check_clip(m)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        _single(graph, m, "HardSwish")


class SwishRule(Rule):
    """x · Sigmoid(x) -> Swish (opset >= 24)."""

    name: ClassVar[str] = "swish"
    min_opset: ClassVar[int] = 24
    patterns = (Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul"),)

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        _single(graph, m, "Swish")


@dataclass(frozen=True)
class ActivationsConfig(PassConfig):
    """``swish``: also fuse x·Sigmoid(x) into Swish (opset >= 24; off by default because
    onnxruntime releases before 1.22 have no Swish kernel)."""

    swish: bool = False


class FuseActivations(FusionPass):
    """HardSigmoid, HardSwish and x*sigmoid(x) subgraphs -> single activation ops."""

    name: ClassVar[str] = "fuse-activations"
    summary: ClassVar[str] = "HardSigmoid / HardSwish / Swish subgraphs -> one op"

    config_class = ActivationsConfig

    def rules(self) -> list[Rule]:
        rules: list[Rule] = [HardSigmoidRule(), HardSwishRule()]
        if self.config.swish:
            rules.append(SwishRule())
        return rules
