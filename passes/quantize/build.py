"""Building quantized models from a plan: :class:`Builder` (a fresh import of the prepared float
model per build, Q/DQ for the enabled sites, dynamic int8 for the MatMuls asked for), and the
preparation steps every build shares (aliased initializers read directly, unique node names)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from onnxopt.graph import node_names_unique, to_graph, to_model
from onnxopt.weights import weight_bytes

from .bias_correction import apply_shifts
from .bodies import scope_graphs, scoped
from .dynamic import rewrite_dynamic
from .placement import Plan, make_plan
from .qdq import Inserter, QParams, WeightQ, activation_params

#: the largest model (weight bytes) whose weights :class:`Builder` keeps rounded between builds
#: (their int8 copy: a quarter of that; BERT-base, 440 MB, rounds them in 2 s a build)
ROUNDED_MAX_BYTES = 1 << 30


class Builder:
    """Builds the quantized model for a set of enabled sites, on a fresh import of ``base``
    each time (the fallback builds many); ``inserter`` is the last build's, for the report.

    Args:
        base: the prepared float model (named nodes, smoothed).
        like: the model whose model-level fields the output keeps.
        ranges: calibrated range per tensor.
        plan_kw: keyword arguments of :func:`.placement.make_plan`.
    """

    def __init__(
        self,
        base: onnx.ModelProto,
        like: onnx.ModelProto,
        ranges: dict[str, tuple[float, float]],
        plan_kw: dict[str, Any],
        *,
        activations: str,
        reduce_range: bool,
        per_axis_ok: bool,
    ) -> None:
        self.base, self.like, self.ranges, self.plan_kw = base, like, ranges, plan_kw
        self.activations = activations
        self.reduce_range = reduce_range
        self.per_axis_ok = per_axis_ok
        self.inserter: Inserter | None = None
        #: weights quantized beforehand (learned rounding), by node name
        self.weights: dict[str, WeightQ] = {}
        #: bias correction: each site's output shift, removed from its bias while it is int8
        self.shifts: dict[str, np.ndarray] = {}
        #: error feedback's input rows drawn in the calibration's pass (``.adaround.RowSampler``)
        self.rows: Any = None
        #: MatMul/Gemm sites that go dynamic int8 whenever they are int8 (wide layers:
        #: :func:`.static._wide_linear`)
        self.always_dynamic: set[str] = set()
        #: weights rounded to nearest by the first build that quantized them, reused by the
        #: next builds (:class:`.qdq.Inserter`); not kept for models above
        #: :data:`ROUNDED_MAX_BYTES`, whose int8 copy would add a quarter of their weights
        self.rounded: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = (
            {} if weight_bytes(base) <= ROUNDED_MAX_BYTES else None
        )

    def __call__(
        self, enabled: set[str], dynamic: set[str] | frozenset = frozenset()
    ) -> onnx.ModelProto:
        """The model with ``enabled`` sites in static int8 and ``dynamic`` MatMuls in dynamic
        int8 (a site in both is dynamic). Sites in If/Loop/Scan bodies (keys
        ``<scope>::<node>``) are planned and quantized in their body (static only)."""
        dynamic = set(dynamic) | (self.always_dynamic & set(enabled))
        g = to_graph(self.base)
        scopes = scope_graphs(g)
        by_scope = scoped(set(enabled) - set(dynamic))
        static = by_scope.pop("", set())
        if self.shifts:
            apply_shifts(g, {k: v for k, v in self.shifts.items() if k in static})
        plan = make_plan(g, static, **self.plan_kw)
        params = group_params(plan, self.ranges, self.activations)
        self.inserter = Inserter(
            g,
            plan,
            params,
            reduce_range=self.reduce_range,
            per_axis_ok=self.per_axis_ok,
            weights=self.weights,
            rounded=self.rounded,
        )
        self.inserter.apply()
        for scope, body in scopes:
            if scope and by_scope.get(scope):
                self._body(scope, body, by_scope[scope])
        if dynamic:
            for node in list(g.nodes):
                if node.name in dynamic and node.op in ("MatMul", "Gemm"):
                    rewrite_dynamic(
                        g, node, self.per_axis_ok, self.reduce_range, self.weights.get(node.name)
                    )
            g.cleanup()
        return to_model(g, like=self.like)

    def _body(self, scope: str, body: Any, names: set[str]) -> None:
        """Q/DQ for the ``names`` sites of one body; its counts and notes join the main
        graph's inserter's."""
        plan = make_plan(body, names, **self.plan_kw)
        params = group_params(plan, self.ranges, self.activations)
        ins = Inserter(
            body, plan, params, reduce_range=self.reduce_range, per_axis_ok=self.per_axis_ok
        )
        ins.apply()
        for k, v in ins.counts.items():
            self.inserter.counts[k] = self.inserter.counts.get(k, 0) + v
        self.inserter.notes += [f"in {scope}: {n}" for n in ins.notes]


def resolve_const_identities(model: onnx.ModelProto, *, in_place: bool) -> onnx.ModelProto:
    """Read initializers directly where ``Identity(initializer)`` aliases them (exact).

    The TorchScript exporter deduplicates equal weights (all-zero biases, LayerNorm γ = 1) into
    Identity nodes; seen through them, a bias Add looks like an activation Add and a MatMul
    weight like an activation. Identities whose output is a graph output, or that a subgraph
    might read, stay.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return model
    outs = {o.name for o in g.output}
    alias = {
        n.output[0]: n.input[0]
        for n in g.node
        if n.op_type == "Identity" and n.input and n.input[0] in inits and n.output[0] not in outs
    }
    if not alias:
        return model
    if not in_place:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        model, g = out, out.graph
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in alias:
                n.input[i] = alias[x]
    del g.node[:]
    g.node.extend(keep)
    vi = [v for v in g.value_info if v.name not in alias]
    del g.value_info[:]
    g.value_info.extend(vi)
    return model


def named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names (sites are keyed by node name)."""
    g = to_graph(model)
    node_names_unique(g)
    names = {n.name for n in g.nodes}
    if len(names) == len(model.graph.node) and all(
        n.name == m.name for n, m in zip(g.nodes, model.graph.node, strict=False)
    ):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for p, n in zip(out.graph.node, g.nodes, strict=False):
        p.name = n.name
    return out


def dynamic_batch(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def group_params(
    plan: Plan, ranges: dict[str, tuple[float, float]], activations: str
) -> dict[int, QParams]:
    """Per group: the union of its members' ranges -> QParams; drop tensors without stats."""
    out: dict[int, QParams] = {}
    for gid, members in plan.members().items():
        rs = [ranges[m] for m in members if m in ranges]
        if not rs:
            for m in members:
                plan.group.pop(m, None)
            continue
        lo, hi = min(r[0] for r in rs), max(r[1] for r in rs)
        out[gid] = activation_params(lo, hi, activations)
    return out


def describe_params(p: QParams) -> str:
    return f"scale={p.scale:.6g} zp={p.zero_point} {np.dtype(p.dtype).name}"
