"""Structured channel pruning on the ONNX graph, with data-driven reconstruction.

Steps: (1) :mod:`.groups` finds the channel groups that must be pruned together, closing every
group it cannot prove safe; (2) :mod:`.importance` scores each group's units; (3)
:mod:`.targets` picks the kept units for ``ratio`` / ``target_flops``; (4) :mod:`.slicing` removes
them from every member; (5) :mod:`.reconstruct` refits the consumers by ridge least squares on
calibration data so each reproduces the original layer's outputs (no training).

Options (``ctx.options``): ``ratio`` (0.3), ``target_flops`` (fraction of the original MACs to
keep; overrides ratio), ``global`` (rank units across groups), ``importance`` (l1, l2, bn-scale,
activation), ``round_to`` ("auto": onnxruntime's CPU channel block, see
:func:`.targets.auto_round_to`; 1 turns rounding off), ``keep`` (node names), ``max_ratio``
(0.9), ``reconstruct`` (default: on with real data), ``alpha`` (ridge strength, 1e-3),
``max_rows`` (rows per fit).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.contract import Pass, PassContext, PassError, PassResult
from onnxopt.graph import node_names_unique, to_graph, to_model
from onnxopt.model import infer_shapes_light, with_inferred_shapes

from .groups import Analysis, analyze
from .importance import METHODS, group_scores
from .reconstruct import Reconstructor, run_with_outputs
from .slicing import apply_plan
from .targets import MacModel, auto_round_to, select

logger = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "ratio": None, "target_flops": None, "global": False, "importance": None, "round_to": "auto",
    "keep": (), "max_ratio": 0.9, "reconstruct": None, "alpha": 1e-3, "max_rows": 8192,
    "max_samples": 2048,
}


def options(raw: dict[str, Any]) -> dict[str, Any]:
    """Validated options with defaults; raises PassError with a one-line reason."""
    unknown = set(raw) - set(DEFAULTS)
    if unknown:
        raise PassError(f"prune: unknown option(s) {sorted(unknown)}")
    o = {**DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    if o["ratio"] is not None and not 0 <= float(o["ratio"]) < 1:
        raise PassError(f"prune: ratio must be in [0, 1), got {o['ratio']}")
    if o["target_flops"] is not None and not 0 < float(o["target_flops"]) <= 1:
        raise PassError(f"prune: target_flops must be in (0, 1], got {o['target_flops']}")
    if not 0 < float(o["max_ratio"]) < 1:
        raise PassError(f"prune: max_ratio must be in (0, 1), got {o['max_ratio']}")
    if o["importance"] is not None and o["importance"] not in METHODS:
        raise PassError(f"prune: importance must be one of {', '.join(METHODS)}")
    o["round_to_auto"] = o["round_to"] == "auto"
    try:
        o["round_to"] = auto_round_to() if o["round_to_auto"] else int(o["round_to"])
    except (TypeError, ValueError):
        o["round_to"] = 0
    if o["round_to"] < 1:
        raise PassError(f"prune: round_to must be 'auto' or an integer >= 1, got "
                        f"{raw.get('round_to')!r}")
    o["keep"] = [o["keep"]] if isinstance(o["keep"], str) else list(o["keep"])
    return o


def _shapes_through_group_norms(inferred: onnx.ModelProto) -> None:
    """Infer shapes past GroupNormalization in place: onnx has no shape inference for it (a
    function without an inference rule), so nothing after one would have a shape. It keeps its
    input's shape and type, so the inference reads it as an Identity."""
    norms = [(i, onnx.NodeProto()) for i, n in enumerate(inferred.graph.node)
             if n.op_type == "GroupNormalization" and n.domain in ("", "ai.onnx")]
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
    except Exception:  # noqa: BLE001 - best-effort: the shapes inferred before stay
        pass
    finally:
        for i, saved in norms:
            nodes[i].CopyFrom(saved)


def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Any]:
    """(reference model with unique node names, gs graph with inferred shapes)."""
    try:
        inferred = with_inferred_shapes(model)  # inference on a weight-free copy
        _shapes_through_group_norms(inferred)
    except Exception:  # noqa: BLE001 - shape inference is best-effort here
        inferred = model
    graph = to_graph(inferred)
    node_names_unique(graph)
    base = to_model(graph.copy(), like=model)
    return base, graph


def activation_norms(base: onnx.ModelProto, analysis: Analysis, feeds) -> dict[str, np.ndarray]:
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
        kept_imp = (float(s[k].sum() / max(s.sum(), 1e-30)) if s is not None and k is not None
                    else 1.0)
        rows.append({
            "group": gid, "producers": g.producers, "block": g.block,
            "channels_before": g.size,
            "channels_after": (len(k) * g.block) if k is not None else g.size,
            "importance_kept": round(kept_imp, 4),
            "members": sorted({m.node for m in g.members}),
            "prunable": g.prunable, "reason": "; ".join(g.closed),
        })
    return rows


def layer_table(base: onnx.ModelProto, pruned: onnx.ModelProto, macs: MacModel,
                kept: dict) -> list[dict[str, Any]]:
    def params(model: onnx.ModelProto) -> dict[str, int]:
        inits = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
        return {n.name: sum(inits.get(i, 0) for i in n.input) for n in model.graph.node}

    pb, pa = params(base), params(pruned)
    est = macs.node_macs(kept)
    return [{"node": name, "params_before": pb.get(name, 0), "params_after": pa.get(name, 0),
             "macs_before": int(b), "macs_after": int(a)} for name, (b, a) in est.items()]


@dataclass
class Plan:
    """What would be pruned: the analysis, scores, kept units per group and the MAC model."""

    base: onnx.ModelProto
    graph: Any
    analysis: Analysis
    scores: dict
    kept: dict
    macs: MacModel
    method: str
    sites: list[str]
    notes: list[str] = field(default_factory=list)


def learning_feeds(model: onnx.ModelProto, feeds: Any, max_samples: int) -> Any:
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


def make_plan(model: onnx.ModelProto, o: dict[str, Any], feeds: Any,
              allow: Any = None) -> Plan:
    """Analyse ``model`` and choose the kept channels for validated options ``o``."""
    real = feeds is not None and len(feeds) > 0 and not feeds.synthesized
    notes: list[str] = []
    base, graph = prepare(model)
    analysis = analyze(graph, o["keep"])
    notes += analysis.notes
    for g in analysis.groups.values():
        if g.prunable and allow is not None and not allow(f"group:{g.producers[0]}"):
            g.closed.append("excluded by bisection")
    sites = [f"group:{g.producers[0]}" for g in analysis.groups.values() if g.prunable]
    method = o["importance"] or ("activation" if real else "l2")
    acts = None
    if sites and method == "activation":
        if not real:
            raise PassError("prune: importance 'activation' needs real data (--data)")
        acts = activation_norms(base, analysis, feeds)
    scores, snotes = group_scores(analysis, method, acts) if sites else ({}, [])
    notes += snotes
    ratio = o["ratio"] if o["ratio"] is not None else 0.3
    if o.get("round_to_auto") and sites:
        notes.append(f"prune: groups at least {o['round_to']} wide keep multiples of "
                     f"{o['round_to']} (auto: onnxruntime's channel block on this CPU; "
                     f"--round-to 1 turns it off)")
    kept, macs = select(analysis, scores, ratio=ratio, target_flops=o["target_flops"],
                        global_rank=bool(o["global"]), max_ratio=float(o["max_ratio"]),
                        round_to=int(o["round_to"]))
    kept = {g: k for g, k in kept.items() if len(k) < analysis.groups[g].units}
    tf = o["target_flops"]
    if tf is not None and sites and macs.estimate(kept) > tf * macs.total * (1 + 1e-9):
        notes.append(f"prune: target {tf:.0%} of the MACs not reached: the prunable groups "
                     f"allow at least {macs.estimate(kept) / max(macs.total, 1):.1%} "
                     f"(max_ratio {o['max_ratio']}, round_to {o['round_to']}, closed groups)")
    return Plan(base, graph, analysis, scores, kept, macs, method, sites, notes)


class Prune(Pass):
    """Remove whole channels (and attention heads) from coupled layers; refit on data."""

    name = "prune"
    exact = False
    summary = "structured channel pruning with ridge reconstruction"
    tags = ("prune",)
    needs_model = True
    needs_data = True

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        t0 = time.perf_counter()
        o = options(ctx.options)
        feeds = learning_feeds(model, ctx.feeds, int(o["max_samples"]))
        real = feeds is not None and len(feeds) > 0 and not feeds.synthesized
        p = make_plan(model, o, feeds, allow=ctx.allow)
        notes, analysis, kept, macs, method = p.notes, p.analysis, p.kept, p.macs, p.method
        base, graph, scores = p.base, p.graph, p.scores
        if not p.sites:
            return PassResult.unchanged("prune: no prunable channel group", *notes)
        if not kept:
            return PassResult.unchanged("prune: the target removes no channel", *notes)
        kept_index = apply_plan(graph, analysis, kept)
        pruned = to_model(graph, like=model)
        recon = o["reconstruct"]
        if recon is None:
            recon = real
        elif recon and not real:
            notes.append("prune: reconstruction skipped: the feeds are synthesized, and a refit "
                         "on made-up inputs would fit noise; pass --data")
            recon = False
        fits = 0
        if recon:
            pruned, rnotes, fits = Reconstructor(
                base, pruned, feeds, kept_index, alpha=float(o["alpha"]),
                max_rows=int(o["max_rows"])).run()
            notes += rnotes
        elif not real:
            notes.append("prune: no real data; importance by weight norm, no reconstruction")
        est_before, est_after = macs.total, macs.estimate(kept)
        notes.insert(0, f"prune: {len(kept)} group(s) pruned ({method} importance), est. MACs "
                        f"{est_before:,.0f} -> {est_after:,.0f} "
                        f"({est_after / max(est_before, 1):.1%})")
        details = {
            "importance": method, "reconstructed": bool(recon), "refit_layers": fits,
            "macs_estimate": [est_before, est_after],
            "groups": group_table(analysis, scores, kept),
            "layers": layer_table(base, pruned, macs, kept),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        return PassResult(changed=True, rewrites=len(kept), notes=notes,
                          sites=[f"group:{analysis.groups[g].producers[0]}" for g in kept],
                          details=details, model=pruned)


PASSES = [Prune]

__all__ = ["PASSES", "Plan", "Prune", "analyze", "make_plan", "options", "prepare"]
