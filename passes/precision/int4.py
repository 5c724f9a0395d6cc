"""quantize-int4: weight-only 4-bit ``com.microsoft.MatMulNBits`` for MatMul/Gemm weights.

Every constant MatMul/Gemm weight (see :mod:`.layers`) is quantized block-wise along K
(:mod:`.nbits`: RTN or the HQQ-style search; :mod:`.gptq`: GPTQ) and the node becomes
MatMulNBits. Each layer's error is measured on the calibration data as the relative output
error ``e = ‖X(W − Ŵ)‖ / ‖XW‖`` from ``H = XᵀX`` (accumulated over the runs, a chunk of
layers at a time: see :mod:`.probe`). Mixed precision: the layers whose 4-bit error exceeds
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
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.errors import PassError

from .config import Int4Config
from .gptq import gptq_generalizes, inverse_cholesky, quantize_gptq, relative_error
from .layers import Layer, find_layers, nbits_node, replace_layers
from .nbits import Quantized, quantize_hqq, quantize_rtn
from .probe import Probe

logger = logging.getLogger(__name__)

#: marks a note naming a layer where GPTQ lost to the data-free quantizer (merged into one)
FALLBACK = "\0gptq-fallback:"

#: runs the per-layer errors (report, sensitivity) read when the algorithm itself is data-free
DATA_FREE_RUNS = 8

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
        _name_nodes(model.graph)
        layers, skipped = find_layers(
            model, c.exclude, c.fuse_bias, c.embedding_bits > 0, c.block_size
        )
        notes = _grouped(skipped)
        layers = [x for x in layers if ctx.allow(x.name)]
        if not layers:
            return PassResult(False, 0, notes[:20] or ["no MatMul/Gemm with a constant weight"])
        t0 = time.perf_counter()
        feeds = ctx.feeds
        if feeds is None or not len(feeds):
            raise PassError("quantize-int4 needs calibration inputs (or synthesized ones)")
        if c.algo == "gptq" and feeds.synthesized:
            notes.append("gptq on synthesized inputs: give --data for a meaningful Hessian")
        quantized = self._quantize(model, layers, ctx, notes)
        fallback = [n[len(FALLBACK) :] for n in notes if n.startswith(FALLBACK)]
        notes = [n for n in notes if not n.startswith(FALLBACK)]
        if fallback:
            notes.append(
                f"gptq kept on {len(layers) - len(fallback)} of {len(layers)} layers; "
                f"{len(fallback)} use {'hqq' if not c.symmetric else 'rtn'} instead, which beat "
                f"GPTQ on held-out calibration runs: {', '.join(fallback[:4])}"
                + (" …" if len(fallback) > 4 else "")
            )
        sensitive = self._sensitive(quantized)
        done, table = [], []
        taken = {t.name for t in model.graph.initializer} | {n.name for n in model.graph.node}
        for layer, q, err4, err8 in quantized:
            if layer.name in sensitive:
                q = quantize_rtn(layer.weight, c.sensitive_bits, c.block_size, c.symmetric)
            node, tensors = nbits_node(layer, q, c.accuracy_level, taken)
            done.append((layer, node, tensors))
            table.append(_row(layer, q, err8 if layer.name in sensitive else err4, err4))
        before = sum(x.weight.nbytes for x in layers)
        shapes = _output_shapes(model, [x.output for x in layers])
        replace_layers(model, done)
        model.graph.value_info.extend(shapes)
        after = sum(sum(t.ByteSize() for t in tensors) for _, _, tensors in done)
        details = {
            "algo": c.algo,
            "block_size": c.block_size,
            "symmetric": c.symmetric,
            "layers": table,
            "sensitive": sorted(sensitive),
            "gptq_fallback": fallback,
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "seconds": round(time.perf_counter() - t0, 3),
            "calibration_runs": min(
                len(feeds), c.calib_runs if c.algo == "gptq" else min(c.calib_runs, DATA_FREE_RUNS)
            ),
        }
        if sensitive:
            notes.append(
                f"{len(sensitive)} sensitive layer(s) kept at {c.sensitive_bits} bits: "
                + ", ".join(sorted(sensitive)[:8])
            )
        sites = [x.name for x in layers]
        return PassResult(True, len(sites), notes[:20], sites=sites, details=details, model=model)

    def _quantize(
        self, model: onnx.ModelProto, layers: list[Layer], ctx: PassContext, notes: list[str]
    ) -> list[tuple[Layer, Quantized, float, float]]:
        """Each layer quantized at 4 bits, with its 4-bit and 8-bit errors; Hessians are
        accumulated a chunk of input tensors at a time and dropped after use."""
        c = self.config
        runs = c.calib_runs if c.algo == "gptq" else min(c.calib_runs, DATA_FREE_RUNS)
        probe = Probe(model, ctx.feeds, runs, c.probe_mb << 20)
        by_input: dict[str, list[Layer]] = {}
        out: list[tuple[Layer, Quantized, float, float]] = []
        for x in layers:
            if x.kind == "gather":
                out.append(self._one(x, None, None))
            else:
                by_input.setdefault(x.x, []).append(x)
        dims = {name: group[0].weight.shape[0] for name, group in by_input.items()}
        extra = {name: 12 * k * k for name, k in dims.items()}  # two sums and their mean
        chunks = probe.chunks(list(by_input), extra)
        for i, chunk in enumerate(chunks):
            hessians = _hessians(probe, chunk, dims)
            self._few_rows_note(hessians, dims, notes)
            for name in chunk:
                out += self._group(by_input[name], hessians[name], notes)
            del hessians
            ctx.report_progress("quantize-int4", i + 1, len(chunks))
        order = {x.name: i for i, x in enumerate(layers)}
        return sorted(out, key=lambda r: order[r[0].name])

    def _group(
        self, layers: list[Layer], hess: Hessian, notes: list[str]
    ) -> list[tuple[Layer, Quantized, float, float]]:
        """The layers reading one input tensor (Q, K and V share it, and GPTQ's factors)."""
        c, h = self.config, hess.full()
        if c.algo != "gptq":
            return [self._one(x, self._data_free(x.weight, 4), h) for x in layers]
        halves = hess.halves()
        fit = inverse_cholesky(halves[0], c.damp) if halves else None
        full: np.ndarray | None = None
        out = []
        for x in layers:
            if halves is not None and not gptq_generalizes(x.weight, fit, halves[1], self._q):
                notes.append(FALLBACK + x.name)
                out.append(self._one(x, self._data_free(x.weight, 4), h))
                continue
            full = inverse_cholesky(h, c.damp) if full is None else full
            q = quantize_gptq(x.weight, None, 4, c.block_size, c.symmetric, u=full)
            out.append(self._one(x, q, h))
        return out

    def _q(self, w: np.ndarray, u: np.ndarray | None) -> Quantized:
        """GPTQ for the factor ``u``, or the data-free quantizer when ``u`` is None."""
        c = self.config
        if u is None:
            return self._data_free(w, 4)
        return quantize_gptq(w, None, 4, c.block_size, c.symmetric, u=u)

    def _data_free(self, w: np.ndarray, bits: int) -> Quantized:
        c = self.config
        if c.algo != "rtn" and not c.symmetric:
            return quantize_hqq(w, bits, c.block_size, c.hqq_iters)
        return quantize_rtn(w, bits, c.block_size, c.symmetric)

    def _one(
        self, layer: Layer, q: Quantized | None, h: np.ndarray | None
    ) -> tuple[Layer, Quantized, float, float]:
        """``layer`` quantized as ``q`` with its error, and the error at ``sensitive_bits``."""
        c, w = self.config, layer.weight
        if layer.kind == "gather":  # a table has no inputs to weigh: data-free
            q = self._data_free(w, c.embedding_bits)
            return layer, q, relative_error(w, q.dequantize(), None), 0.0
        q8 = quantize_rtn(w, c.sensitive_bits, c.block_size, c.symmetric)
        return layer, q, relative_error(w, q.dequantize(), h), relative_error(w, q8.dequantize(), h)

    def _few_rows_note(self, hessians: dict[str, Hessian], dims, notes: list[str]) -> None:
        few = [n for n, hs in hessians.items() if hs.rows < dims[n]]
        if few and self.config.algo == "gptq":
            notes.append(
                f"gptq: {hessians[few[0]].rows} calibration rows for K={dims[few[0]]} "
                f"('{few[0]}'{f' and {len(few) - 1} more' if len(few) > 1 else ''}): "
                "the Hessian is singular; give more --data"
            )

    def _sensitive(self, quantized: list[tuple[Layer, Quantized, float, float]]) -> set[str]:
        c = self.config
        if c.sensitive_bits == 4 or c.max_sensitive <= 0 or len(quantized) < 2:
            return set()
        ranked = [r for r in quantized if r[0].kind == "matmul"]
        if len(ranked) < 2:
            return set()
        errors = np.array([e for _, _, e, _ in ranked])
        limit = c.sensitivity * float(np.median(errors))
        worst = sorted(ranked, key=lambda r: -r[2])
        most = int(np.floor(c.max_sensitive * len(ranked)))
        return {r[0].name for r in worst[:most] if r[2] > limit}


def _grouped(skipped: list[str]) -> list[str]:
    """``"node: why"`` lines as one note per reason, with the count and the first nodes."""
    by: dict[str, list[str]] = {}
    for line in skipped:
        node, _, why = line.partition(": ")
        by.setdefault(why, []).append(node)
    return [
        f"{len(nodes)} left float ({why}): {', '.join(nodes[:3])}{' …' if len(nodes) > 3 else ''}"
        for why, nodes in by.items()
    ]


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


@dataclass
class Hessian:
    """``XᵀX`` of one input tensor, summed separately over the even and the odd calibration
    runs (GPTQ fits on one half and is checked on the other), with their row counts."""

    even: np.ndarray
    odd: np.ndarray
    rows_even: int = 0
    rows_odd: int = 0

    @property
    def rows(self) -> int:
        return self.rows_even + self.rows_odd

    def full(self) -> np.ndarray:
        return (self.even + self.odd) / max(self.rows, 1)

    def halves(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(fit, check) means, or None when a half has no rows."""
        if not self.rows_even or not self.rows_odd:
            return None
        return self.even / self.rows_even, self.odd / self.rows_odd


def _hessians(probe: Probe, names: list[str], dims: dict[str, int]) -> dict[str, Hessian]:
    """The :class:`Hessian` of each named input tensor over the calibration runs (float32:
    one BLAS product per run)."""
    acc = {
        n: Hessian(np.zeros((dims[n],) * 2, np.float32), np.zeros((dims[n],) * 2, np.float32))
        for n in names
    }
    for i, values in enumerate(probe.stream(names)):
        for n, v in values.items():
            x = np.asarray(v, np.float32).reshape(-1, dims[n])
            h = acc[n]
            if i % 2:
                h.odd += x.T @ x
                h.rows_odd += x.shape[0]
            else:
                h.even += x.T @ x
                h.rows_even += x.shape[0]
    return acc


def _row(layer: Layer, q: Quantized, err: float, err4: float) -> dict:
    k, n = layer.weight.shape
    return {
        "node": layer.name,
        "op": "GatherBlockQuantized" if layer.kind == "gather" else "MatMulNBits",
        "K": k,
        "N": n,
        "bits": q.bits,
        "error": float(f"{err:.4g}"),
        "error_4bit": float(f"{err4:.4g}"),
    }


def _name_nodes(g: onnx.GraphProto) -> None:
    """Give unnamed or duplicate-named main-graph nodes a deterministic unique name (sites
    and the rewrite key nodes by name)."""
    seen: set[str] = set()
    for i, n in enumerate(g.node):
        if not n.name or n.name in seen:
            name = f"{n.name or n.op_type}_{i}"
            while name in seen:
                name += "_"
            n.name = name
        seen.add(n.name)
