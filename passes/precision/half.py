"""convert-fp16 / convert-bf16: float32 tensors, ops and weights in half precision.

How a model is converted (each step in its module):

1. element types and schemas (:mod:`.schema`); nodes get unique names, their site keys;
2. overflow on the calibration data (:func:`measure_ranges`): the float32 model runs with its
   float tensors as outputs, a chunk at a time (:mod:`.probe`), keeping ``max |x|`` per tensor;
3. the plan (:mod:`.plan`): every node converts unless a reason keeps it in float32 (the block
   list of :mod:`.blocklist`, overflow, constants half precision cannot hold, integer
   arithmetic, no schema, the pipeline's bisection);
4. the rewrite (:mod:`.rewrite`): tensors retyped, constants converted, a Cast wherever a
   reader wants the other type, graph inputs and outputs float32 with ``keep_io_types``;
5. Casts that cancel are removed (:mod:`.casts`).

Each converted node is a site: when the pipeline's verification fails, its bisection re-applies
the pass on halves of the sites and the nodes it drops stay float32. The report's details list
every node kept in float32 with its reason.

Verification caveat: onnxruntime's CPU provider runs most ops in float32 even in a float16
graph (it inserts Casts around ops without a float16 kernel), so the half-precision rounding it
sees is that of the tensors between ops, not of the arithmetic inside them; the range checks
above do not depend on it.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx

from onnxopt.contract import Pass, PassContext, PassResult

from .casts import simplify_casts
from .config import Bf16Config, HalfConfig
from .plan import BISECTION, Planner, name_nodes
from .probe import Probe
from .rewrite import Rewriter
from .schema import BFLOAT16, FLOAT, FLOAT16, HalfType, element_types

logger = logging.getLogger(__name__)


def measure_ranges(
    model: onnx.ModelProto, ctx: PassContext, types: dict[str, int], config: HalfConfig
) -> dict[str, float]:
    """``max |x|`` (finite values) of every float tensor of the main graph on the calibration
    runs, measured in chunks of ``probe_mb`` megabytes."""
    if ctx.feeds is None or not len(ctx.feeds):
        return {}
    names = [i.name for i in model.graph.input if types.get(i.name) == FLOAT]
    names += [o for n in model.graph.node for o in n.output if types.get(o) == FLOAT]
    out: dict[str, float] = {}

    def keep_max(name: str, value: np.ndarray) -> None:
        v = np.asarray(value)
        if v.size and np.issubdtype(v.dtype, np.floating):
            finite = np.abs(v[np.isfinite(v)])
            if finite.size:
                out[name] = max(out.get(name, 0.0), float(finite.max()))

    probe = Probe(model, ctx.feeds, config.calib_runs, config.probe_mb << 20)
    probe.reduce(names, keep_max, lambda d, t: ctx.report_progress("measuring ranges", d, t))
    return out


class HalfPass(Pass):
    """The half-precision conversion (float16 or bfloat16 by ``half``)."""

    exact = False
    goal = "size"
    verify_deployed = True
    needs_model = True
    tags = ("precision", "half")
    half: HalfType = FLOAT16
    config: HalfConfig

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        c = self.config
        name_nodes(model)
        types = element_types(model)
        ranges: dict[str, float] = {}
        notes: list[str] = []
        if c.overflow_check and c.compute == "all":
            ranges = measure_ranges(model, ctx, types, c)
            if ctx.feeds is not None and ctx.feeds.synthesized:
                notes.append("ranges measured on synthesized inputs: give --data for real ones")
        plan = Planner(model, c, self.half, types, ranges, ctx).run()
        counts = Rewriter(model, plan, self.half, types, c).run()
        if not plan.sites and not counts.constants:
            return PassResult(False, 0, _kept_notes(plan) or ["no float32 tensor to convert"])
        removed = simplify_casts(model, element_types(model))
        details = {
            "type": self.half.name,
            "compute": c.compute,
            "converted_nodes": len(plan.sites),
            "converted_constants": counts.constants,
            "casts": counts.casts - removed,
            "float32_nodes": plan.kept,
            "float32_constants": plan.bad_constants,
        }
        notes += _kept_notes(plan)
        return PassResult(
            True, len(plan.sites), notes, sites=plan.sites, details=details, model=model
        )


def _kept_notes(plan) -> list[str]:
    """One line per reason class of the nodes kept in float32 (the details list each node)."""
    by: Counter[str] = Counter()
    example: dict[str, str] = {}
    for node, why in plan.kept.items():
        key = why if why == BISECTION else why.split(":")[0].split("(")[0].strip()
        by[key] += 1
        example.setdefault(key, f"{node}: {why}")
    out = [f"kept in float32 ({n}): {example[k]}" for k, n in by.most_common(12)]
    for name, why in list(plan.bad_constants.items())[:4]:
        out.append(f"constant '{name}' stays float32: it {why}")
    return out


class ConvertFp16(HalfPass):
    """float32 -> float16, configured by a :class:`.config.HalfConfig`."""

    name = "convert-fp16"
    summary = "float16 tensors and weights; unsafe ops, overflows and failing nodes stay float32"
    config_class = HalfConfig
    half = FLOAT16


class ConvertBf16(HalfPass):
    """float32 -> bfloat16, configured by a :class:`.config.Bf16Config` (weights only by
    default: onnxruntime's CPU provider has no bfloat16 arithmetic kernels)."""

    name = "convert-bf16"
    summary = "bfloat16 weights (default) or tensors; unsafe ops stay float32"
    config_class = Bf16Config
    half = BFLOAT16
    opset_wanted = 13  # Cast to and from bfloat16
    opset_needed = 13
