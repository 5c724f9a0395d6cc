"""fold-constants: replace subgraphs whose inputs are all constant by their computed values.

A node is *foldable* when it is a standard-domain op, deterministic (no Random*, Multinomial,
Bernoulli, Dropout), has no subgraph attribute, and every input is an initializer, a Constant
output or the output of another foldable node. The *frontier* is every foldable output read by
a node that is not foldable, by a subgraph, or by the graph's outputs; only the frontier is
materialised, and all of it is computed in one onnxruntime session (see ``_evaluate``).

Size cap: a frontier value of ``b`` bytes is kept only when
``b <= max(max_bytes, growth * c)``, with ``c`` the bytes of the constants its cone reads
(default ``max_bytes = 1 MiB``, ``growth = 2``), so a fold never makes the model much larger
(an ``Expand`` of a scalar to a large shape stays an ``Expand``).
``Constant`` nodes are lifted into initializers first (see ``lift``; option
``lift_constants=False`` keeps them as nodes). ``CastLike(c, y)`` with ``c`` constant and
``dtype(y)`` known is ``Cast(c, to=dtype(y))``: it reads only ``y``'s type, so it folds too
(torch's dynamo exporter without its clean-up writes every Conv bias as
``Expand(CastLike(c, input), shape)``).
DequantizeLinear is not folded by default: folding it would turn int8 weights back into floats
and undo a QDQ model (option ``fold_dequantize=True`` allows it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxopt.contract import Pass, PassConfig, PassContext, PassResult
from onnxopt.errors import OptionError
from onnxopt.graph import has_subgraph, is_graph_input, is_graph_output, node_names_unique
from onnxopt.passes.cleanup._evaluate import evaluate
from onnxopt.passes.cleanup._util import (
    NONDETERMINISTIC,
    STANDARD_DOMAINS,
    TypeShape,
    infer_facts,
    materialize,
)
from onnxopt.passes.cleanup.lift import lift_constants

logger = logging.getLogger(__name__)

MiB = 1 << 20


def _subgraph_reads(graph: gs.Graph) -> set[int]:
    """ids of outer tensors read inside subgraphs."""
    out: set[int] = set()

    def walk(sub: gs.Graph) -> None:
        for n in sub.nodes:
            out.update(id(t) for t in n.inputs)
            for a in n.attrs.values():
                if isinstance(a, gs.Graph):
                    walk(a)

    for node in graph.nodes:
        for a in node.attrs.values():
            if isinstance(a, gs.Graph):
                walk(a)
    return out


class FoldPlan:
    """Which nodes are foldable and which of their outputs must be materialised."""

    def __init__(self, graph: gs.Graph, skip_ops: Iterable[str], roots: set[int] | None = None):
        self.graph = graph
        self.foldable: list[gs.Node] = []
        self.notes: list[str] = []
        skip = set(skip_ops)
        const_ids: set[int] = set()
        for t in graph.tensors().values():
            if isinstance(t, gs.Constant) and not is_graph_input(graph, t):
                const_ids.add(id(t))
        producer_of: dict[int, gs.Node] = {}
        reach: set[int] = set(roots or ())
        self.touched: set[int] = set()
        for node in graph.nodes:
            if node.domain not in STANDARD_DOMAINS:
                continue
            ins = [t for t in node.inputs if t.name]
            if node.op == "Constant":
                ok = True
            elif node.op in NONDETERMINISTIC or node.op in skip or has_subgraph(node):
                ok = False
            else:
                ok = bool(ins) and all(id(t) in const_ids for t in ins)
            if not ok:
                continue
            self.foldable.append(node)
            if roots is None or any(id(t) in reach for t in ins):
                if node.op != "Constant":
                    self.touched.add(id(node))
                    reach.update(id(t) for t in node.outputs)
            for t in node.outputs:
                const_ids.add(id(t))
                producer_of[id(t)] = node
        self.producer_of = producer_of
        fold_ids = {id(n) for n in self.foldable}
        sub_reads = _subgraph_reads(graph)
        self.frontier: list[gs.Tensor] = []
        for node in self.foldable:
            if node.op == "Constant" or id(node) not in self.touched:
                continue
            for t in node.outputs:
                if not t.name:
                    continue
                if (
                    is_graph_output(graph, t)
                    or id(t) in sub_reads
                    or any(id(c) not in fold_ids for c in t.outputs)
                ):
                    self.frontier.append(t)

    def cone(self, tensors: Iterable[gs.Tensor]) -> list[gs.Node]:
        """Foldable nodes needed to compute ``tensors``, in graph (topological) order."""
        need: set[int] = set()
        stack = [self.producer_of[id(t)] for t in tensors if id(t) in self.producer_of]
        while stack:
            n = stack.pop()
            if id(n) in need:
                continue
            need.add(id(n))
            stack.extend(self.producer_of[id(t)] for t in n.inputs if id(t) in self.producer_of)
        return [n for n in self.foldable if id(n) in need]

    def input_bytes(self, tensor: gs.Tensor) -> int:
        """Bytes of the constants (initializers, Constant values) the cone of ``tensor`` reads."""
        total = 0
        seen: set[int] = set()
        for n in self.cone([tensor]):
            if n.op == "Constant":
                v = n.attrs.get("value")
                if isinstance(v, gs.Constant):
                    total += int(np.asarray(v.values).nbytes)
                continue
            for t in n.inputs:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    total += int(t.values.nbytes) if hasattr(t.values, "nbytes") else 0
        return total


def cast_like_of_constants(graph: gs.Graph) -> int:
    """Turn ``CastLike(c, y)`` with ``c`` constant and ``y``'s dtype known into
    ``Cast(c, to=dtype(y))`` (the same values), so that it folds; returns how many."""
    import onnx

    n = 0
    for node in graph.nodes:
        if node.op != "CastLike" or node.domain not in STANDARD_DOMAINS or len(node.inputs) < 2:
            continue
        c, like = node.inputs[0], node.inputs[1]
        dtype = like.dtype if isinstance(like, gs.Variable | gs.Constant) else None
        if not isinstance(c, gs.Constant) or dtype is None:
            continue
        try:
            to = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        except (KeyError, TypeError):
            continue
        node.op, node.inputs = "Cast", [c]
        node.attrs = {**node.attrs, "to": int(to)}
        n += 1
    return n


def _estimate_bytes(ts: TypeShape | None) -> int | None:
    if ts is None or ts.dtype is None or ts.static_shape is None:
        return None
    return int(np.prod(ts.static_shape, dtype=np.int64)) * ts.dtype.itemsize


def fold(
    graph: gs.Graph,
    ctx: PassContext,
    *,
    max_bytes: int,
    growth: float,
    skip_ops: Iterable[str],
    roots: set[int] | None = None,
    keys: bool = True,
) -> tuple[list[str], list[str]]:
    """Fold what can be folded; returns (rewritten site keys, notes).

    Args:
        roots: when given, only fold nodes downstream of these tensor ids.
        keys: ask ``ctx.allow`` per frontier tensor (False when the caller already did).
    """
    plan = FoldPlan(graph, skip_ops, roots)
    notes = list(plan.notes)
    if not plan.frontier:
        return [], notes
    facts, _ = infer_facts(graph)
    wanted: list[gs.Tensor] = []
    limit_of: dict[str, int] = {}
    for t in plan.frontier:
        if keys and not ctx.allow(t.name):
            continue
        limit = max(max_bytes, int(growth * plan.input_bytes(t)))
        est = _estimate_bytes(facts.get(t.name))
        if est is not None and est > limit:
            notes.append(f"'{t.name}': not folded, {est} bytes would exceed the cap of {limit}")
            continue
        limit_of[t.name] = limit
        wanted.append(t)
    if not wanted:
        return [], notes
    values, eval_notes = evaluate(graph, plan.cone(wanted), wanted)
    notes.extend(eval_notes)
    done: list[str] = []
    for t in wanted:
        v = values.get(t.name)
        if v is None:
            continue
        if v.nbytes > limit_of[t.name]:
            notes.append(
                f"'{t.name}': not folded, {v.nbytes} bytes exceed the cap of {limit_of[t.name]}"
            )
            continue
        ts = facts.get(t.name)
        if ts is not None and ts.dtype is not None and ts.dtype != v.dtype:
            notes.append(
                f"'{t.name}': not folded, onnxruntime gave {v.dtype}, the graph says {ts.dtype}"
            )
            continue
        if v.dtype == object:
            notes.append(f"'{t.name}': not folded, string tensors are left alone")
            continue
        materialize(graph, t, v)
        done.append(t.name)
    if done:
        graph.cleanup(remove_unused_graph_inputs=False)
    return done, notes


@dataclass(frozen=True)
class FoldConfig(PassConfig):
    """Size caps of a fold: a folded value is written when it is at most ``max_bytes``, or at
    most ``growth`` times the bytes of the constants it replaces."""

    max_bytes: int = MiB
    growth: float = 2.0

    def __post_init__(self) -> None:
        if int(self.max_bytes) < 0:
            raise OptionError(f"max_bytes must be >= 0, not {self.max_bytes}")
        if float(self.growth) < 0:
            raise OptionError(f"growth must be >= 0, not {self.growth}")


@dataclass(frozen=True)
class FoldConstantsConfig(FoldConfig):
    """``fold_dequantize``: also fold DequantizeLinear of constants (off: a QDQ model keeps
    its int8 weights); ``lift_constants``: turn Constant nodes into initializers first."""

    fold_dequantize: bool = False
    lift_constants: bool = True


class FoldConstants(Pass):
    """Constant folding with a size cap, evaluated in one onnxruntime session."""

    name = "fold-constants"
    exact = True
    summary = "fold constant subgraphs (one onnxruntime session, size-capped)"
    tags = ("cleanup",)
    config_class = FoldConstantsConfig

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        node_names_unique(graph)
        graph.toposort()
        c = self.config
        skip = set() if c.fold_dequantize else {"DequantizeLinear"}
        lifted: list[str] = []
        notes: list[str] = []
        if c.lift_constants:
            lifted, notes = lift_constants(graph, ctx)
        cast_like_of_constants(graph)
        done, fold_notes = fold(
            graph, ctx, max_bytes=int(c.max_bytes), growth=float(c.growth), skip_ops=skip
        )
        notes.extend(fold_notes)
        sites = lifted + done
        return PassResult(changed=bool(sites), rewrites=len(sites), notes=notes, sites=sites)
