"""quantize-int8: static int8 quantization with onnxopt's own calibration and QDQ insertion.

Pipeline: plan Q/DQ placement (:mod:`.placement`) -> expose the planned tensors as outputs and
stream their statistics over the calibration feeds (:mod:`.calibrate`) -> per-group range =
union of the members' calibrated ranges -> parameters and insertion (:mod:`.qdq`) -> with a
budget, sensitivity-ranked fallback (:mod:`.fallback`).
"""

from __future__ import annotations

import logging
import platform
from functools import lru_cache
from typing import Any

import numpy as np
import onnx

from onnxopt.graph import node_names_unique, opset_version, to_graph, to_model
from onnxopt.model import with_inferred_shapes
from onnxopt.passes.base import Pass, PassContext, PassError, PassResult, register

from .calibrate import CALIBRATORS, collect_stats, make_calibrator
from .fallback import Judge, rank_sites, search_fallback
from .placement import CANDIDATES, make_plan
from .qdq import Inserter, QParams, activation_params

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


@register
class QuantizeInt8(Pass):
    """Static int8 QDQ quantization placed for onnxruntime's int8 CPU kernels.

    Options (constructor arguments or ``ctx.options``): ``calibrator`` (minmax | percentile |
    entropy | mse), ``percentile`` (99.99), ``per_channel`` (True), ``activations`` (uint8 |
    int8-sym), ``exclude`` (node names or op types), ``reduce_range`` (auto: on x86 without
    VNNI), ``fallback`` (True: sensitivity-guided with ``ctx.budget``), ``quantize_residual``
    (False), ``calib_batch`` (8), ``fallback_runs`` (64), ``sensitivity_runs`` (16).
    """

    name = "quantize-int8"
    exact = False
    summary = "static int8 QDQ quantization with calibration and accuracy-aware fallback"
    tags = ("quantize",)
    needs_model = True
    needs_data = True

    def __init__(self, **options: Any) -> None:
        self.defaults = dict(options)

    def _opts(self, ctx: PassContext) -> dict[str, Any]:
        o = {
            "calibrator": "percentile", "percentile": 99.99, "per_channel": True,
            "activations": "uint8", "exclude": (), "reduce_range": "auto", "fallback": True,
            "quantize_residual": False, "calib_batch": 8, "fallback_runs": 64,
            "sensitivity_runs": 16, "embeddings": True, "bins": 2048,
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
        opset = opset_version(model)
        if opset < 10:
            return PassResult.unchanged(f"opset {opset} < 10 has no QuantizeLinear")
        try:
            inferred = with_inferred_shapes(model)
        except Exception as e:  # noqa: BLE001 - a model shape inference rejects still quantizes
            logger.debug("shape inference failed: %s", e)
            inferred = model
        base = _named(inferred)
        graph = to_graph(base)
        exclude = set(o["exclude"])
        allowed = []
        for n in graph.nodes:
            if n.op not in (*CANDIDATES, "Gather") or n.name in exclude or n.op in exclude:
                continue
            if ctx.allow(n.name):
                allowed.append(n.name)
        plan_kw = dict(per_channel=bool(o["per_channel"]) and opset >= 13,
                       fold_relu=o["activations"] == "uint8",
                       quantize_residual=bool(o["quantize_residual"]),
                       embeddings=bool(o["embeddings"]))
        if o["per_channel"] and opset < 13:
            notes.append(f"opset {opset} < 13: per-tensor weight scales")
        full = make_plan(graph, set(allowed), **plan_kw)
        sites = [s for s in allowed if s in full.sites or s in full.embeddings]
        if not sites:
            return PassResult(False, 0, notes + full.notes[:20])
        params = self._calibrate(base, full.tensors(), feeds, o, ctx)

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
                                   "counts": dict(ins.counts), "float_nodes": []}
        kept = list(sites)
        if ctx.budget is not None and o["fallback"]:
            qmodel, kept, fb_notes, rows = self._fallback(model, build, sites, qmodel, ctx, o)
            notes += fb_notes
            details["float_nodes"] = rows
            plan, ins = build.last  # type: ignore[attr-defined]
            details["counts"] = dict(ins.counts)
        notes += ins.notes + plan.notes[:20]
        if not kept:
            return PassResult(False, 0, notes, details=details)
        return PassResult(True, len(kept), notes, sites=kept, details=details, model=qmodel)

    # --------------------------------------------------------------------------------------

    def _calibrate(self, base: onnx.ModelProto, tensors: list[str], feeds, o: dict,  # noqa: ANN001
                   ctx: PassContext) -> dict[str, tuple[float, float]]:
        probe = onnx.ModelProto()
        probe.CopyFrom(base)
        have = {v.name for v in probe.graph.output}
        for t in tensors:
            if t not in have:
                probe.graph.output.append(
                    onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        dyn = _dynamic_batch(base)
        stats = collect_stats(probe.SerializeToString(), tensors, feeds.runs, bins=int(o["bins"]),
                              batch=int(o["calib_batch"]), dynamic_batch=dyn,
                              progress=ctx.progress)
        cal = make_calibrator(o["calibrator"], float(o["percentile"]))
        sym = o["activations"] == "int8-sym"
        return {t: cal.range(s, symmetric=sym) for t, s in stats.items() if not s.empty}

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
