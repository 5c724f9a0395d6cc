"""Ensemble merging: N models become one verified ONNX graph that one session runs.

``merge(models, mode, **options) -> (ModelProto, MergeReport)``:

1. harmonize (:mod:`ensemble_harmonize`): one opset (version converter), one IR version,
   ``label/`` prefixes, shared inputs by name or input map, shape and dtype checks;
2. deduplicate across members (:mod:`ensemble_cse`): identical initializers and identical
   subgraphs on the same inputs are computed once;
3. combine (:mod:`ensemble_modes`): ``average`` / ``weighted`` / ``vote`` / ``max``,
   ``serial`` (``io_map``), ``stack`` (Gemm meta-learner fitted with numpy,
   :mod:`ensemble_fit`), ``cascade`` (ONNX ``If``, :mod:`ensemble_cascade`; the gate decides
   for the whole batch: the cheap answer only when every sample is confident);
   serial planning is in :mod:`ensemble_serial`, checks and verification in
   :mod:`ensemble_verify`;
4. verify: the merged graph's outputs must equal, within the Exact float tolerance, the numpy
   combination of the members run separately in onnxruntime; fitted modes are fitted on one
   split of the labeled data and report held-out accuracy of each member and of the ensemble.

Ensembles change the model's function, so merging is not a pass of the pipeline; ``PASSES``
is empty and the entry point is :func:`merge` (``onnxopt merge``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxopt.data import Feeds, load_feeds
from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.cascade import build_cascade, is_softmax_output
from onnxopt.passes.ensemble.cse import CseStats, cse, resolve
from onnxopt.passes.ensemble.fit import (
    choose_threshold,
    fit_logistic,
    fit_ridge,
    fit_weights,
)
from onnxopt.passes.ensemble.harmonize import (
    Member,
    check_compatible,
    convert_opsets,
    load_members,
    merge_functions,
    plan_inputs,
    prefixed_graph,
)
from onnxopt.passes.ensemble.modes import (
    ALL_MODES,
    ON_CHOICES,
    PARALLEL_MODES,
    Head,
    build_parallel,
    build_stack,
    np_confidence,
    np_features,
    np_parallel,
    np_stack,
    np_transform,
)
from onnxopt.passes.ensemble.serial import plan_serial
from onnxopt.passes.ensemble.verify import checked, live, verify
from onnxopt.summary import ModelSummary
from onnxopt.verify import Runner

logger = logging.getLogger(__name__)

PASSES: list = []
Runs = list[dict[str, np.ndarray]]


@dataclass
class MergeReport:
    """What ``merge`` did, for the CLI table and ``--json``."""

    mode: str
    members: list[dict[str, Any]] = field(default_factory=list)
    opset: int = 0
    ir_version: int = 0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    cse: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, int] = field(default_factory=dict)
    verified: bool | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    accuracy_split: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)


def merge(models: list[Any], mode: str = "average", **options: Any
          ) -> tuple[onnx.ModelProto, MergeReport]:
    """Merge ``models`` into one ONNX graph and verify it.

    Args:
        models: paths, bytes or ModelProtos (two or more).
        mode: one of ``average weighted vote max serial stack cascade``.
        **options: ``on`` ("outputs" | "probs"), ``weights`` (list), ``fit_data`` (labeled
            .npz / dict / Feeds for fitted modes), ``data`` (verification and evaluation feeds,
            also used for fitting when ``fit_data`` is absent), ``io_map`` (["a.out:b.in"]),
            ``input_map`` (["b.x:input"]), ``meta`` ("logistic" | "ridge"), ``threshold``,
            ``target_accuracy`` (percent, or a fraction <= 1), ``output`` (name of the combined
            output), ``labels`` (member labels), ``keep_member_outputs``, ``cse`` (default
            True), ``verify`` (default True), ``fit_fraction`` (0.5), ``batch``, ``shapes``,
            ``int_range``, ``runs``, ``ridge_alpha``, ``l2``.

    Returns:
        The merged model and a :class:`MergeReport`.

    Raises:
        OptionError: bad mode or options; ModelError / DataError: members or data that do not
            fit, or a merged graph that does not reproduce the members' combination.
    """
    t0 = time.perf_counter()
    o = _Options(mode, options)
    report = MergeReport(mode=mode)
    members = load_members(models, o.get("labels"))
    opset, ir, imports, notes = convert_opsets(members)
    report.notes += notes
    functions = merge_functions(members)
    bound: dict[tuple[str, str], str] = {}
    if mode == "serial":
        members, bound, note = plan_serial(members, o.get("io_map"))
        report.notes += note
    elif o.get("io_map"):
        raise OptionError("--io-map is for --mode serial")
    inputs, notes = plan_inputs(members, o.get("input_map"), bound, positional=mode != "serial")
    report.notes += notes
    flat = helper.make_graph([], "ensemble", inputs, [])
    for m in members:
        g = prefixed_graph(m)
        flat.node.extend(g.node)
        flat.initializer.extend(g.initializer)
        flat.sparse_initializer.extend(g.sparse_initializer)
    alias, stats = cse(flat, opset=opset) if o.get("cse", True) else ({}, CseStats())
    report.cse = stats.to_dict()
    runner = o.get("runner") or Runner()
    stub = helper.make_model(helper.make_graph([], "inputs", inputs, []))
    labels = {m.label for m in members}
    head = Head(opset, prefix=next(p for p in ("ensemble/", "ensemble_head/", "onnxopt_head/")
                                   if p[:-1] not in labels))
    ctx = _Ctx(o, members, alias, runner, stub, report)
    if mode == "serial":
        outputs, reference = _serial_outputs(ctx, head)
    else:
        outputs, reference = _combined_outputs(ctx, head, flat)
    nodes, inits = live([*flat.node, *head.nodes], [*flat.initializer, *head.initializers],
                         [v.name for v in outputs])
    if len(nodes) < len(flat.node) + len(head.nodes):
        report.notes.append(f"dropped {len(flat.node) + len(head.nodes) - len(nodes)} node(s) "
                            "that no merged output needs (members' other outputs)")
    graph = helper.make_graph(nodes, "ensemble", inputs, outputs, inits)
    graph.sparse_initializer.extend(flat.sparse_initializer)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports.items()],
        ir_version=ir, producer_name="onnxopt", functions=functions,
    )
    model.doc_string = f"onnxopt ensemble ({mode}) of " + ", ".join(m.label for m in members)
    helper.set_model_props(model, {"onnxopt.ensemble": json.dumps(
        {"mode": mode, "members": [m.label for m in members], **report.params}, default=float)})
    model = checked(model)
    report.opset, report.ir_version = opset, ir
    report.inputs = [v.name for v in inputs]
    report.outputs = [v.name for v in model.graph.output]
    s = ModelSummary.of(model)
    report.summary = {"nodes": s.nodes, "params": s.params, "macs": s.flops, "bytes": s.bytes}
    for m in members:
        ms = ModelSummary.of(m.model)
        report.members.append({"label": m.label, "source": m.source, "opset": m.opset_from,
                               "nodes": ms.nodes, "params": ms.params, "macs": ms.flops})
    if o.get("verify", True):
        verify(ctx, model, reference)
    report.seconds = time.perf_counter() - t0
    return model, report


# --------------------------------------------------------------------------------------------
# options and context


class _Options:
    KNOWN = {"on", "weights", "fit_data", "data", "io_map", "input_map", "meta", "threshold",
             "target_accuracy", "output", "labels", "keep_member_outputs", "cse", "verify",
             "fit_fraction", "batch", "shapes", "int_range", "runs", "ridge_alpha", "l2",
             "runner"}

    def __init__(self, mode: str, options: dict[str, Any]) -> None:
        if mode not in ALL_MODES:
            raise OptionError(f"unknown merge mode {mode!r}; choose one of {', '.join(ALL_MODES)}")
        unknown = set(options) - self.KNOWN
        if unknown:
            raise OptionError(f"unknown merge option(s) {sorted(unknown)}")
        self.mode = mode
        self.options = {k: v for k, v in options.items() if v is not None}
        on = self.options.get("on", "probs" if mode == "stack" else "outputs")
        if on not in ON_CHOICES:
            raise OptionError(f"--on {on!r}: choose outputs or probs")
        self.on = "outputs" if on == "logits" else on
        if self.options.get("meta", "logistic") not in ("logistic", "ridge"):
            raise OptionError(f"--meta {self.options['meta']!r}: choose logistic or ridge")
        if "weights" in self.options and "fit_data" in self.options:
            raise OptionError("give either --weights or --fit-weights, not both")
        if mode == "weighted" and "weights" not in self.options and "fit_data" not in self.options:
            raise OptionError("--mode weighted needs --weights W1,W2,... or --fit-weights DATA.npz")
        if mode == "cascade" and ("threshold" in self.options) == (
                "target_accuracy" in self.options):
            raise OptionError("--mode cascade needs exactly one of --threshold or --target-accuracy")
        t = self.options.get("threshold")
        if t is not None and not 0.0 <= float(t) <= 1.0:
            raise OptionError(f"--threshold {t}: must be a probability in [0, 1]")

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class _Ctx:
    o: _Options
    members: list[Member]
    alias: dict[str, str]
    runner: Runner
    stub: onnx.ModelProto
    report: MergeReport
    eval_feeds: Feeds | None = None
    cheap_is_probs: bool = False

    def member_runs(self, feeds: Feeds) -> list[Runs]:
        """Each member run separately on ``feeds`` (inputs mapped to its own names)."""
        out = []
        for m in self.members:
            fm = Feeds([{k: run[v] for k, v in m.inputs.items()} for run in feeds.runs])
            out.append(self.runner.run(m.model, fm))
        return out


def _first_output(ctx: _Ctx, m: Member) -> tuple[str, onnx.ValueInfoProto]:
    name = m.output_names[0]
    if len(m.output_names) > 1:
        ctx.report.notes.append(f"member '{m.label}' has {len(m.output_names)} outputs; "
                                f"combining the first, '{name}'")
    return name, m.value_info(name)


def _feeds(ctx: _Ctx, source: Any, need_labels: bool, what: str) -> Feeds:
    feeds = load_feeds(source, ctx.stub, batch=ctx.o.get("batch"))
    if need_labels and feeds.labels is None:
        raise OptionError(f"{what}: the data has no 'labels' array; fitting needs labels")
    return feeds


def _batched(feeds: Feeds, stub: onnx.ModelProto) -> Feeds:
    """Concatenate single-sample runs when every input's batch dim is dynamic (fast fitting)."""
    dyn = all(not (d.HasField("dim_value") and d.dim_value > 0)
              for v in stub.graph.input for d in v.type.tensor_type.shape.dim[:1])
    return feeds.batched(256) if dyn and len(feeds.runs) > 1 else feeds


# --------------------------------------------------------------------------------------------
# parallel, stack and cascade


def _combined_outputs(ctx: _Ctx, head: Head, flat: onnx.GraphProto):
    o, mode, members = ctx.o, ctx.o.mode, ctx.members
    if mode == "cascade" and len(members) != 2:
        raise OptionError(f"--mode cascade takes two members (cheap, expensive), got {len(members)}")
    firsts = [_first_output(ctx, m) for m in members]
    ref_vi = firsts[0][1]
    for m, (name, vi) in zip(members[1:], firsts[1:]):
        check_compatible(ref_vi, vi, f"output '{members[0].label}.{firsts[0][0]}' vs "
                                     f"'{m.label}.{name}'")
    if ref_vi.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                 onnx.TensorProto.FLOAT16):
        raise OptionError(f"mode {mode} combines float scores; output '{firsts[0][0]}' is "
                          f"not float")
    outs = [resolve(ctx.alias, m.outputs[name]) for m, (name, _) in zip(members, firsts)]
    taken = {v.name for v in flat.input}
    out = o.get("output") or firsts[0][0]
    if out in taken:
        out = "ensemble_output"
    on = o.on
    fit = o.get("fit_data", o.get("data")) if mode in ("weighted", "stack", "cascade") else None
    needs_fit = (mode == "stack" or (mode == "weighted" and o.get("fit_data") is not None)
                 or (mode == "cascade" and o.get("target_accuracy") is not None))
    if needs_fit and fit is None:
        raise OptionError(f"--mode {mode} needs labeled data to fit (--data or --fit-weights)")
    fit_runs = y_fit = None
    if needs_fit:
        fit_runs, y_fit = _fit_split(ctx, fit)
    elif o.get("data") is not None:
        ctx.eval_feeds = _feeds(ctx, o.get("data"), False, "--data")
    params = ctx.report.params
    elem = ref_vi.type.tensor_type.elem_type
    out_vis = []
    keep: list[tuple[Member, str, str]] = []
    if mode in PARALLEL_MODES:
        weights = o.get("weights")
        if mode == "weighted":
            if fit_runs is not None:
                weights = fit_weights(np_transform(fit_runs, on), y_fit, on)
            weights = [float(w) for w in weights]
            if len(weights) != len(members):
                raise OptionError(f"--weights has {len(weights)} values for {len(members)} "
                                  f"members")
            params["weights"] = weights
        params["on"] = on
        names = build_parallel(head, outs, mode, on, out, weights)
        ref = lambda ys: np_parallel(ys, mode, on, out, weights)  # noqa: E731
        out_vis.append(_vi(out, elem, ref_vi))
        if mode == "vote":
            out_vis.append(_vi(names[1], onnx.TensorProto.INT64, ref_vi, drop_last=True))
    elif mode == "stack":
        kind = o.get("meta", "logistic")
        x = np_features(fit_runs, on)
        classes = int(fit_runs[0].shape[-1])
        if len(fit_runs[0].shape) != 2:
            raise OptionError("--mode stack needs [N, C] member outputs")
        if kind == "ridge":
            w, b = fit_ridge(x, y_fit, classes, float(o.get("ridge_alpha", 1.0)))
        else:
            w, b = fit_logistic(x, y_fit, classes, float(o.get("l2", 1e-3)))
        params.update(on=on, meta=kind, features=int(x.shape[1]), classes=classes)
        build_stack(head, outs, on, out, w, b, kind)
        ref = lambda ys: np_stack(ys, on, out, w, b, kind)  # noqa: E731
        out_vis.append(_vi(out, elem, ref_vi))
    else:
        vi = _vi(out, elem, ref_vi)
        ref = _cascade_head(ctx, head, flat, outs, vi, fit_runs, y_fit)
        out_vis.append(vi)
    if o.get("keep_member_outputs") and mode != "cascade":
        for m, (name, _) in zip(members, firsts):
            final = m.outputs[name] + ":out"
            head.op("Identity", [resolve(ctx.alias, m.outputs[name])], out=final)
            out_vis.append(_vi(final, elem, ref_vi))
            keep.append((m, name, final))

    def reference(member_runs: list[Runs], _feeds: Feeds) -> Runs:
        out_runs = []
        for i in range(len(member_runs[0])):
            ys = [rs[i][m.output_names[0]] for rs, m in zip(member_runs, members)]
            r = ref(ys)
            for m, name, final in keep:
                r[final] = member_runs[members.index(m)][i][name]
            out_runs.append(r)
        return out_runs

    return out_vis, reference


def _fit_split(ctx: _Ctx, source: Any) -> tuple[list[np.ndarray], np.ndarray]:
    """Members' first outputs and labels on the fit split; the rest becomes the eval feeds."""
    feeds = _feeds(ctx, source, True, "fit data")
    if len(feeds.runs) < 2:
        raise OptionError("fit data needs at least two runs (one to fit, one to evaluate)")
    fit_f, held = feeds.split(float(ctx.o.get("fit_fraction", 0.5)))
    fit_f = _batched(fit_f, ctx.stub)
    runs = ctx.member_runs(fit_f)
    ctx.eval_feeds = held
    ctx.report.accuracy_split = (f"fit on {fit_f.num_samples} samples, accuracy on "
                                 f"{held.num_samples} held-out samples")
    outs = [np.concatenate([r[m.output_names[0]] for r in rs])
            for m, rs in zip(ctx.members, runs)]
    return outs, fit_f.stacked_labels()


def _cascade_head(ctx: _Ctx, head: Head, flat: onnx.GraphProto, outs: list[str],
                  vi: onnx.ValueInfoProto, fit_runs: list[np.ndarray] | None,
                  y_fit: np.ndarray | None):
    """Gate + If in place of ``flat``'s nodes; returns the numpy reference of one run."""
    o, params, out = ctx.o, ctx.report.params, vi.name
    nodes = list(flat.node)
    probs = is_softmax_output(nodes, outs[0])
    ctx.cheap_is_probs = probs
    t = o.get("threshold")
    if t is None:
        target = float(o.get("target_accuracy"))
        target = target * 100.0 if target <= 1.0 else target
        conf = np_confidence(fit_runs[0], probs)
        t, note = choose_threshold(conf, np.argmax(fit_runs[0], -1) == y_fit,
                                   np.argmax(fit_runs[1], -1) == y_fit, target)
        params["target_accuracy"] = target
        if note:
            ctx.report.notes.append(note)
    t = float(t)
    params.update(threshold=t, gate="softmax top-1, min over the batch")
    new_nodes, moved = build_cascade(nodes, head, outs[0], outs[1], out, vi.type, t)
    params["expensive_nodes_in_branch"] = moved
    del flat.node[:]
    flat.node.extend(new_nodes)
    head.nodes.clear()
    if fit_runs is not None:
        conf = np_confidence(np.asarray(fit_runs[0]), probs)
        params["cheap_fraction_fit"] = float((conf >= np.float32(t)).mean())

    def ref(ys: list[np.ndarray]) -> dict[str, np.ndarray]:
        c = np_confidence(ys[0], probs).min()
        return {out: ys[0] if c >= np.float32(t) else ys[1]}

    return ref


def _vi(name: str, elem: int, like: onnx.ValueInfoProto, drop_last: bool = False
        ) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(like)
    vi.name = name
    vi.type.tensor_type.elem_type = elem
    if drop_last and vi.type.tensor_type.HasField("shape"):
        del vi.type.tensor_type.shape.dim[-1]
    return vi


# --------------------------------------------------------------------------------------------
# serial


def _serial_outputs(ctx: _Ctx, head: Head):
    consumed = set(ctx_bound_sources(ctx))
    kept = [(m, name) for m in ctx.members for name in m.output_names
            if f"{m.label}/{name}" not in consumed]
    counts: dict[str, int] = {}
    for _, name in kept:
        counts[name] = counts.get(name, 0) + 1
    inputs = {n for m in ctx.members for n in m.inputs.values()}
    out_vis, mapping = [], []
    for m, name in kept:
        final = name if counts[name] == 1 and name not in inputs else f"{m.label}/{name}:out"
        head.op("Identity", [resolve(ctx.alias, f"{m.label}/{name}")], out=final)
        out_vis.append(_vi(final, m.value_info(name).type.tensor_type.elem_type,
                           m.value_info(name)))
        mapping.append((m.label, name, final))
    if ctx.o.get("data") is not None:
        ctx.eval_feeds = _feeds(ctx, ctx.o.get("data"), False, "--data")

    source = {f"{m.label}/{n}": (m.label, n) for m in ctx.members for n in m.output_names}

    def reference(_member_runs: Any, feeds: Feeds) -> Runs:
        produced: list[dict[tuple[str, str], np.ndarray]] = [{} for _ in feeds.runs]
        for m in ctx.members:
            fm = []
            for i, run in enumerate(feeds.runs):
                fm.append({k: produced[i][source[v]] if v in source else run[v]
                           for k, v in m.inputs.items()})
            for i, r in enumerate(ctx.runner.run(m.model, Feeds(fm))):
                for k, v in r.items():
                    produced[i][(m.label, k)] = v
        return [{final: p[(lab, name)] for lab, name, final in mapping} for p in produced]

    return out_vis, reference


def ctx_bound_sources(ctx: _Ctx) -> list[str]:
    outs = {f"{m.label}/{n}" for m in ctx.members for n in m.output_names}
    return [v for m in ctx.members for v in m.inputs.values() if v in outs]
