"""quantize-int4: weight-only 4-bit ``com.microsoft.MatMulNBits`` for MatMul/Gemm weights.

Every constant MatMul/Gemm weight (see :mod:`.layers`) is quantized block-wise along K
(:mod:`.nbits`: RTN or the HQQ-style search; :mod:`.gptq`: GPTQ, kept per layer only where it
beats the search on held-out calibration runs) and the node becomes MatMulNBits; embedding
tables become GatherBlockQuantized (8 bits by default). Layers inside If/Loop/Scan bodies are
quantized too (their sites are keyed ``<scope>::<node>``; the probe reads their inputs over
every iteration, see :mod:`.probe`). Each layer's error is measured on the
calibration data as the relative output error ``e = ‖X(W − Ŵ)‖ / ‖XW‖`` from ``H = XᵀX``
(:mod:`.quantizer`). Mixed precision: the layers whose 4-bit error exceeds
``sensitivity`` times the median layer's (at most ``max_sensitive`` of them, worst first) get
``sensitive_bits`` (8) instead. Each rewritten node is a site, so the pipeline's bisection keeps
the layers that verify.

MatMulNBits is an onnxruntime contrib op: the pass runs only with ``--target onnxruntime``.
It is made for size (4-5x smaller weights). It is not promised to be faster: on this
machine's CPU onnxruntime's 4-bit kernel matches float32 GEMM at 128 tokens and is faster for
single-token rows, or with ``accuracy_level=4`` (see benchmarks/PRECISION.md).
"""

from __future__ import annotations

import logging
import time

import onnx

from onnxopt.contract import Pass, PassContext, PassResult, grouped_notes
from onnxopt.errors import PassError

from .config import Int4Config
from .layers import Layer, find_layers, nbits_node, replace_layers
from .nbits import Quantized, quantize_rtn
from .plan import name_nodes
from .probe import Probe
from .quantizer import Done, Quantizing
from .schema import graphs

logger = logging.getLogger(__name__)

TARGET_ERROR = (
    "quantize-int4 writes com.microsoft.MatMulNBits, an onnxruntime contrib op: "
    "add --target onnxruntime"
)


class QuantizeInt4(Pass):
    """Weight-only 4-bit MatMulNBits (RTN, HQQ-style or GPTQ), configured by an
    :class:`.config.Int4Config`."""

    name = "quantize-int4"
    exact = False
    goal = "size"
    summary = "4-bit weight-only MatMulNBits for MatMul/Gemm (RTN, HQQ, GPTQ; onnxruntime)"
    tags = ("precision", "int4")
    needs_model = True
    target_needed = "onnxruntime"
    config_class = Int4Config
    config: Int4Config

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        if ctx.target != "onnxruntime":
            raise PassError(TARGET_ERROR)
        c = self.config
        name_nodes(model)
        layers, skipped = find_layers(
            model, c.exclude, c.fuse_bias, c.embedding_bits > 0, c.block_size
        )
        job = Quantizing(c, grouped_notes(skipped))
        layers = [x for x in layers if ctx.allow(x.key)]
        if not layers:
            return PassResult(False, 0, job.notes[:20] or ["no MatMul/Gemm with a constant weight"])
        if ctx.feeds is None or not len(ctx.feeds):
            raise PassError("quantize-int4 needs calibration inputs (or synthesized ones)")
        if c.algo == "gptq" and ctx.feeds.synthesized:
            job.notes.append("gptq on synthesized inputs: give --data for a meaningful Hessian")
        t0 = time.perf_counter()
        probe = Probe(model, ctx.feeds, job.runs, c.probe_mb << 20)
        done = job.all(layers, probe, lambda d, t: ctx.report_progress(self.name, d, t))
        sites = [x.key for x in layers]
        details = self._rewrite(model, done, job.sensitive(done))
        details.update(
            seconds=round(time.perf_counter() - t0, 3),
            calibration_runs=min(len(ctx.feeds), job.runs),
            gptq_fallback=job.fallback,
        )
        if job.fallback:
            job.notes.append(job.fallback_note(len(layers)))
        if details["sensitive"]:
            job.notes.append(
                f"{len(details['sensitive'])} sensitive layer(s) kept at {c.sensitive_bits} "
                f"bits: {', '.join(details['sensitive'][:8])}"
            )
        return PassResult(
            True, len(sites), job.notes[:20], sites=sites, details=details, model=model
        )

    def _rewrite(self, model: onnx.ModelProto, done: list[Done], sensitive: set[str]) -> dict:
        """MatMulNBits (GatherBlockQuantized) in place of the layers; the report's details."""
        c = self.config
        nodes, table = [], []
        taken = set()
        for g in graphs(model.graph):
            taken |= {t.name for t in g.initializer} | {n.name for n in g.node}
            taken |= {o for n in g.node for o in n.output}
        for d in done:
            q, err = d.q, d.error
            if d.layer.name in sensitive:
                q = quantize_rtn(d.layer.weight, c.sensitive_bits, c.block_size, c.symmetric)
                err = d.error_high
            node, tensors = nbits_node(d.layer, q, c.accuracy_level, taken)
            nodes.append((d.layer, node, tensors))
            table.append(_row(d.layer, q, err, d.error))
        shapes = _output_shapes(model, [d.layer.output for d in done])
        replace_layers(model, nodes)
        model.graph.value_info.extend(shapes)
        return {
            "algo": c.algo,
            "block_size": c.block_size,
            "symmetric": c.symmetric,
            "layers": table,
            "sensitive": sorted(sensitive),
            "weight_bytes_before": sum(d.layer.weight.nbytes for d in done),
            "weight_bytes_after": sum(sum(t.ByteSize() for t in ts) for _, _, ts in nodes),
        }


def _output_shapes(model: onnx.ModelProto, names: list[str]) -> list[onnx.ValueInfoProto]:
    """The inferred value infos of ``names`` that the model does not declare yet: onnx's shape
    inference does not know the contrib ops, so shapes downstream stay known this way."""
    from onnxopt.model import infer_shapes_light

    declared = {v.name for v in [*model.graph.value_info, *model.graph.output]}
    try:
        inferred = infer_shapes_light(model)
    except Exception:  # noqa: BLE001
        return []
    wanted = set(names) - declared
    return [v for v in inferred.graph.value_info if v.name in wanted]


def _row(layer: Layer, q: Quantized, err: float, err4: float) -> dict:
    k, n = layer.weight.shape
    return {
        "node": layer.key,
        "op": "GatherBlockQuantized" if layer.kind == "gather" else "MatMulNBits",
        "K": k,
        "N": n,
        "bits": q.bits,
        "error": float(f"{err:.4g}"),
        "error_4bit": float(f"{err4:.4g}"),
    }
