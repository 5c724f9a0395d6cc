"""Ensemble merging: N models become one verified ONNX graph that one session runs.

``merge(models, mode, **options) -> (ModelProto, MergeReport)`` (options: :class:`MergeConfig`):

1. harmonize (:mod:`.harmonize`): one opset (version converter), one IR version, ``label/``
   prefixes, shared inputs by name or input map, shape and dtype checks;
2. deduplicate across members (:mod:`.cse`): identical initializers and identical subgraphs on
   the same inputs are computed once;
3. combine (:mod:`.modes`): ``average`` / ``weighted`` / ``vote`` / ``max``, ``serial``
   (``io_map``, :mod:`.serial`), ``stack`` (Gemm meta-learner fitted with numpy, :mod:`.fit`),
   ``cascade`` (ONNX ``If``, :mod:`.cascade`; the gate decides for the whole batch: the cheap
   answer only when every sample is confident);
4. check (the engine's :func:`~onnxopt.pipeline.structural_check`) and verify (:mod:`.verify`):
   the merged graph's outputs must equal, within the Exact float tolerance, the numpy
   combination of the members run separately in onnxruntime; fitted modes are fitted on one
   split of the labeled data and report held-out accuracy of each member and of the ensemble.

Ensembles change the model's function, so merging is not a pass of the pipeline; the family's
``PASSES`` is empty and the entry point is :func:`merge` (``onnxopt merge``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import ModelError, OptionError, first_line
from onnxopt.model import structural_check
from onnxopt.passes.ensemble.cascade import cascade_head
from onnxopt.passes.ensemble.config import MergeConfig
from onnxopt.passes.ensemble.context import MergeContext, MergeReport, Reference
from onnxopt.passes.ensemble.cse import CseStats, cse, resolve
from onnxopt.passes.ensemble.fit import fit_logistic, fit_ridge, fit_weights
from onnxopt.passes.ensemble.harmonize import (
    Harmonized,
    Member,
    check_compatible,
    convert_opsets,
    load_members,
    merge_functions,
    plan_inputs,
    prefixed_graph,
    value_info_like,
)
from onnxopt.passes.ensemble.member_outputs import (
    choose,
    label_nodes,
    label_output,
    merged_classes,
    parse_member_outputs,
)
from onnxopt.passes.ensemble.modes import (
    PARALLEL_MODES,
    Head,
    build_parallel,
    build_stack,
    np_features,
    np_parallel,
    np_stack,
    np_transform,
)
from onnxopt.passes.ensemble.serial import plan_serial, serial_outputs
from onnxopt.passes.ensemble.verify import live, verify
from onnxopt.runner import Runner, Runs
from onnxopt.summary import ModelSummary

logger = logging.getLogger(__name__)

#: the numpy combination of one run's member outputs (first output of each member)
Combine = Callable[[list[np.ndarray]], dict[str, np.ndarray]]
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def merge(
    models: list[Any],
    mode: str | None = None,
    *,
    config: MergeConfig | None = None,
    runner: Runner | None = None,
    **options: Any,
) -> tuple[onnx.ModelProto, MergeReport]:
    """Merge ``models`` into one ONNX graph and verify it.

    Args:
        models: paths, bytes or ModelProtos (two or more).
        mode: one of ``average weighted vote max serial stack cascade`` (default average).
        config: the options as a :class:`MergeConfig` (instead of ``mode`` and ``options``).
        runner: onnxruntime sessions to reuse (default: a new :class:`~onnxopt.verify.Runner`).
        **options: :class:`MergeConfig` fields (``on``, ``weights``, ``fit_data``, ``data``,
            ``io_map``, ``input_map``, ``meta``, ``threshold``, ``target_accuracy``, ...).

    Returns:
        The merged model and a :class:`MergeReport`.

    Raises:
        OptionError: bad mode or options; ModelError / DataError: members or data that do not
            fit, or a merged graph that does not reproduce the members' combination.
    """
    t0 = time.perf_counter()
    cfg = _config(mode, config, options)
    report = MergeReport(mode=cfg.mode)
    h = _harmonize(cfg, models)
    report.notes += h.notes
    flat = _flat_graph(h)
    alias, stats = cse(flat, opset=h.opset) if cfg.cse else ({}, CseStats())
    report.cse = stats.to_dict()
    stub = helper.make_model(helper.make_graph([], "inputs", h.inputs, []))
    ctx = MergeContext(cfg, h.members, alias, runner or Runner(), stub, report)
    _choose_outputs(ctx)
    head = Head(h.opset, prefix=_head_prefix(h.members))
    if cfg.mode == "serial":
        outputs, reference = serial_outputs(ctx, head)
    else:
        outputs, reference = _combined_outputs(ctx, head, flat)
    model, inferred = _assemble(ctx, h, flat, head, outputs)
    _summarize(report, h, model, inferred)
    if cfg.verify:
        verify(ctx, model, reference)
    report.seconds = time.perf_counter() - t0
    return model, report


def _config(mode: str | None, config: MergeConfig | None, options: dict[str, Any]) -> MergeConfig:
    if config is None:
        return MergeConfig.from_options({"mode": mode or "average", **options})
    if options or (mode is not None and mode != config.mode):
        raise TypeError("merge: give the options either as a MergeConfig or as keywords")
    return config


# --------------------------------------------------------------------------------------------
# members into one flat graph, and the merged model around it


def _harmonize(cfg: MergeConfig, models: list[Any]) -> Harmonized:
    """Members at one opset and IR version, ordered and bound (serial), inputs decided."""
    members = load_members(models, cfg.labels)
    opset, ir, imports, notes = convert_opsets(members)
    functions = merge_functions(members)
    bound: dict[tuple[str, str], str] = {}
    if cfg.mode == "serial":
        members, bound, note = plan_serial(members, cfg.io_map)
        notes += note
    inputs, more = plan_inputs(members, cfg.input_map, bound, positional=cfg.mode != "serial")
    return Harmonized(members, opset, ir, imports, inputs, functions, notes + more)


def _flat_graph(h: Harmonized) -> onnx.GraphProto:
    """Every member's prefixed nodes and initializers in one graph (no outputs yet)."""
    flat = helper.make_graph([], "ensemble", h.inputs, [])
    for m in h.members:
        g = prefixed_graph(m)
        flat.node.extend(g.node)
        flat.initializer.extend(g.initializer)
        flat.sparse_initializer.extend(g.sparse_initializer)
    return flat


def _head_prefix(members: list[Member]) -> str:
    """The first of the head's name prefixes that no member label takes."""
    labels = {m.label for m in members}
    return next(p for p in ("ensemble/", "ensemble_head/", "onnxopt_head/") if p[:-1] not in labels)


def _assemble(
    ctx: MergeContext,
    h: Harmonized,
    flat: onnx.GraphProto,
    head: Head,
    outputs: list[onnx.ValueInfoProto],
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The merged model (the nodes ``outputs`` need), checked; returns it with value_info
    and its shape-inferred light copy."""
    report = ctx.report
    nodes, inits = live(
        [*flat.node, *head.nodes],
        [*flat.initializer, *head.initializers],
        [v.name for v in outputs],
    )
    if len(nodes) < len(flat.node) + len(head.nodes):
        report.notes.append(
            f"dropped {len(flat.node) + len(head.nodes) - len(nodes)} node(s) "
            "that no merged output needs (members' other outputs)"
        )
    graph = helper.make_graph(nodes, "ensemble", h.inputs, outputs, inits)
    graph.sparse_initializer.extend(flat.sparse_initializer)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in h.opset_imports.items()],
        ir_version=h.ir_version,
        producer_name="onnxopt",
        functions=h.functions,
    )
    labels = [m.label for m in h.members]
    model.doc_string = f"onnxopt ensemble ({ctx.config.mode}) of " + ", ".join(labels)
    helper.set_model_props(
        model,
        {
            "onnxopt.ensemble": json.dumps(
                {"mode": ctx.config.mode, "members": labels, **report.params}, default=float
            )
        },
    )
    try:
        inferred = structural_check(model)
    except ModelError as e:
        raise ModelError(f"merged model is invalid: {first_line(e.__cause__ or e)}") from e
    model.graph.value_info.extend(inferred.graph.value_info)
    return model, inferred


def _summarize(
    report: MergeReport, h: Harmonized, model: onnx.ModelProto, inferred: onnx.ModelProto
) -> None:
    report.opset, report.ir_version = h.opset, h.ir_version
    report.inputs = [v.name for v in h.inputs]
    report.outputs = [v.name for v in model.graph.output]
    s = ModelSummary.of(model, inferred)
    report.summary = {"nodes": s.nodes, "params": s.params, "macs": s.flops, "bytes": s.bytes}
    for m in h.members:
        ms = ModelSummary.of(m.model)
        report.members.append(
            {
                "label": m.label,
                "source": m.source,
                "opset": m.opset_from,
                "nodes": ms.nodes,
                "params": ms.params,
                "macs": ms.flops,
            }
        )


# --------------------------------------------------------------------------------------------
# parallel, stack and cascade


def _combined_outputs(
    ctx: MergeContext, head: Head, flat: onnx.GraphProto
) -> tuple[list[onnx.ValueInfoProto], Reference]:
    """The head combining each member's first output; returns the outputs and the reference."""
    cfg, members = ctx.config, ctx.members
    if cfg.mode == "cascade" and len(members) != 2:
        raise OptionError(
            f"--mode cascade takes two members (cheap, expensive), got {len(members)}"
        )
    firsts = _first_outputs(ctx)
    ref_vi = firsts[0][1]
    outs = [resolve(ctx.alias, m.outputs[name]) for m, (name, _) in zip(members, firsts)]
    out = cfg.output or firsts[0][0]
    if out in {v.name for v in flat.input}:
        out = "ensemble_output"
    fit_runs, y_fit = _fit_inputs(ctx)
    elem = ref_vi.type.tensor_type.elem_type
    if cfg.mode in PARALLEL_MODES:
        out_vis, combine = _parallel_head(
            ctx, head, outs, value_info_like(out, elem, ref_vi), fit_runs, y_fit
        )
    elif cfg.mode == "stack":
        out_vis, combine = _stack_head(
            ctx, head, outs, value_info_like(out, elem, ref_vi), fit_runs, y_fit
        )
    else:
        vi = value_info_like(out, elem, ref_vi)
        combine = cascade_head(ctx, head, flat, outs, vi, fit_runs, y_fit)
        out_vis = [vi]
    taps: list[tuple[Member, str, str]] = []
    if cfg.keep_member_outputs and cfg.mode != "cascade":
        for m, (name, _) in zip(members, firsts):
            final = m.outputs[name] + ":out"
            head.op("Identity", [resolve(ctx.alias, m.outputs[name])], out=final)
            out_vis.append(value_info_like(final, elem, ref_vi))
            taps.append((m, name, final))
    label = _label_output(ctx, head, out, out_vis[0])
    if label is not None:
        label_vi, recompute = label
        first = members[0].output_names
        lead = label_output(members[0])
        out_vis.insert(0 if lead and first.index(lead) < first.index(firsts[0][0]) else 1, label_vi)
        combine = _with_label(combine, out, label_vi.name, recompute)
    return out_vis, _reference(members, combine, taps)


def _with_label(combine: Combine, scores: str, label: str, recompute) -> Combine:  # noqa: ANN001
    """``combine`` plus the label recomputed from its scores (the numpy reference)."""

    def combined(ys: list[np.ndarray]) -> dict[str, np.ndarray]:
        r = combine(ys)
        r[label] = recompute(r[scores]).astype(np.int64)
        return r

    return combined


def _first_outputs(ctx: MergeContext) -> list[tuple[str, onnx.ValueInfoProto]]:
    """The output each member contributes (``Member.scores``), checked to combine."""
    members, firsts = ctx.members, []
    for m in members:
        firsts.append((m.scores, m.value_info(m.scores)))
    ref_vi = firsts[0][1]
    for m, (name, vi) in zip(members[1:], firsts[1:]):
        check_compatible(
            ref_vi, vi, f"output '{members[0].label}.{firsts[0][0]}' vs '{m.label}.{name}'"
        )
    if ref_vi.type.tensor_type.elem_type not in FLOAT_TYPES:
        raise OptionError(
            f"mode {ctx.config.mode} combines float scores; output '{firsts[0][0]}' is not float"
        )
    return firsts


def _choose_outputs(ctx: MergeContext) -> None:
    """Set each member's combined output (``--member-output`` or its class scores); note it
    when the member has more than one output."""
    named = parse_member_outputs(ctx.config.member_output, ctx.members)
    for m in ctx.members:
        m.scores, why = choose(m, named.get(m.label))
        if len(m.output_names) > 1:
            ctx.report.notes.append(
                f"member '{m.label}' has {len(m.output_names)} outputs; combining "
                f"'{m.scores}' ({why})"
            )


def _label_output(ctx: MergeContext, head: Head, scores: str, vi: onnx.ValueInfoProto):
    """When the members output labels, the merged model does too: recomputed from the
    combined scores. Returns (its value info, the reference function) or None."""
    names = [label_output(m) for m in ctx.members]
    if not any(names):
        return None
    dims = vi.type.tensor_type.shape.dim
    n_classes = dims[-1].dim_value if len(dims) and dims[-1].HasField("dim_value") else 0
    if not n_classes:
        return None
    classes = merged_classes(ctx.members, n_classes)
    out = next(n for n in names if n)
    if out in {ctx.config.output, scores}:
        out = "ensemble_label"
    nodes, inits = label_nodes(scores, classes, out)
    head.nodes += nodes
    head.initializers += inits
    label_vi = helper.make_tensor_value_info(
        out, onnx.TensorProto.INT64, [dims[0].dim_param or None]
    )
    if dims[0].HasField("dim_value"):
        label_vi = helper.make_tensor_value_info(out, onnx.TensorProto.INT64, [dims[0].dim_value])
    ctx.report.notes.append(
        f"output '{out}' recomputed from the combined scores (argmax over {n_classes} classes)"
    )
    return label_vi, (lambda y: classes[np.argmax(y, axis=-1)])


def _fit_inputs(ctx: MergeContext) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """Members' first outputs and labels on the fit split when the mode fits something (the
    rest of the data becomes the evaluation feeds); else loads ``data`` for evaluation."""
    cfg = ctx.config
    if cfg.needs_fit:
        return _fit_split(ctx, cfg.fit_source)
    if cfg.data is not None:
        ctx.eval_feeds = ctx.load_feeds(cfg.data, False, "--data")
    return None, None


def _fit_split(ctx: MergeContext, source: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Members' first outputs and labels on the fit split; the rest becomes the eval feeds."""
    feeds = ctx.load_feeds(source, True, "fit data")
    if len(feeds.runs) < 2:
        raise OptionError("fit data needs at least two runs (one to fit, one to evaluate)")
    fit_f, held = feeds.split(float(ctx.config.fit_fraction))
    fit_f = ctx.batched(fit_f)
    runs = ctx.member_runs(fit_f)
    ctx.eval_feeds = held
    ctx.report.accuracy_split = (
        f"fit on {fit_f.num_samples} samples, accuracy on {held.num_samples} held-out samples"
    )
    outs = [np.concatenate([r[m.scores] for r in rs]) for m, rs in zip(ctx.members, runs)]
    return outs, fit_f.stacked_labels()


def _parallel_head(
    ctx: MergeContext,
    head: Head,
    outs: list[str],
    vi: onnx.ValueInfoProto,
    fit_runs: list[np.ndarray] | None,
    y_fit: np.ndarray | None,
) -> tuple[list[onnx.ValueInfoProto], Combine]:
    """average / weighted / vote / max (weights given, or fitted on the fit split)."""
    cfg, params = ctx.config, ctx.report.params
    mode, on, out = cfg.mode, cfg.combine_on, vi.name
    weights = cfg.weights
    if mode == "weighted":
        if fit_runs is not None:
            weights = fit_weights(np_transform(fit_runs, on), y_fit, on)
        weights = [float(w) for w in weights]
        if len(weights) != len(ctx.members):
            raise OptionError(f"--weights has {len(weights)} values for {len(ctx.members)} members")
        params["weights"] = weights
    params["on"] = on
    names = build_parallel(head, outs, mode, on, out, weights)
    out_vis = [vi]
    if mode == "vote":
        out_vis.append(value_info_like(names[1], onnx.TensorProto.INT64, vi, drop_last=True))
    return out_vis, lambda ys: np_parallel(ys, mode, on, out, weights)


def _stack_head(
    ctx: MergeContext,
    head: Head,
    outs: list[str],
    vi: onnx.ValueInfoProto,
    fit_runs: list[np.ndarray],
    y_fit: np.ndarray,
) -> tuple[list[onnx.ValueInfoProto], Combine]:
    """A Gemm meta-learner (logistic or ridge) fitted on the members' fit-split outputs."""
    cfg, out = ctx.config, vi.name
    kind, on = cfg.meta, cfg.combine_on
    x = np_features(fit_runs, on)
    classes = int(fit_runs[0].shape[-1])
    if len(fit_runs[0].shape) != 2:
        raise OptionError("--mode stack needs [N, C] member outputs")
    if kind == "ridge":
        w, b = fit_ridge(x, y_fit, classes, float(cfg.ridge_alpha))
    else:
        w, b = fit_logistic(x, y_fit, classes, float(cfg.l2))
    ctx.report.params.update(on=on, meta=kind, features=int(x.shape[1]), classes=classes)
    build_stack(head, outs, on, out, w, b, kind)
    return [vi], lambda ys: np_stack(ys, on, out, w, b, kind)


def _reference(
    members: list[Member], combine: Combine, taps: list[tuple[Member, str, str]]
) -> Reference:
    """Per run: the combination of the members' first outputs, plus the tapped outputs."""

    def reference(member_runs: list[Runs], _feeds: Any) -> Runs:
        out_runs = []
        for i in range(len(member_runs[0])):
            ys = [rs[i][m.scores] for rs, m in zip(member_runs, members)]
            r = combine(ys)
            for m, name, final in taps:
                r[final] = member_runs[members.index(m)][i][name]
            out_runs.append(r)
        return out_runs

    return reference
