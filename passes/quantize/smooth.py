"""SmoothQuant-style per-channel smoothing of MatMul inputs (an exact float rewrite).

For ``Y = X·W`` with a constant ``W [K, N]``, activation outliers sit in a few input channels
``j`` of ``X`` and make one per-tensor activation scale coarse for every other channel. With

    ``s_j = max|X_j|^α / max_n |W_jn|^(1-α)``   (α = ``smooth``, 0.5 by default)

the product is unchanged, ``X·W = (X·diag(s)^-1)·(diag(s)·W)``, but the difficulty moves from
the activations (channel ranges divided by ``s``) to the weights (rows multiplied by ``s``),
which are quantized per output channel anyway. MatMuls that read the same ``X`` share one ``s``
(the max over their weights' rows). ``X·diag(s)^-1`` is folded into the producing
LayerNormalization's γ and β when every reader of ``X`` is smoothed (``γ' = γ/s``,
``β' = β/s``), and is otherwise one ``Mul(X, 1/s)`` feeding the smoothed MatMuls only (a
residual reader keeps the original ``X``).

``max|X_j|`` is streamed over the calibration runs (a running per-channel max; memory is one
vector per tensor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxopt import phases
from onnxopt.graph import const_value, is_graph_output, to_graph, to_model, unique_name

from .calibrate import TensorStats

logger = logging.getLogger(__name__)

EPS = 1e-5


@dataclass
class SmoothResult:
    model: onnx.ModelProto
    groups: int = 0  # input tensors smoothed
    matmuls: int = 0
    folded: int = 0  # groups folded into a LayerNormalization
    notes: list[str] = field(default_factory=list)
    #: the smoothed groups' MatMul input tensors, as named in ``model``
    tensors: list[str] = field(default_factory=list)
    #: each smoothed group's input (as named before) -> (the tensor its MatMuls read now,
    #: the scales ``s`` it was divided by)
    scales: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)


def smooth_groups(graph: gs.Graph, names: set[str] | None = None) -> dict[str, list[gs.Node]]:
    """Input tensor name -> the MatMuls (constant 2-D float weight) that read it."""
    out: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op != "MatMul" or (names is not None and node.name not in names):
            continue
        x, w = node.inputs[0], node.inputs[1]
        if not isinstance(x, gs.Variable) or not isinstance(w, gs.Constant):
            continue
        if np.dtype(w.dtype) != np.float32 or len(w.shape) != 2:
            continue
        out.setdefault(x.name, []).append(node)
    return out


def channel_absmax(
    model: str | bytes | onnx.ModelProto,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Running ``max|x|`` over every axis but the last, per tensor, over ``runs``."""
    return channel_stats(model, tensors, runs, progress=progress)[0]


@phases.timed(phases.CALIBRATION)
def channel_stats(
    model: str | bytes | onnx.ModelProto,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    *,
    rows: int = 0,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    outputs: list[dict[str, np.ndarray]] | None = None,
    keep: list[str] = (),
    stats: dict[str, TensorStats] | None = None,
    signed: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    observe: Callable[[str, np.ndarray], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(running ``max|x|`` over every axis but the last, up to ``rows`` rows of each tensor
    drawn evenly over ``runs``: [rows, channels]) per tensor. ``outputs``, when given, gets
    each run's ``{name: value}`` of the ``keep`` outputs (the model's own, which the session
    computes anyway). ``stats``: calibration statistics (``{graph output: TensorStats}``) of
    more tensors, exposed as outputs too, streamed in the same runs; ``signed`` gets each
    tensor's per-channel (min, max) (non-finite values left out); ``observe`` gets every
    exposed tensor's value in each run (the output's name, the value)."""
    from .collect import open_session, run_keeping

    sess = open_session(model)
    tensors = list(tensors)
    extra = [t for t in (stats or {}) if t not in set(tensors)]
    rng = np.random.default_rng(seed)
    per_run = -(-rows // max(1, len(runs))) if rows else 0
    acc: dict[str, np.ndarray] = {}
    samples: dict[str, list[np.ndarray]] = {}
    for i, feed in enumerate(runs):
        values, kept = run_keeping(
            sess, tensors + extra, feed, list(keep) if outputs is not None else None
        )
        if kept is not None:
            outputs.append(kept)
        if stats is not None:
            for name, v in zip(tensors + extra, values, strict=True):
                if name in stats:
                    stats[name].update(v)
        if observe is not None:
            for name, v in zip(tensors + extra, values, strict=True):
                observe(name, v)
        for name, v in zip(tensors, values[: len(tensors)], strict=True):
            v = np.asarray(v, np.float32).reshape(-1, v.shape[-1])
            m = np.abs(v).max(axis=0)
            m = np.where(np.isfinite(m), m, 0.0)
            acc[name] = m if name not in acc else np.maximum(acc[name], m)
            if signed is not None:
                lo = np.where(np.isfinite(v), v, np.inf).min(axis=0)
                hi = np.where(np.isfinite(v), v, -np.inf).max(axis=0)
                if name in signed:
                    lo, hi = np.minimum(signed[name][0], lo), np.maximum(signed[name][1], hi)
                signed[name] = (lo, hi)
            if per_run:
                pick = rng.choice(len(v), min(per_run, len(v)), replace=False)
                samples.setdefault(name, []).append(v[np.sort(pick)])
        del values
        if progress is not None:
            what = "smoothing and calibration statistics" if stats else "smoothing statistics"
            progress(what, i + 1, len(runs))
    return acc, {k: np.concatenate(v)[:rows] for k, v in samples.items()}


def smoothing_scales(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)``; 1 where a channel is all zero."""
    x_max = np.asarray(x_max, np.float64)
    w_max = np.asarray(w_max, np.float64)
    ok = (x_max > 0) & (w_max > 0)
    s = np.ones_like(x_max)
    s[ok] = np.power(x_max[ok], alpha) / np.power(w_max[ok], 1.0 - alpha)
    return np.clip(s, EPS, 1.0 / EPS).astype(np.float32)


def apply_smoothing(
    model: onnx.ModelProto,
    x_max: dict[str, np.ndarray],
    alpha: float | dict[str, float],
    names: set[str] | None = None,
) -> SmoothResult:
    """Smooth the MatMul groups whose input has statistics in ``x_max``.

    Args:
        model: float model (node names unique).
        x_max: input tensor name -> per-channel ``max|x|`` (see :func:`channel_absmax`).
        alpha: migration strength in ``[0, 1]`` (0: no change, 1: all onto the weights), or
            one per input tensor (groups not in it are left alone).
        names: MatMul node names allowed (None: all).
    """
    alphas = alpha if isinstance(alpha, dict) else None
    for a in alphas.values() if alphas is not None else [alpha]:
        if not 0.0 <= a <= 1.0:
            raise ValueError(f"smooth alpha must be in [0, 1], not {a}")
    graph = to_graph(model)
    res = SmoothResult(model)
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def fresh(base: str) -> str:
        name = unique_name(graph, base, taken)
        taken.add(name)
        return name

    for x_name, mms in smooth_groups(graph, names).items():
        xm = x_max.get(x_name)
        x = mms[0].inputs[0]
        k = int(mms[0].inputs[1].shape[0])
        if alphas is not None and x_name not in alphas:
            continue
        if xm is None or xm.shape != (k,):
            res.notes.append(f"{x_name}: no per-channel statistics of length {k}; not smoothed")
            continue
        weights = [np.asarray(m.inputs[1].values, np.float32) for m in mms]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = smoothing_scales(xm, w_max, alphas[x_name] if alphas is not None else alpha)
        for m, w in zip(mms, weights, strict=True):
            m.inputs[1] = gs.Constant(
                fresh(f"{m.name or x_name}_smoothed_W"), (w * s[:, None]).astype(np.float32)
            )
        if _fold_into_layernorm(graph, x, mms, s, fresh):
            res.folded += 1
            res.tensors.append(x.name)
            res.scales[x_name] = (x.name, s)
        else:
            inv = gs.Constant(fresh(f"{x_name}_smooth_inv_scale"), (1.0 / s).astype(np.float32))
            xs = gs.Variable(fresh(f"{x_name}_smoothed"), dtype=np.float32, shape=x.shape)
            graph.nodes.append(
                gs.Node("Mul", fresh(f"{x_name}_smooth_Mul"), inputs=[x, inv], outputs=[xs])
            )
            for m in mms:
                m.inputs[0] = xs
            res.tensors.append(xs.name)
            res.scales[x_name] = (xs.name, s)
        res.groups += 1
        res.matmuls += len(mms)
    if res.groups:
        graph.toposort()
        res.model = to_model(graph, like=model)
    return res


def _fold_into_layernorm(
    graph: gs.Graph, x: gs.Variable, mms: list[gs.Node], s: np.ndarray, fresh: Callable[[str], str]
) -> bool:
    """``γ' = γ/s``, ``β' = β/s`` when ``x`` comes from a LayerNormalization read only by ``mms``."""
    ln = x.inputs[0] if len(x.inputs) == 1 else None
    if ln is None or ln.op != "LayerNormalization" or is_graph_output(graph, x):
        return False
    if (
        ln.attrs.get("axis", -1) not in (-1, len(x.shape or []) - 1)
        or len(ln.outputs) > 1
        and any(o.outputs for o in ln.outputs[1:])
    ):
        return False
    ids = {id(m) for m in mms}
    if any(id(c) not in ids for c in x.outputs):
        return False
    gamma = const_value(ln.inputs[1]) if len(ln.inputs) > 1 else None
    if gamma is None or gamma.shape != s.shape:
        return False
    beta = const_value(ln.inputs[2]) if len(ln.inputs) > 2 and ln.inputs[2].name else None
    if beta is not None and beta.shape != s.shape:
        return False
    ln.inputs[1] = gs.Constant(
        fresh(f"{ln.name or x.name}_smoothed_scale"), (gamma / s).astype(np.float32)
    )
    if beta is not None:
        ln.inputs[2] = gs.Constant(
            fresh(f"{ln.name or x.name}_smoothed_bias"), (beta / s).astype(np.float32)
        )
    return True
