"""GELU patterns as the torch exporters write them (shared by the standard and contrib rules).

    erf form:   y = x · ½ · (1 + erf(x / √2))
    tanh form:  y = x · ½ · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))

The outer product is written three ways: (x·h)·½ (TorchScript), x·(½·h) (dynamo) and (x·½)·h,
where h is the ``1 + erf|tanh(...)`` term; x / √2 may also be x · (1/√2); x³ may be Pow(x, 3),
x·(x·x) or (x·x)·x.
"""

from __future__ import annotations

import math

from onnxopt.passes.fusion.pattern import Const, Op, Pattern, Var, scalar_close

HALF = Const("half", scalar_close(0.5))
ONE = Const("one", scalar_close(1.0))


def _erf_core(x: Pattern) -> list[Op]:
    return [
        Op(
            "Add",
            Op(
                "Erf", Op("Div", x, Const("s2", scalar_close(math.sqrt(2.0))), name="d"), name="erf"
            ),
            ONE,
            name="h",
        ),
        Op(
            "Add",
            Op(
                "Erf",
                Op("Mul", x, Const("s2", scalar_close(1 / math.sqrt(2.0))), name="d"),
                name="erf",
            ),
            ONE,
            name="h",
        ),
    ]


def _cubes(x: Pattern) -> list[Op]:
    return [
        Op("Pow", x, Const("three", scalar_close(3.0)), name="cube"),
        Op("Mul", x, Op("Mul", x, x, name="sq"), name="cube"),
    ]


def _tanh_core(x: Pattern) -> list[Op]:
    out = []
    for cube in _cubes(x):
        inner = Op(
            "Add", x, Op("Mul", cube, Const("c", scalar_close(0.044715)), name="cm"), name="inner"
        )
        scaled = Op("Mul", inner, Const("k", scalar_close(math.sqrt(2 / math.pi))), name="km")
        out.append(Op("Add", Op("Tanh", scaled, name="tanh"), ONE, name="h"))
    return out


def _outer(x: Pattern, h: Op) -> list[Op]:
    return [
        Op("Mul", Op("Mul", x, h, name="xh"), HALF, name="y"),
        Op("Mul", x, Op("Mul", HALF, h, name="hh"), name="y"),
        Op("Mul", Op("Mul", x, HALF, name="xh"), h, name="y"),
    ]


def erf_gelu_patterns(x: Pattern | None = None) -> tuple[Op, ...]:
    x = x or Var("x")
    return tuple(p for h in _erf_core(x) for p in _outer(x, h))


def tanh_gelu_patterns(x: Pattern | None = None) -> tuple[Op, ...]:
    x = x or Var("x")
    return tuple(p for h in _tanh_core(x) for p in _outer(x, h))
