"""Layout no-ops: Transpose chains, Reshape/Flatten chains, Squeeze/Unsqueeze pairs.

- Transpose(Transpose(x, p), q) = Transpose(x, r) with r[i] = p[q[i]]; dropped when r is the
  identity; a Transpose pair around elementwise ops cancels too (:mod:`.transpose_chain`).
- Reshape(Reshape|Flatten(x), s) = Reshape(x, s) when s has no 0 entry (a 0 copies a dimension
  of the *input*, which the chain changes); a Reshape to the input's own static shape is dropped.
- Squeeze(Unsqueeze(x, a), a) = x and Unsqueeze(Squeeze(x, a), a) = x (axes compared after
  normalising negatives against the shared rank).
- A Transpose that only moves axes of size 1 next to a Reshape joins it (see
  :class:`TransposeReshape`).

Declines: non-constant shapes or axes, a 0 in the outer shape, unknown ranks where needed.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.graph import bypass, const_value, merge_refusal
from onnxopt.passes.fusion._base import FusionPass, const, int_list, rank, static_shape, var
from onnxopt.passes.fusion.pattern import Match, MatchResult, Op, Rule, Var, replace_root
from onnxopt.passes.fusion.transpose_chain import TransposeChain

logger = logging.getLogger(__name__)


def _bypass_ok(graph: gs.Graph, m: Match, keep: gs.Tensor) -> MatchResult:
    """The match's output can be routed to ``keep`` (see ``onnxopt.graph.merge_refusal``)."""
    why = merge_refusal(graph, m.output, keep)
    return MatchResult.fail(why) if why else MatchResult.success()


def _drop(graph: gs.Graph, m: Match, keep: gs.Tensor) -> None:
    """Route the match's output to ``keep`` and detach the matched nodes."""
    root = m.root
    reason = bypass(graph, root, keep, root.outputs[0])
    if reason:  # pragma: no cover - checked in check()
        raise RuntimeError(reason)
    for node in m.matched:
        node.inputs.clear()
        node.outputs.clear()


class TransposeTranspose(Rule):
    """Two Transposes in a row: one Transpose, or none."""

    name: ClassVar[str] = "transpose_transpose"
    patterns = (Op("Transpose", Op("Transpose", Var("x"), name="t1"), name="t2"),)

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        p = m.nodes["t1"].attrs.get("perm")
        q = m.nodes["t2"].attrs.get("perm")
        if p is None or q is None:
            return MatchResult.fail("Transpose without perm")
        if len(p) != len(q):
            return MatchResult.fail("perm lengths differ")
        r = [p[i] for i in q]
        if r == list(range(len(r))):
            return _bypass_ok(graph, m, m.tensors["x"])
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        p, q = m.nodes["t1"].attrs["perm"], m.nodes["t2"].attrs["perm"]
        r = [int(p[i]) for i in q]
        if r == list(range(len(r))):
            _drop(graph, m, m.tensors["x"])
            return
        t2 = m.nodes["t2"]
        new = gs.Node(
            "Transpose",
            t2.name,
            attrs={"perm": r},
            inputs=[m.tensors["x"]],
            outputs=[var(graph, f"{t2.name}_merged", dtype=t2.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


def _shape_input(node: gs.Node) -> np.ndarray | None:
    v = const_value(node.inputs[1]) if len(node.inputs) > 1 else None
    return None if v is None else np.asarray(v).reshape(-1).astype(np.int64)


class ReshapeChain(Rule):
    """Reshape of a Reshape / Flatten: one Reshape."""

    name: ClassVar[str] = "reshape_chain"
    patterns = (
        Op(
            "Reshape",
            Op(("Reshape", "Flatten"), Var("x"), name="inner", exact_arity=False),
            Var("shape"),
            name="outer",
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        s = _shape_input(m.nodes["outer"])
        if s is None:
            return MatchResult.fail("outer shape is not constant")
        if np.any(s == 0):
            return MatchResult.fail("outer shape copies a dimension (0) from its input")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        outer = m.nodes["outer"]
        new = gs.Node(
            "Reshape",
            outer.name,
            attrs=dict(outer.attrs),
            inputs=[m.tensors["x"], m.tensors["shape"]],
            outputs=[var(graph, f"{outer.name}_merged", dtype=outer.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


class ReshapeNoop(Rule):
    """A Reshape whose target is its input's own static shape."""

    name: ClassVar[str] = "reshape_noop"
    patterns = (Op("Reshape", Var("x"), Var("shape"), name="r"),)

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        s = _shape_input(m.nodes["r"])
        have = static_shape(m.tensors["x"])
        if s is None or have is None:
            return MatchResult.not_applicable("shapes not static")
        allowzero = int(m.nodes["r"].attrs.get("allowzero", 0))
        target = [
            have[i] if (d == 0 and not allowzero and i < len(have)) else int(d)
            for i, d in enumerate(s)
        ]
        if -1 in target and len(target) == len(have):
            k = target.index(-1)
            known = int(np.prod([d for i, d in enumerate(target) if i != k]))
            if known:
                target[k] = int(np.prod(have)) // known
        if target != have:
            return MatchResult.not_applicable("the Reshape changes the shape")
        return _bypass_ok(graph, m, m.tensors["x"])

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        _drop(graph, m, m.tensors["x"])


def reshape_like(shape: list[int] | None, perm) -> bool:
    """Whether transposing ``shape`` by ``perm`` only moves axes of size 1: the elements stay
    in the same order, so the Transpose is a Reshape."""
    if shape is None or perm is None or len(perm) != len(shape):
        return False
    kept = [int(a) for a in perm if shape[int(a)] != 1]
    return kept == sorted(kept)


class TransposeReshape(Rule):
    """A Transpose that only moves size-1 axes, next to a Reshape: one Reshape.

    ``Reshape(Transpose(x, p), s) = Reshape(x, s)`` and ``Transpose(Reshape(x, s), p) =
    Reshape(x, s')`` (``s'`` the Transpose's static output shape), when ``p`` keeps the order
    of the axes larger than 1 (the recurrent exports' ``[seq, 1, batch, hidden]`` shuffles).
    """

    name: ClassVar[str] = "transpose_reshape"
    patterns = (
        Op("Reshape", Op("Transpose", Var("x"), name="t"), Var("shape"), name="root"),
        Op("Transpose", Op("Reshape", Var("x"), Var("shape"), name="r"), name="root"),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        t = m.nodes["t"] if m.pattern_index == 0 else m.root
        src = t.inputs[0]
        if not reshape_like(static_shape(src), t.attrs.get("perm")):
            return MatchResult.not_applicable("the Transpose reorders axes larger than 1")
        if m.pattern_index == 0:
            s = _shape_input(m.root)
            if s is None or np.any(s == 0):
                return MatchResult.fail("shape is not constant or copies a dimension (0)")
        elif static_shape(m.root.outputs[0]) is None:
            return MatchResult.fail("output shape is not static")
        return MatchResult.success()

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        root = m.root
        if m.pattern_index == 0:
            shape, attrs = m.tensors["shape"], dict(root.attrs)
        else:
            out = np.array(static_shape(root.outputs[0]), np.int64)
            shape, attrs = const(graph, f"{root.name}_shape", out), {}
        new = gs.Node(
            "Reshape",
            root.name,
            attrs=attrs,
            inputs=[m.tensors["x"], shape],
            outputs=[var(graph, f"{root.name}_merged", dtype=root.outputs[0].dtype)],
        )
        replace_root(graph, m, [new])


def _axes(node: gs.Node, r: int | None) -> list[int] | None:
    axes = int_list(node, "axes", 1)
    if axes is None or not axes:
        return None
    if r is None:
        return sorted(axes) if all(a >= 0 for a in axes) else None
    return sorted(a % r for a in axes)


class SqueezePair(Rule):
    """Squeeze(Unsqueeze(x, a), a) and Unsqueeze(Squeeze(x, a), a): x."""

    name: ClassVar[str] = "squeeze_pair"
    patterns = (
        Op(
            "Squeeze",
            Op("Unsqueeze", Var("x"), name="first", exact_arity=False),
            name="second",
            exact_arity=False,
        ),
        Op(
            "Unsqueeze",
            Op("Squeeze", Var("x"), name="first", exact_arity=False),
            name="second",
            exact_arity=False,
        ),
    )

    def check(self, graph: gs.Graph, m: Match) -> MatchResult:
        first, second = m.nodes["first"], m.nodes["second"]
        # the shared rank: Unsqueeze's output / Squeeze's input
        big = first.outputs[0] if first.op == "Unsqueeze" else m.tensors["x"]
        r = rank(big)
        a1, a2 = _axes(first, r), _axes(second, r)
        if a1 is None or a2 is None:
            return MatchResult.fail("axes not constant (or negative with unknown rank)")
        if a1 != a2:
            return MatchResult.fail(f"axes differ ({a1} vs {a2})")
        return _bypass_ok(graph, m, m.tensors["x"])

    def rewrite(self, graph: gs.Graph, m: Match) -> None:
        _drop(graph, m, m.tensors["x"])


class FuseLayout(FusionPass):
    """Merge or cancel Transpose chains, Reshape/Flatten chains and Squeeze/Unsqueeze pairs."""

    name: ClassVar[str] = "fuse-layout"
    summary: ClassVar[str] = "Transpose/Reshape/Squeeze chains merged or cancelled"

    def rules(self) -> list[Rule]:
        return [
            TransposeTranspose(),
            TransposeChain(),
            ReshapeChain(),
            TransposeReshape(),
            ReshapeNoop(),
            SqueezePair(),
        ]
