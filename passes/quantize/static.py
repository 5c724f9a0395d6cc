"""quantize-int8: static int8 quantization with onnxopt's own calibration and QDQ insertion.

Pipeline: read aliased initializers through ``Identity`` -> optionally smooth MatMul inputs
(:mod:`.smooth`, exact in float) -> plan Q/DQ placement (:mod:`.placement`) -> expose the
planned tensors as outputs and stream their statistics over the calibration feeds
(:mod:`.calibrate`) -> per-group range = union of the members' calibrated ranges ->
parameters and insertion (:mod:`.qdq`) -> with a budget, sensitivity-ranked fallback
(:mod:`.fallback`).

Memory stays at about two copies of the model plus onnxruntime's: planning reads weight shapes
only, the probe model is written to a temporary file rather than copied, and statistics are
streamed (bert_base, 256 samples: see benchmarks/QUANTIZATION.md).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
from functools import lru_cache
from typing import Any

import numpy as np
import onnx

from onnxopt.contract import Pass, PassContext, PassError, PassResult
from onnxopt.graph import node_names_unique, opset_version, to_graph, to_model
from onnxopt.model import with_inferred_shapes

from .calibrate import CALIBRATORS, collect_stats, make_calibrator, write_probe
from .fallback import Judge, rank_sites, search_fallback
from .placement import CANDIDATES, make_plan
from .qdq import Inserter, QParams, activation_params
from .smooth import apply_smoothing, channel_absmax, smooth_groups

logger = logging.getLogger(__name__)

MIN_SAMPLES = 16


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """x86 with AVX-512 VNNI / AVX-VNNI (u8·s8 dot products without int16 saturation)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return True  # ARM and others: no u8s8 saturation issue in MLAS
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags or "amx_int8" in flags


class QuantizeInt8(Pass):
    """Static int8 QDQ quantization placed for onnxruntime's int8 CPU kernels.

    Options (constructor arguments or ``ctx.options``): ``calibrator`` (minmax | percentile |
    entropy | mse), ``percentile`` (99.99), ``per_channel`` (True), ``activations`` (uint8 |
    int8-sym), ``exclude`` (node names or op types), ``reduce_range`` (auto: on x86 without
    VNNI), ``fallback`` (True: sensitivity-guided with ``ctx.budget``), ``quantize_residual``
    (False), ``calib_batch`` (8), ``fallback_runs`` (64), ``sensitivity_runs`` (16),
    ``elementwise`` (int8-inputs | all), ``smooth`` (None; alpha in [0, 1] smooths MatMul
    inputs SmoothQuant-style, see :mod:`.smooth`), ``smooth_runs`` (64).
    """

    name = "quantize-int8"
    exact = False
    summary = "static int8 QDQ quantization with calibration and accuracy-aware fallback"
    tags = ("quantize",)
    needs_model = True
    needs_data = True
    opset_wanted = 13  # per-channel weight scales
    opset_needed = 10  # QuantizeLinear

    def __init__(self, **options: Any) -> None:
        self.defaults = dict(options)

    def _opts(self, ctx: PassContext) -> dict[str, Any]:
        o = {
            "calibrator": "percentile", "percentile": 99.99, "per_channel": True,
            "activations": "uint8", "exclude": (), "reduce_range": "auto", "fallback": True,
            "quantize_residual": False, "calib_batch": 8, "fallback_runs": 64,
            "sensitivity_runs": 16, "embeddings": True, "bins": 2048,
            "elementwise": "int8-inputs", "smooth": None, "smooth_runs": 64,
        }
        o.update(self.defaults)
        o.update(ctx.options or {})
        if o["activations"] not in ("uint8", "int8-sym"):
            raise PassError(f"{self.name}: activations must be uint8 or int8-sym, "
                            f"not {o['activations']!r}")
        if str(o["calibrator"]).lower() not in (*CALIBRATORS, "kl") and not hasattr(
            o["calibrator"], "range"
        ):
            raise PassError(f"{self.name}: unknown calibrator {o['calibrator']!r}; "
                            f"choose one of {', '.join(CALIBRATORS)}")
        if isinstance(o["exclude"], str):
            o["exclude"] = [x for x in o["exclude"].split(",") if x]
        if o["smooth"] is True:
            o["smooth"] = 0.5
        if o["smooth"] is not None and o["smooth"] is not False:
            try:
                o["smooth"] = float(o["smooth"])
            except (TypeError, ValueError) as e:
                raise PassError(f"{self.name}: smooth must be a number in [0, 1], "
                                f"not {o['smooth']!r}") from e
            if not 0.0 <= o["smooth"] <= 1.0:
                raise PassError(f"{self.name}: smooth must be in [0, 1], not {o['smooth']}")
        if o["elementwise"] not in ("int8-inputs", "all"):
            raise PassError(f"{self.name}: elementwise must be int8-inputs or all, "
                            f"not {o['elementwise']!r}")
        if o["reduce_range"] == "auto":
            o["reduce_range"] = not cpu_has_vnni()
        return o

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        o = self._opts(ctx)
        notes: list[str] = []
        feeds = ctx.feeds
        if feeds is None or len(feeds) == 0:
            raise PassError(f"{self.name}: needs calibration data (--data)")
        if feeds.synthesized:
            notes.append("calibrated on synthesized inputs: ranges may not match real data")
        if feeds.num_samples < MIN_SAMPLES:
            notes.append(f"only {feeds.num_samples} calibration samples (< {MIN_SAMPLES}): "
                         "ranges may be unreliable")
            logger.warning("only %d calibration samples", feeds.num_samples)
        opset = opset_version(model)  # Pass.apply converted models below opset_wanted
        try:
            inferred = with_inferred_shapes(model)
        except Exception as e:  # noqa: BLE001 - a model shape inference rejects still quantizes
            logger.debug("shape inference failed: %s", e)
            inferred = model
        base = _named(_resolve_const_identities(inferred, in_place=inferred is not model))
        del inferred
        exclude = set(o["exclude"])
        smooth_info: dict[str, int] = {}
        if o["smooth"] is not None and o["smooth"] is not False:
            base, smooth_info = self._smooth(base, feeds, o, ctx, exclude, notes)
        graph = to_graph(base)
        allowed = []
        for n in graph.nodes:
            if n.op not in (*CANDIDATES, "Gather") or n.name in exclude or n.op in exclude:
                continue
            if ctx.allow(n.name):
                allowed.append(n.name)
        plan_kw = dict(per_channel=bool(o["per_channel"]) and opset >= 13,
                       fold_relu=o["activations"] == "uint8",
                       quantize_residual=bool(o["quantize_residual"]),
                       embeddings=bool(o["embeddings"]), elementwise=o["elementwise"])
        if o["per_channel"] and opset < 13:
            notes.append(f"opset {opset} < 13: per-tensor weight scales")
        full = make_plan(graph, set(allowed), **plan_kw)
        sites = [s for s in allowed if s in full.sites or s in full.embeddings]
        if not sites:
            return PassResult(False, 0, notes + full.notes[:20])
        probe_tensors = full.tensors()
        plan_notes = full.notes  # why each candidate stays float
        del graph, full  # planning graph: free it before onnxruntime loads the model
        params = self._calibrate(base, probe_tensors, feeds, o, ctx)

        def build(enabled: set[str]) -> onnx.ModelProto:
            g = to_graph(base)
            plan = make_plan(g, enabled, **plan_kw)
            pmap = _group_params(plan, params, o["activations"])
            ins = Inserter(g, plan, pmap, reduce_range=bool(o["reduce_range"]),
                           per_axis_ok=opset >= 13)
            ins.apply()
            build.last = (plan, ins)  # type: ignore[attr-defined]
            out = to_model(g, like=model)
            if opset < 13 and any(n.op == "DequantizeLinear" for n in out.graph.node):
                pass
            return out

        qmodel = build(set(sites))
        plan, ins = build.last  # type: ignore[attr-defined]
        details: dict[str, Any] = {"calibrator": str(make_calibrator(o["calibrator"],
                                                                     o["percentile"])),
                                   "activations": o["activations"],
                                   "per_channel": plan_kw["per_channel"],
                                   "reduce_range": bool(o["reduce_range"]),
                                   "counts": dict(ins.counts), "float_nodes": [],
                                   "smoothing": smooth_info}
        kept = list(sites)
        if ctx.budget is not None and o["fallback"]:
            qmodel, kept, fb_notes, rows = self._fallback(model, build, sites, qmodel, ctx, o)
            notes += fb_notes
            details["float_nodes"] = rows
            plan, ins = build.last  # type: ignore[attr-defined]
            details["counts"] = dict(ins.counts)
        notes += ins.notes + plan_notes[:20]
        if not kept:
            return PassResult(False, 0, notes, details=details)
        return PassResult(True, len(kept), notes, sites=kept, details=details, model=qmodel)

    # --------------------------------------------------------------------------------------

    def _calibrate(self, base: onnx.ModelProto, tensors: list[str], feeds, o: dict,  # noqa: ANN001
                   ctx: PassContext) -> dict[str, tuple[float, float]]:
        dyn = _dynamic_batch(base)
        with tempfile.TemporaryDirectory(prefix="onnxopt_calib_") as tmp:
            path = os.path.join(tmp, "probe.onnx")
            write_probe(base, tensors, path)
            stats = collect_stats(path, tensors, feeds.runs, bins=int(o["bins"]),
                                  batch=int(o["calib_batch"]), dynamic_batch=dyn,
                                  progress=ctx.progress)
        cal = make_calibrator(o["calibrator"], float(o["percentile"]))
        sym = o["activations"] == "int8-sym"
        return {t: cal.range(s, symmetric=sym) for t, s in stats.items() if not s.empty}

    def _smooth(self, base: onnx.ModelProto, feeds, o: dict, ctx: PassContext,  # noqa: ANN001
                exclude: set[str], notes: list[str]) -> tuple[onnx.ModelProto, dict[str, int]]:
        """SmoothQuant-style smoothing of MatMul inputs (exact in float) before calibration."""
        graph = to_graph(base)
        names = {n.name for n in graph.nodes if n.op == "MatMul" and n.name not in exclude
                 and "MatMul" not in exclude and ctx.allow(n.name)}
        tensors = sorted(smooth_groups(graph, names))
        del graph
        if not tensors:
            notes.append("smooth: no MatMul with a constant 2-D weight")
            return base, {}
        runs = feeds.runs[: max(1, int(o["smooth_runs"]))]
        with tempfile.TemporaryDirectory(prefix="onnxopt_smooth_") as tmp:
            path = os.path.join(tmp, "probe.onnx")
            write_probe(base, tensors, path)
            x_max = channel_absmax(path, tensors, runs, ctx.progress)
        res = apply_smoothing(base, x_max, float(o["smooth"]), names)
        notes.extend(res.notes[:10])
        notes.append(f"smooth(alpha={o['smooth']:g}): {res.matmuls} MatMuls over {res.groups} "
                     f"inputs ({res.folded} folded into LayerNorm)")
        return res.model, {"groups": res.groups, "matmuls": res.matmuls, "folded": res.folded}

    def _fallback(self, model, build, sites, qmodel, ctx, o):  # noqa: ANN001, ANN202
        from onnxopt.verify import Runner, accuracy

        runner = ctx.runner if ctx.runner is not None else Runner()
        feeds = ctx.feeds.subset(int(o["fallback_runs"]))
        reference = runner.run(model, feeds)
        ref_acc = accuracy(reference, feeds.labels) if feeds.labels is not None else None
        judge = Judge(runner, feeds, reference, ctx.budget, ref_acc)
        good, why = judge.check(qmodel)
        if good:
            return qmodel, sites, [], []
        notes = [f"fully quantized model misses the budget ({why}); ranking sites"]
        sfeeds = ctx.feeds.subset(int(o["sensitivity_runs"]))
        sref = reference[: len(sfeeds)]
        ranking = rank_sites(build, sites, runner, sfeeds, sref, ctx.progress)
        res = search_fallback(build, sites, judge, ranking, ctx.progress)
        sq = dict(ranking)
        rows = [{"node": s, "sqnr_db": round(sq[s], 2),
                 "why": f"sensitivity rank {i + 1}/{len(sites)} (SQNR {sq[s]:.1f} dB); "
                        f"needed to meet the budget"}
                for i, s in enumerate(res.float_sites)]
        for r in rows:
            notes.append(f"kept float: {r['node']}: {r['why']}")
        if not res.met:
            notes.append(res.reason)
        kept = [s for s in sites if s not in set(res.float_sites)]
        return build(set(kept)), kept, notes, rows


def _resolve_const_identities(model: onnx.ModelProto, *, in_place: bool) -> onnx.ModelProto:
    """Read initializers directly where ``Identity(initializer)`` aliases them (exact).

    The TorchScript exporter deduplicates equal weights (all-zero biases, LayerNorm γ = 1) into
    Identity nodes; seen through them, a bias Add looks like an activation Add and a MatMul
    weight like an activation. Identities whose output is a graph output, or that a subgraph
    might read, stay.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in g.node for a in n.attribute):
        return model
    outs = {o.name for o in g.output}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input and n.input[0] in inits
             and n.output[0] not in outs}
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


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
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


def _dynamic_batch(model: onnx.ModelProto) -> bool:
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _group_params(plan, ranges: dict[str, tuple[float, float]],  # noqa: ANN001
                  activations: str) -> dict[int, QParams]:
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

