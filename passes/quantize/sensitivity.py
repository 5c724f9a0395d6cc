"""Per-layer sensitivity and output shift of every site, in one instrumented run.

For each site ``k`` (a layer ``y = f(x, W)``) the probe model computes, beside the float graph,
the same layer with only that layer quantized, on the float model's own input:

    ``y'_k = f(DQ(Q(x)), DQ(W_q))``,  ``d_k = y'_k − y_k``

and returns per output channel ``c`` (axis 1 of a Conv, the last axis of a MatMul/Gemm; the
whole tensor for element-wise sites) the sums ``Σd``, ``Σd²`` and ``Σy²`` and the element count
``n``, streamed over the runs (memory: a few vectors per site). Then

    ``shift_c = Σd_c / n_c``                       (the mean output error: bias correction)
    ``noise = Σ_c (Σd²_c − (Σd_c)² / n_c)``          (what is left once the shift is removed)
    ``SQNR_k = 10·log10(Σy² / noise)``              (dB; low = sensitive)

MatMuls with a constant weight also get the dynamic-int8 form, ``x`` quantized per run by
``DynamicQuantizeLinear``, and its SQNR: where static loses and dynamic does not, the planner
can fall back to dynamic for that MatMul only.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxopt import phases, weights
from onnxopt.graph import opset_version
from onnxopt.runner import contiguous, dequantized, fold_fits
from onnxopt.weights import array as tensor_array
from onnxopt.weights import weight_bytes

from .collect import _batches, batch_groups, open_session
from .placement import Plan
from .qdq import QParams, WeightQ, quantize_weight, weight_params

logger = logging.getLogger(__name__)


@dataclass
class SiteStats:
    """Streaming sums of one site's instrumented outputs (see the module docstring)."""

    name: str
    channels: int = 0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None
    sig: float = 0.0
    count: float = 0.0  # elements per channel
    noise_dyn: float | None = None

    def add(self, s1: np.ndarray, s2: np.ndarray, sig: np.ndarray, size: int) -> None:
        s1, s2 = np.atleast_1d(s1).astype(np.float64), np.atleast_1d(s2).astype(np.float64)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.sig += float(np.sum(sig, dtype=np.float64))
        self.channels = len(s1)
        self.count += float(size) / max(1, len(s1))

    @property
    def shift(self) -> np.ndarray:
        return self.s1 / max(self.count, 1.0)

    def noise(self, corrected: bool) -> float:
        if self.s2 is None:
            return 0.0
        if not corrected:
            return float(self.s2.sum())
        return float(np.maximum(self.s2 - self.s1**2 / max(self.count, 1.0), 0.0).sum())

    def sqnr(self, corrected: bool = False) -> float:
        return _db(self.sig, self.noise(corrected))

    @property
    def sqnr_dynamic(self) -> float | None:
        return None if self.noise_dyn is None else _db(self.sig, self.noise_dyn)


def _db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


@dataclass
class _Probe:
    """What the instrumented copy of a model adds, and the outputs it reads."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    reads: dict[str, tuple[str, ...]] = field(default_factory=dict)  # site -> output names
    dyn: dict[str, str] = field(default_factory=dict)  # site -> dynamic noise output
    qdq: dict[str, str] = field(default_factory=dict)  # tensor -> its QDQ'd copy
    skipped: list[str] = field(default_factory=list)


class Instrument:
    """Builds the probe of :func:`measure` for ``plan``'s sites.

    Args:
        model: the prepared float model (shapes inferred; node names unique).
        plan: a plan made on it (its sites and activation groups).
        params: per-group activation parameters.
        weights: weights quantized beforehand (learned rounding), by node name.
        per_axis: per-channel weights allowed (opset >= 13).
        reduce_range: 7-bit weights.
        dynamic: also measure the dynamic-int8 form of MatMul/Gemm sites.
        fold: each site's int8 weight goes in dequantized (float32, as onnxruntime's
            DequantizeLinear computes it: the statistics are the same bit for bit) rather than
            as int8 behind a DequantizeLinear that runs on every call (BERT-base: 85 M weights
            a call). None: when the float weights fit (:func:`onnxopt.runner.fold_fits`).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        plan: Plan,
        params: dict[int, QParams],
        weights: dict[str, WeightQ],
        *,
        per_axis: bool,
        reduce_range: bool,
        dynamic: bool,
        fold: bool | None = None,
    ) -> None:
        self.model, self.plan, self.params, self.weights = model, plan, params, weights
        self.per_axis, self.reduce_range, self.dynamic = per_axis, reduce_range, dynamic
        self.opset = opset_version(model)
        self.ranks = _ranks(model)
        self.consts = {t.name: t for t in model.graph.initializer}
        self.p = _Probe()
        self._n = 0
        if fold is None:
            fold = fold_fits(weight_bytes(model))  # the folded weights are at most these
        self.fold = fold

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}__sens{self._n}"

    def build(self) -> _Probe:
        nodes = {n.name: n for n in self.model.graph.node}
        for name, site in self.plan.sites.items():
            why = self._site(nodes[name], site)
            if why:
                self.p.skipped.append(f"{name}: {why}")
        return self.p

    def _qdq_input(self, t: str) -> str | None:
        if t in self.p.qdq:
            return self.p.qdq[t]
        gid = self.plan.group.get(t)
        if gid is None or gid not in self.params:
            return None
        qp = self.params[gid]
        s, z = self._name(t + "_s"), self._name(t + "_z")
        self.p.inits.append(numpy_helper.from_array(np.array(qp.scale, np.float32), s))
        self.p.inits.append(numpy_helper.from_array(np.array(qp.zero_point, qp.dtype), z))
        q, dq = self._name(t + "_q"), self._name(t + "_dq")
        self.p.nodes.append(helper.make_node("QuantizeLinear", [t, s, z], [q], self._name("Q")))
        self.p.nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [dq], self._name("DQ")))
        self.p.qdq[t] = dq
        return dq

    def _weight(self, node: onnx.NodeProto, index: int, axis: int | None) -> str | None:
        t = self.consts.get(node.input[index])
        if t is None:
            return None
        w = tensor_array(t).astype(np.float32)
        axis = axis if self.per_axis else None
        given = self.weights.get(node.name)
        if given is not None and given.q.shape == w.shape and given.axis == axis:
            scale, wq = given.scale, given.q
        else:
            scale = weight_params(w, axis, self.reduce_range)
            wq = quantize_weight(w, scale, axis, self.reduce_range)
        names = [self._name(node.name + k) for k in ("_wq", "_ws", "_wz", "_wdq")]
        if self.fold:
            shape = [-1 if i == axis else 1 for i in range(wq.ndim)] if axis is not None else []
            s = scale.astype(np.float32).reshape(shape)
            self.p.inits.append(numpy_helper.from_array(dequantized(wq, s), names[3]))
            return names[3]
        self.p.inits.append(numpy_helper.from_array(wq, names[0]))
        self.p.inits.append(numpy_helper.from_array(scale.astype(np.float32), names[1]))
        self.p.inits.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2]))
        attrs = {"axis": axis} if axis is not None and scale.ndim == 1 else {}
        self.p.nodes.append(
            helper.make_node("DequantizeLinear", names[:3], [names[3]], self._name("DQW"), **attrs)
        )
        return names[3]

    def _site(self, node: onnx.NodeProto, site) -> str:
        y = node.output[0]
        rank = self.ranks.get(y)
        if rank is None:
            return "output rank unknown"
        inputs = list(node.input)
        for i in site.acts:
            dq = self._qdq_input(node.input[i])
            if dq is None:
                return "an input has no calibrated range"
            inputs[i] = dq
        if site.weight is not None:
            wdq = self._weight(node, site.weight, site.axis)
            if wdq is None:
                return "weight is not an initializer"
            inputs[site.weight] = wdq
        axis = 1 if node.op_type in ("Conv", "ConvTranspose") else rank - 1
        if site.weight is None or rank < 2:
            axis = None  # element-wise sites and activation x activation MatMuls: one total
        self.p.reads[node.name] = self._diff(node, inputs, y, rank, axis, stats=True)
        if (
            self.dynamic
            and node.op_type in ("MatMul", "Gemm")
            and site.weight is not None
            and site.acts == [0]
        ):
            xq, xs, xz, xd = (self._name(node.name + k) for k in ("_dq", "_ds", "_dz", "_dd"))
            self.p.nodes.append(
                helper.make_node("DynamicQuantizeLinear", [node.input[0]], [xq, xs, xz])
            )
            self.p.nodes.append(helper.make_node("DequantizeLinear", [xq, xs, xz], [xd]))
            self.p.dyn[node.name] = self._diff(node, [xd, *inputs[1:]], y, rank, None)[1]
        return ""

    def _diff(
        self,
        node: onnx.NodeProto,
        inputs: list[str],
        y: str,
        rank: int,
        axis: int | None,
        stats: bool = False,
    ) -> tuple[str, ...]:
        """Outputs (Σd, Σd², Σy², size) of a copy of ``node`` on ``inputs`` against ``y``."""
        yq, d, d2 = (self._name(node.name + k) for k in ("_y", "_d", "_d2"))
        copy = helper.make_node(node.op_type, inputs, [yq], self._name(node.name))
        copy.attribute.extend(node.attribute)
        copy.domain = node.domain
        self.p.nodes += [
            copy,
            helper.make_node("Sub", [yq, y], [d]),
            helper.make_node("Mul", [d, d], [d2]),
        ]
        axes = [i for i in range(rank) if i != axis]
        outs = [self._sum(d, axes), self._sum(d2, axes)]
        if stats:
            y2, size = self._name(node.name + "_y2"), self._name(node.name + "_n")
            self.p.nodes += [
                helper.make_node("Mul", [y, y], [y2]),
                helper.make_node("Size", [y], [size]),
            ]
            outs += [self._sum(y2, axes), size]
        self.p.outputs.extend(outs if stats else outs[1:])
        return tuple(outs)

    def _sum(self, x: str, axes: list[int]) -> str:
        out = self._name(x + "_sum")
        if self.opset >= 13:
            a = self._name("axes")
            self.p.inits.append(numpy_helper.from_array(np.array(axes, np.int64), a))
            node = helper.make_node("ReduceSum", [x, a], [out], keepdims=0)
        else:
            node = helper.make_node("ReduceSum", [x], [out], axes=axes, keepdims=0)
        self.p.nodes.append(node)
        return out


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    out = {}
    g = model.graph
    for v in [*g.value_info, *g.output, *g.input]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = len(t.shape.dim)
    return out


@phases.timed(phases.SENSITIVITY)
def measure(
    model: onnx.ModelProto,
    probe: _Probe,
    runs: list[dict[str, np.ndarray]],
    *,
    batch: int,
    dynamic_batch: bool,
    progress: Callable[[str, int, int], None] | None = None,
    parallel: Callable | None = None,
) -> dict[str, SiteStats]:
    """Run the instrumented ``model`` over ``runs``; per-site statistics (module docstring).

    With ``parallel`` (``parallel(fn, [args, ...])``, with a ``workers`` count: a process pool
    or Ray tasks, see :mod:`onnxopt.search.parallel`) the runs are cut between the same
    concatenated groups a single run uses, each part runs where ``parallel`` puts it, and the
    per-call sums come back to be added here in the single run's order: the statistics are
    the same bit for bit. A model whose weights are mapped stays here (they are not sent)."""
    stats = {k: SiteStats(k) for k in probe.reads}
    if not probe.outputs:
        return stats
    groups = batch_groups(runs, batch, dynamic_batch)
    if parallel is not None and len(groups) > 1 and not weights.is_mapped_model(model):
        with _probed(model, probe):
            data = model.SerializeToString()
        args = [
            (data, probe.outputs, [runs[i] for g in groups[a:b] for i in g], batch, dynamic_batch)
            for a, b in contiguous(len(groups), int(getattr(parallel, "workers", 1)))
        ]
        calls = [call for part in parallel(_part_sums, args) for call in part]
    else:
        with _probed(model, probe):
            # mapped weights (a large model) go to onnxruntime as they are: never a saved copy
            sess = open_session(model)
        calls = _sums(sess, probe.outputs, runs, batch, dynamic_batch)
    done = 0
    for got, n in calls:
        for k, (s1, s2, sig, size) in probe.reads.items():
            stats[k].add(got[s1], got[s2], got[sig], int(got[size]))
            if k in probe.dyn:
                dn = float(np.sum(got[probe.dyn[k]], dtype=np.float64))
                stats[k].noise_dyn = (stats[k].noise_dyn or 0.0) + dn
        done += n
        if progress is not None:
            progress("sensitivity and bias", min(done, len(runs)), len(runs))
    return stats


def _sums(sess: Any, outputs: list[str], runs: list, batch: int, dynamic: bool):
    """The instrumented outputs of each onnxruntime call, in order, with its number of runs."""
    for feed, n in _batches(runs, batch, dynamic):
        yield dict(zip(outputs, sess.run(outputs, feed), strict=True)), n


def _part_sums(
    data: bytes, outputs: list[str], runs: list, batch: int, dynamic: bool
) -> list[tuple[dict[str, np.ndarray], int]]:
    """One worker's share of :func:`measure` (a picklable top-level function)."""
    return list(_sums(open_session(data), outputs, runs, batch, dynamic))


@contextlib.contextmanager
def _probed(model: onnx.ModelProto, probe: _Probe) -> Iterator[None]:
    """``model`` plus the probe's nodes and outputs, for the duration (never copied)."""
    g = model.graph
    n_nodes, n_inits, n_outs = len(g.node), len(g.initializer), len(g.output)
    g.node.extend(probe.nodes)
    g.initializer.extend(probe.inits)
    sizes = {v[3] for v in probe.reads.values()}
    g.output.extend(
        helper.make_tensor_value_info(
            o, TensorProto.INT64 if o in sizes else TensorProto.FLOAT, None
        )
        for o in probe.outputs
    )
    try:
        yield
    finally:
        del g.node[n_nodes:]
        del g.initializer[n_inits:]
        del g.output[n_outs:]
