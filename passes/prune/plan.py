"""Planning a prune: the analysed graph, the importance scores and the kept units per group
(steps 1-3 of :mod:`.prune`), plus the per-group and per-layer tables of the report.

:func:`make_plan` is what ``onnxopt prune --dry-run`` shows and what the pass then slices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt.contract import PassError
from onnxopt.data import Feeds
from onnxopt.graph import node_names_unique, to_graph, to_model
from onnxopt.model import infer_shapes_light, with_inferred_shapes

from .config import PruneConfig
from .groups import Analysis, analyze
from .importance import group_scores
from .reconstruct import run_with_outputs
from .targets import MacModel, auto_round_to, select

logger = logging.getLogger(__name__)


def _shapes_through_group_norms(inferred: onnx.ModelProto) -> None:
    """Infer shapes past GroupNormalization in place: onnx has no shape inference for it (a
    function without an inference rule), so nothing after one would have a shape. It keeps its
    input's shape and type, so the inference reads it as an Identity."""
    norms = [
        (i, onnx.NodeProto())
        for i, n in enumerate(inferred.graph.node)
        if n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx")
    ]
    if not norms:
        return
    nodes = inferred.graph.node
    for i, saved in norms:
        saved.CopyFrom(nodes[i])
        nodes[i].CopyFrom(onnx.helper.make_node("Identity", saved.input[:1], saved.output[:1]))
    try:
        shapes = infer_shapes_light(inferred)
        del inferred.graph.value_info[:]
        inferred.graph.value_info.extend(shapes.graph.value_info)
    except Exception:
        pass
    finally:
        for i, saved in norms:
            nodes[i].CopyFrom(saved)


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, gs.Graph]:
    """(reference model with unique node names, gs graph with inferred shapes)."""
    try:
        inferred = with_inferred_shapes(model)  # inference on a weight-free copy
        _shapes_through_group_norms(inferred)
    except Exception:
        inferred = model
    graph = to_graph(inferred)
    node_names_unique(graph)
    base = to_model(graph.copy(), like=model)
    return base, graph


def activation_norms(
    base: onnx.ModelProto, analysis: Analysis, feeds: Feeds
) -> dict[str, np.ndarray]:
    """‖X_e‖₂ per channel-axis entry of every consumer's input (Wanda statistics)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    wanted: dict[str, tuple[str, int]] = {}
    for g in analysis.groups.values():
        for m in g.members:
            if m.kind == "in" and g.prunable:
                node = nodes[m.node]
                axis = 1 if node.op in ("Conv", "ConvTranspose", "Gemm") else -1
                wanted[m.node] = (node.inputs[0].name, axis)
    sums: dict[str, np.ndarray] = {}
    names = sorted({t for t, _ in wanted.values()})
    for vals in run_with_outputs(base, feeds, names):
        for node, (t, axis) in wanted.items():
            x = np.moveaxis(vals[t].astype(np.float64), axis, 0)
            s = (x.reshape(x.shape[0], -1) ** 2).sum(1)
            sums[node] = sums.get(node, 0) + s
    return {k: np.sqrt(v) for k, v in sums.items()}


def group_table(analysis: Analysis, scores: dict, kept: dict) -> list[dict[str, Any]]:
    rows = []
    for gid, g in sorted(analysis.groups.items()):
        k = kept.get(gid)
        s = scores.get(gid)
        kept_imp = (
            float(s[k].sum() / max(s.sum(), 1e-30)) if s is not None and k is not None else 1.0
        )
        rows.append(
            {
                "group": gid,
                "producers": g.producers,
                "block": g.block,
                "channels_before": g.size,
                "channels_after": (len(k) * g.block) if k is not None else g.size,
                "importance_kept": round(kept_imp, 4),
                "members": sorted({m.node for m in g.members}),
                "prunable": g.prunable,
                "reason": "; ".join(g.closed),
            }
        )
    return rows


def layer_table(
    base: onnx.ModelProto, pruned: onnx.ModelProto, macs: MacModel, kept: dict
) -> list[dict[str, Any]]:
    def params(model: onnx.ModelProto) -> dict[str, int]:
        inits = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
        return {n.name: sum(inits.get(i, 0) for i in n.input) for n in model.graph.node}

    pb, pa = params(base), params(pruned)
    est = macs.node_macs(kept)
    return [
        {
            "node": name,
            "params_before": pb.get(name, 0),
            "params_after": pa.get(name, 0),
            "macs_before": int(b),
            "macs_after": int(a),
        }
        for name, (b, a) in est.items()
    ]


@dataclass
class Plan:
    """What would be pruned: the analysis, scores, kept units per group and the MAC model."""

    base: onnx.ModelProto
    graph: gs.Graph
    analysis: Analysis
    scores: dict
    kept: dict
    macs: MacModel
    method: str
    sites: list[str]
    notes: list[str] = field(default_factory=list)


def learning_feeds(model: onnx.ModelProto, feeds: Feeds | None, max_samples: int) -> Feeds | None:
    """At most ``max_samples`` samples, batched by 64 when every input has a dynamic batch."""
    if feeds is None or len(feeds) == 0:
        return feeds
    from onnxopt.data import input_specs

    n, runs = 0, 0
    for run in feeds.runs:
        if n >= max_samples:
            break
        first = next(iter(run.values()))
        n += first.shape[0] if first.ndim else 1
        runs += 1
    out = feeds.subset(runs)
    dynamic = all(s.shape and not isinstance(s.shape[0], int) for s in input_specs(model))
    if dynamic and len(out) > 1:
        try:
            out = out.batched(64)
        except ValueError:  # runs of unequal shapes (e.g. sequence lengths): keep them apart
            pass
    return out


def round_to(config: PruneConfig) -> int:
    """The width step: ``config.round_to``, or this CPU's channel block when ``"auto"``."""
    return auto_round_to() if config.round_to == "auto" else int(config.round_to)


def real_data(feeds: Feeds | None) -> bool:
    """Whether ``feeds`` hold real (not synthesized) samples to learn from."""
    return feeds is not None and len(feeds) > 0 and not feeds.synthesized


def make_plan(
    model: onnx.ModelProto,
    config: PruneConfig,
    feeds: Feeds | None,
    allow: Callable[[str], bool] | None = None,
) -> Plan:
    """Analyse ``model`` and choose the kept channels for ``config``; ``allow`` is the
    bisection filter on the sites ``group:<first producer>``."""
    real = real_data(feeds)
    notes: list[str] = []
    base, graph = prepare(model)
    analysis = analyze(graph, list(config.keep))
    notes += analysis.notes
    for g in analysis.groups.values():
        if g.prunable and allow is not None and not allow(f"group:{g.producers[0]}"):
            g.closed.append("excluded by bisection")
    sites = [f"group:{g.producers[0]}" for g in analysis.groups.values() if g.prunable]
    method = config.importance or ("activation" if real else "l2")
    acts = None
    if sites and method == "activation":
        if not real:
            raise PassError("prune: importance 'activation' needs real data (--data)")
        acts = activation_norms(base, analysis, feeds)
    scores, snotes = group_scores(analysis, method, acts) if sites else ({}, [])
    notes += snotes
    step = round_to(config)
    if config.round_to == "auto" and sites:
        notes.append(
            f"prune: groups at least {step} wide keep multiples of "
            f"{step} (auto: onnxruntime's channel block on this CPU; "
            f"--round-to 1 turns it off)"
        )
    kept, macs = select(
        analysis,
        scores,
        ratio=config.ratio,
        target_flops=config.target_flops,
        global_rank=config.global_rank,
        max_ratio=config.max_ratio,
        round_to=step,
    )
    kept = {g: k for g, k in kept.items() if len(k) < analysis.groups[g].units}
    tf = config.target_flops
    if tf is not None and sites and macs.estimate(kept) > tf * macs.total * (1 + 1e-9):
        notes.append(
            f"prune: target {tf:.0%} of the MACs not reached: the prunable groups "
            f"allow at least {macs.estimate(kept) / max(macs.total, 1):.1%} "
            f"(max_ratio {config.max_ratio}, round_to {step}, closed groups)"
        )
    return Plan(base, graph, analysis, scores, kept, macs, method, sites, notes)
