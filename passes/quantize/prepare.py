"""The float model quantize-int8 works on, before any rounding: shapes inferred, aliased
initializers read directly, nodes named, then (optionally) cross-layer equalization
(:mod:`.equalize`) and SmoothQuant-style smoothing (:mod:`.smooth`; per-layer strength on
transformers, :mod:`.transformer`). Every step here is exact in float (CLE through a Clip
only with ``equalize_clip="relu"``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxopt.contract import PassContext
from onnxopt.graph import to_graph
from onnxopt.model import with_inferred_shapes

from .adaround import RowSampler
from .build import named, resolve_const_identities
from .calibrate import TensorStats
from .collect import probe_model
from .config import QuantizeConfig
from .equalize import equalize
from .smooth import apply_smoothing, channel_stats, smooth_groups
from .transformer import choose_alphas

logger = logging.getLogger(__name__)

#: rows per MatMul input sampled to choose a per-layer smoothing strength
SMOOTH_ROWS = 512


@dataclass
class Collected:
    """Calibration statistics :func:`smooth` streams in the runs it reads anyway: ``stats``
    holds one :class:`.calibrate.TensorStats` per tensor to calibrate, named as in the model
    it is given. Once read (``read``), the tensors the smoothed MatMuls read now get
    statistics derived from their inputs' per-channel minima and maxima divided by the
    scales (a minimum and a maximum only, for a min/max calibrator: the smoothed inputs'
    own, ``smoothed_calibrator``). One pass over the data instead of two: on the PP-OCRv5
    recognizer the statistics of its CTC head's input cost a pass (2.7 s) before a
    calibration that read the same runs again."""

    stats: dict[str, TensorStats]
    read: bool = False
    #: error feedback's input rows, drawn in the same runs from the tensors of ``stats``
    #: they name (others give none); the smoothed ones then scaled as the MatMuls read them
    rows: RowSampler | None = None


def prepare(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes inferred, initializers read through Identity, nodes uniquely named."""
    try:
        inferred = with_inferred_shapes(model)
    except Exception as e:  # noqa: BLE001 - a model shape inference rejects is still quantized
        logger.debug("shape inference failed: %s", e)
        inferred = model
    return named(resolve_const_identities(inferred, in_place=inferred is not model))


def equalize_layers(
    base: onnx.ModelProto, c: QuantizeConfig, ctx: PassContext
) -> tuple[int, list[str]]:
    """Cross-layer equalization of the allowed layers, in place. Returns (layer pairs
    equalized, notes)."""
    exclude = set(c.exclude)
    names = {
        n.name
        for n in base.graph.node
        if n.name not in exclude and n.op_type not in exclude and ctx.allow(n.name)
    }
    return equalize(base, names, clip=c.equalize_clip)


def smooth(
    base: onnx.ModelProto,
    c: QuantizeConfig,
    ctx: PassContext,
    attention: bool,
    notes: list[str],
    outputs: list[dict[str, np.ndarray]] | None = None,
    only: set[str] | None = None,
    collect: Collected | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any], set[str]]:
    """Smooth MatMul inputs: one strength for all (``smooth`` a number) or per input (``auto``
    on a graph with attention). Returns (model, summary for the report, the smoothed MatMul
    input tensors). ``outputs``, when given, gets ``base``'s outputs on the
    ``ctx.feeds.subset(c.smooth_runs)`` runs its statistics are read on (none when it reads
    none). ``only``: the MatMuls that may be smoothed (None: all), those kept in int8.
    ``collect``: calibration statistics read in the same runs (see :class:`Collected`; its
    tensors are main-graph tensors of ``base``)."""
    if c.smooth is None or (c.smooth == "auto" and not attention):
        return base, {}, set()
    exclude = set(c.exclude)
    graph = to_graph(base)
    names = {
        n.name
        for n in graph.nodes
        if n.op == "MatMul"
        and n.name not in exclude
        and "MatMul" not in exclude
        and ctx.allow(n.name)
        and (only is None or n.name in only)
    }
    groups = smooth_groups(graph, names)
    if not groups:
        kept = "" if only is None else " kept in int8"
        notes.append(f"smooth: no MatMul{kept} with a constant 2-D weight")
        return base, {}, set()
    weights = {
        x: [np.asarray(m.inputs[1].values, np.float32) for m in mms] for x, mms in groups.items()
    }
    foldable = {x for x, mms in groups.items() if _foldable(mms)}
    del graph, groups
    tensors = sorted(weights)
    runs = ctx.feeds.subset(c.smooth_runs).runs
    rows = SMOOTH_ROWS if c.smooth == "auto" else 0
    # a session over the model as it is (mapped weights shared, never saved to a file)
    calib = list(collect.stats) if collect is not None else []
    probe, exposed = probe_model(base, tensors + [t for t in calib if t not in set(tensors)])
    signed: dict[str, tuple[np.ndarray, np.ndarray]] | None = {} if collect is not None else None
    x_max, samples = channel_stats(
        probe,
        tensors,
        runs,
        rows=rows,
        seed=c.seed,
        progress=ctx.progress,
        outputs=outputs,
        keep=[o.name for o in base.graph.output],
        stats={exposed[t]: collect.stats[t] for t in calib} if collect is not None else None,
        signed=signed,
        observe=_observer(collect, exposed),
    )
    del probe
    if collect is not None:
        collect.read = True
    if c.smooth == "auto":
        alpha, why = choose_alphas(samples, x_max, weights, foldable)
        notes.extend(why[:10])
        if not alpha:
            notes.append("smooth(auto): no MatMul input gains from smoothing")
            return base, {"auto": True, "groups": 0}, set()
    else:
        alpha = float(c.smooth)
    res = apply_smoothing(base, x_max, alpha, names)
    notes.extend(res.notes[:10])
    if collect is not None and signed is not None:
        for x_name, (read, s) in res.scales.items():
            collect.stats[read] = _divided(read, signed[x_name], s, c.bins)
            if collect.rows is not None:
                collect.rows.scale(x_name, read, s)
    how = "auto" if isinstance(alpha, dict) else f"alpha={alpha:g}"
    notes.append(
        f"smooth({how}): {res.matmuls} MatMuls over {res.groups} inputs "
        f"({res.folded} folded into LayerNorm)"
    )
    info = {"groups": res.groups, "matmuls": res.matmuls, "folded": res.folded}
    if isinstance(alpha, dict):
        info["alphas"] = {k: float(v) for k, v in sorted(alpha.items())[:50]}
    return res.model, info, set(res.tensors)


def _observer(
    collect: Collected | None, exposed: dict[str, str]
) -> Callable[[str, np.ndarray], None] | None:
    """Each run's exposed values to ``collect``'s row sampler, by tensor name."""
    if collect is None or collect.rows is None:
        return None
    rows, back = collect.rows, {v: k for k, v in exposed.items()}
    return lambda name, value: rows.observe(back.get(name, name), value)


def _divided(
    name: str, signed: tuple[np.ndarray, np.ndarray], s: np.ndarray, bins: int
) -> TensorStats:
    """Statistics (min and max) of ``x / s`` from ``x``'s per-channel minima and maxima: the
    smoothing ``Mul`` multiplies by ``1/s`` in float32, and rounding keeps the order, so a
    channel's extremes are its extremes times ``1/s`` (a scale folded into a LayerNorm
    rounds on another path, within float32's precision)."""
    inv = (1.0 / s).astype(np.float32)
    lo, hi = signed[0].astype(np.float32) * inv, signed[1].astype(np.float32) * inv
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    out = TensorStats(name, bins)
    if lo.size and hi.size:
        out.min, out.max, out.count = float(lo.min()), float(hi.max()), 1
    return out


def _foldable(mms: list) -> bool:
    """Whether the smoothing scales of the MatMuls ``mms`` fold into a LayerNorm's γ and β."""
    x = mms[0].inputs[0]
    ln = x.inputs[0] if len(x.inputs) == 1 else None
    ids = {id(m) for m in mms}
    return ln is not None and ln.op == "LayerNormalization" and all(id(u) in ids for u in x.outputs)
