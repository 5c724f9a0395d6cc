"""Learned rounding (AdaRound, Nagel et al. 2020), layer by layer, in numpy.

Each weight of a layer is rounded down or up, ``W̃ = s·clip(⌊W/s⌋ + h(V), −q, q)`` with the
rectified sigmoid ``h(V) = clip(σ(V)(ζ − γ) + γ, 0, 1)`` (ζ = 1.1, γ = −0.1), chosen to minimise
the layer's output error on calibration inputs rather than each weight's own error:

    ``L(V) = Σ_rows ΔW_r·H·ΔW_rᵀ / L_nearest  +  λ·mean(1 − |2h(V) − 1|^β)``

where ``ΔW = W̃ − W``, ``H = E[x xᵀ]`` the Gram matrix of the layer's input rows (im2col patches
of a Conv, per group; the rows of a MatMul input) and ``L_nearest`` the error of rounding to
nearest (so λ needs no tuning per layer). ``V`` starts at rounding to nearest's fractional part;
Adam runs ``iterations`` steps, the first 20 % on the output error alone, then with ``β``
annealed from 20 to 2, which pushes every ``h`` to 0 or 1; the result rounds ``h ≥ 0.5`` up.

Memory is bounded whatever the number of samples: ``H`` is accumulated from at most
``max_rows`` input rows drawn per layer (uniformly over the runs, seeded), and the layers are
processed in chunks whose Gram matrices fit ``memory_mb``, one pass over the data per chunk.
The cost of a step is ``rows × K²`` (``K`` = inputs per output channel); steps are capped per
layer so that a layer costs at most ``max_gflop`` GFLOP, and the notes say so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt import phases
from onnxopt.weights import array as tensor_array
from onnxopt.weights import is_mapped_model

from .collect import open_session, probe_model
from .qdq import WeightQ, weight_params

logger = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1
#: input rows a layer's Gram matrix waits for before they are added to it (:func:`gram_matrices`)
FLUSH_ROWS = 512
#: input rows a layer's Gram matrix is read from, at most (:func:`learn_rounding`)
MAX_ROWS = 2048


@dataclass(frozen=True)
class Layer:
    """A weighted layer as AdaRound sees it: ``rows`` of weights per group against inputs."""

    name: str
    op: str
    input: str
    weight: np.ndarray  # as stored
    axis: int | None  # per-channel axis of the stored weight
    attrs: dict

    def grouped(self) -> np.ndarray:
        """Weights as [groups, rows, K]: a row is one output channel's inputs."""
        w = self.weight
        if self.op == "Conv":
            g = int(self.attrs.get("group", 1))
            return w.reshape(g, w.shape[0] // g, -1)
        if self.op == "Gemm" and self.attrs.get("transB", 0):
            return w[None]
        return w.T[None]

    def ungroup(self, rows: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return rows.reshape(self.weight.shape)
        if self.op == "Gemm" and self.attrs.get("transB", 0):
            return rows[0]
        return rows[0].T

    @property
    def groups(self) -> int:
        return int(self.attrs.get("group", 1)) if self.op == "Conv" else 1

    @property
    def k(self) -> int:
        return self.grouped().shape[2]


def layers_of(
    model: onnx.ModelProto, names: dict[str, int | None]
) -> tuple[list[Layer], list[str]]:
    """The Conv (2-D), MatMul and Gemm layers named in ``names`` (-> per-channel axis) that
    AdaRound can handle, and why the others are skipped."""
    inits = {t.name: t for t in model.graph.initializer}
    out, notes = [], []
    for n in model.graph.node:
        if n.name not in names or n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        if len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = tensor_array(inits[n.input[1]]).astype(np.float32)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv" and (
            w.ndim != 4
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")
        ):
            notes.append(f"{n.name}: adaround handles 2-D Conv with explicit pads only")
            continue
        if n.op_type != "Conv" and w.ndim != 2:
            continue
        out.append(Layer(n.name, n.op_type, n.input[0], w, names[n.name], attrs))
    return out, notes


def _linear_rows(op: str, x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``m`` input rows of a MatMul or Gemm from activation ``x``: [rows, K], drawn
    without replacement, in order."""
    flat = x.reshape(-1, x.shape[-1]) if op == "MatMul" else x.reshape(x.shape[0], -1)
    idx = rng.choice(len(flat), min(m, len(flat)), replace=False)
    return flat[np.sort(idx)]


def _rows(layer: Layer, x: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``m`` input rows of ``layer`` from activation ``x``: [rows, groups, K]."""
    if layer.op != "Conv":
        return _linear_rows(layer.op, x, m, rng)[:, None, :].astype(np.float64)
    kh, kw = layer.weight.shape[2:]
    sh, sw = layer.attrs.get("strides", [1, 1])
    dh, dw = layer.attrs.get("dilations", [1, 1])
    pt, pl, pb, pr = layer.attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    total = n * oh * ow
    pick = np.sort(rng.choice(total, min(m, total), replace=False))
    ni, rest = np.divmod(pick, oh * ow)
    yi, xi = np.divmod(rest, ow)
    rr = (yi * sh)[:, None, None] + (dh * np.arange(kh))[None, :, None]
    cc = (xi * sw)[:, None, None] + (dw * np.arange(kw))[None, None, :]
    patches = xp[
        ni[:, None, None, None], np.arange(c)[None, :, None, None], rr[:, None], cc[:, None]
    ]
    g = layer.groups
    return patches.reshape(len(pick), g, -1).astype(np.float64)


class RowSampler:
    """Input rows of MatMul and Gemm layers drawn as :func:`gram_matrices` draws them (up to
    ``max_rows`` a tensor, the same number from each of the ``runs``, seeded) in a pass over
    the data that reads those tensors anyway, the calibration's (:class:`.prepare.Collected`):
    error feedback's Gram matrices then come from them, without a pass of its own (the PP-OCRv5
    recognizer's CTC head: 1.2 s, a session and 32 runs of the whole model). ``tensors``:
    tensor -> the op reading it (``MatMul`` or ``Gemm``). A tensor not seen in every run
    gives no Gram matrix (:meth:`gram`: None), and its layers get their pass as before."""

    def __init__(self, tensors: dict[str, str], runs: int, *, max_rows: int, seed: int) -> None:
        self.ops = dict(tensors)
        self.runs = runs
        self.max_rows = max_rows
        self.per_run = max(1, math.ceil(max_rows / max(1, runs)))
        self.rng = np.random.default_rng(seed)
        self.rows: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        self.seen: dict[str, int] = dict.fromkeys(tensors, 0)

    def observe(self, tensor: str, x: np.ndarray) -> None:
        """One run's value of ``tensor`` (others are ignored)."""
        if tensor not in self.ops:
            return
        self.seen[tensor] += 1
        if sum(len(r) for r in self.rows[tensor]) < self.max_rows:
            r = _linear_rows(self.ops[tensor], np.asarray(x, np.float32), self.per_run, self.rng)
            self.rows[tensor].append(np.array(r, np.float32))

    def scale(self, tensor: str, read: str, s: np.ndarray) -> None:
        """``tensor``'s rows become those of ``read``, ``tensor · (1/s)``: what a MatMul
        reads once smoothing scaled its input (``read`` may be ``tensor`` itself, for scales
        folded into a LayerNorm)."""
        if tensor not in self.ops:
            return
        inv = (1.0 / np.asarray(s, np.float64)).astype(np.float32)
        rows, op, seen = self.rows.pop(tensor), self.ops.pop(tensor), self.seen.pop(tensor)
        self.rows[read] = [r * inv for r in rows]
        self.ops[read], self.seen[read] = op, seen

    def gram(self, layer: Layer) -> tuple[np.ndarray, np.ndarray] | None:
        """(``H`` [1, K, K], mean row [1, K]) of ``layer``'s input, as :func:`gram_matrices`
        gives them; None when its input was not sampled in every run."""
        t = layer.input
        if layer.op == "Conv" or t not in self.ops or self.seen[t] != self.runs:
            return None
        r = np.concatenate(self.rows[t]).astype(np.float64)
        if r.shape[1] != layer.k:
            return None
        return (r.T @ r / max(1, len(r)))[None], r.mean(axis=0)[None]

    @staticmethod
    def nbytes(k: int, max_rows: int) -> int:
        """The rows one tensor of ``k`` inputs holds at most."""
        return 4 * k * max_rows


def gram_matrices(
    model: onnx.ModelProto,
    layers: list[Layer],
    runs: list[dict[str, np.ndarray]],
    *,
    max_rows: int,
    seed: int,
    progress: Callable[[str, int, int], None] | None = None,
    means: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """``H = E[x xᵀ]`` per layer ([groups, K, K]) over up to ``max_rows`` rows per layer;
    ``means``, when given, gets each layer's mean row ``E[x]`` ([groups, K]) too."""
    rng = np.random.default_rng(seed)
    per_run = max(1, math.ceil(max_rows / max(1, len(runs))))
    acc = {ly.name: np.zeros((ly.groups, ly.k, ly.k)) for ly in layers}
    sums = {ly.name: np.zeros((ly.groups, ly.k)) for ly in layers}
    count = dict.fromkeys(acc, 0)
    tensors = sorted({ly.input for ly in layers})
    # a session over the model as it is (mapped weights shared, never saved to a file)
    probe, exposed = probe_model(model, tensors)
    outputs = [exposed[t] for t in tensors]
    # onnxruntime's optimizations on: the few inputs exposed are graph outputs, kept as they
    # are; not for mapped weights (a large model), which its folds and packing would copy
    sess = open_session(probe, spin=False, optimized=not is_mapped_model(probe))
    del probe
    pending: dict[str, list[np.ndarray]] = {ly.name: [] for ly in layers}

    def flush(ly: Layer) -> None:
        """Add the rows held for ``ly`` to its sums. Rows wait for FLUSH_ROWS of them: each
        addition reads and writes the whole K x K sum (all-MiniLM-L6-v2's six 1536-input
        layers: 19 MB a run, 10 s over its 128 runs, one product a run)."""
        if not pending[ly.name]:
            return
        r = np.concatenate(pending[ly.name])
        pending[ly.name].clear()
        # one group: a BLAS product (einsum's own loop took 13.5 s of the PP-OCRv5
        # recognizer's 63 layers, a 2880-input Conv among them); many (depthwise, K of
        # 9-25): einsum, where a BLAS call per group costs more than its product
        if ly.groups == 1:
            acc[ly.name][0] += r[:, 0].T @ r[:, 0]
        else:
            acc[ly.name] += np.einsum("mgk,mgl->gkl", r, r)
        sums[ly.name] += r.sum(axis=0)

    for i, feed in enumerate(runs):
        got = dict(zip(tensors, sess.run(outputs, feed), strict=True))
        for ly in layers:
            if count[ly.name] >= max_rows:
                continue
            r = _rows(ly, np.asarray(got[ly.input], np.float32), per_run, rng)
            pending[ly.name].append(r)
            count[ly.name] += len(r)
            if sum(len(p) for p in pending[ly.name]) >= FLUSH_ROWS:
                flush(ly)
        if progress is not None:
            progress("adaround: input statistics", i + 1, len(runs))
    for ly in layers:
        flush(ly)
    del sess
    if means is not None:
        means.update({k: v / max(1, count[k]) for k, v in sums.items()})
    return {k: v / max(1, count[k]) for k, v in acc.items()}


def _mm(d: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Batched ``d @ gram`` (a plain 2-D product for one group: much faster in BLAS)."""
    return (d[0] @ gram[0])[None] if len(d) == 1 else np.matmul(d, gram)


def _h(v: np.ndarray) -> np.ndarray:
    return np.clip(1.0 / (1.0 + np.exp(-v)) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround(
    w: np.ndarray,
    scale: np.ndarray,
    gram: np.ndarray,
    *,
    qmax: int,
    iterations: int,
    reg: float = 0.1,
    lr: float = 0.01,
) -> np.ndarray:
    """Learned integer weights for grouped rows ``w`` [G, R, K] with per-row ``scale`` [G, R]
    and input Gram matrices ``gram`` [G, K, K] (module docstring). Deterministic."""
    s = scale[..., None].astype(np.float64)
    ws = w.astype(np.float64) / s
    base = np.floor(ws)
    rest = np.clip(ws - base, 1e-4, 1 - 1e-4)
    v = -np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)

    def err(q: np.ndarray) -> float:
        d = (np.clip(q, -qmax, qmax) * s) - w
        return float(np.sum(_mm(d, gram) * d))

    l0 = max(err(np.round(ws)), 1e-30)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    warm = int(0.2 * iterations)
    for t in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        h = np.clip(sig * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
        q = base + h
        inside = (q >= -qmax) & (q <= qmax)
        d = np.clip(q, -qmax, qmax) * s - w
        grad_h = 2.0 * _mm(d, gram) * s / l0 * inside
        if t > warm:
            beta = 20.0 + (2.0 - 20.0) * (t - warm) / max(1, iterations - warm)
            u = 2.0 * h - 1.0
            grad_h += reg * (-beta * np.abs(u) ** (beta - 1) * np.sign(u) * 2.0) / h.size
        active = (h > 0.0) & (h < 1.0)
        g = grad_h * (ZETA - GAMMA) * sig * (1.0 - sig) * active
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        v -= lr * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
    hard = base + (_h(v) >= 0.5)
    return np.clip(hard, -qmax, qmax)


@phases.timed(phases.TRAINING)
def learn_rounding(
    model: onnx.ModelProto,
    names: dict[str, int | None],
    runs: list[dict[str, np.ndarray]],
    *,
    iterations: int,
    seed: int,
    reduce_range: bool,
    max_rows: int = MAX_ROWS,
    memory_mb: float = 256.0,
    max_gflop: float = 20.0,
    method: str = "adaround",
    progress: Callable[[str, int, int], None] | None = None,
    moved: dict[str, np.ndarray] | None = None,
    rows: RowSampler | None = None,
) -> tuple[dict[str, WeightQ], list[str], dict]:
    """Learned rounding of every layer named in ``names`` (node name -> per-channel weight
    axis): AdaRound (``method="adaround"``), where a layer's cost cap leaves it fewer than 20
    steps error feedback instead (:mod:`.gptq`), or error feedback for all (``"gptq"``).

    Returns (weights by node name, notes, cost details). ``moved``, when given, gets each
    layer's mean output change with its learned weights in place of the same weights rounded
    to nearest, ``E[x]·(W_learned − W_nearest)`` per output channel: what a bias correction
    measured for rounding to nearest moves by. ``rows``: input rows drawn already (a
    layer whose input they cover skips the pass over the data)."""
    from .gptq import gptq

    t0 = time.perf_counter()
    layers, notes = layers_of(model, names)
    qmax = 63 if reduce_range else 127
    out: dict[str, WeightQ] = {}
    steps_total, done, fed_back = 0, 0, 0
    means: dict[str, np.ndarray] | None = {} if moved is not None else None
    sampled = {ly.name: g for ly in layers if rows is not None and (g := rows.gram(ly))}
    for chunk in _chunks(layers, memory_mb):
        rest = [ly for ly in chunk if ly.name not in sampled]
        grams = (
            gram_matrices(
                model, rest, runs, max_rows=max_rows, seed=seed, progress=progress, means=means
            )
            if rest
            else {}
        )
        for ly in chunk:
            if ly.name in sampled:
                grams[ly.name] = sampled[ly.name][0]
                if means is not None:
                    means[ly.name] = sampled[ly.name][1]
        for ly in chunk:
            wg = ly.grouped()
            g, r, k = wg.shape
            scale = weight_params(ly.weight, ly.axis, reduce_range)
            srow = _row_scales(ly, scale, g, r)
            steps = min(iterations, int(max_gflop * 1e9 / max(1.0, 4.0 * g * r * k * k)))
            if method == "gptq" or steps < 20:
                if method != "gptq":
                    notes.append(
                        f"{ly.name}: error feedback instead of adaround (one step costs "
                        f"{4e-9 * g * r * k * k:.2g} GFLOP)"
                    )
                q = gptq(wg, srow, grams[ly.name], qmax=qmax)
                fed_back += 1
            else:
                if steps < iterations:
                    notes.append(f"{ly.name}: adaround {steps} of {iterations} steps (cost cap)")
                q = adaround(wg, srow, grams[ly.name], qmax=qmax, iterations=steps)
                steps_total += steps
            out[ly.name] = WeightQ(ly.ungroup(q).astype(np.int8), scale, ly.axis)
            if moved is not None and means is not None:
                s = srow[..., None].astype(scale.dtype)
                near = np.clip(np.round(wg / s), -qmax, qmax)
                delta = (q - near) * s.astype(np.float64)  # [G, R, K]
                moved[ly.name] = np.einsum("grk,gk->gr", delta, means[ly.name]).reshape(-1)
            done += 1
            if progress is not None:
                progress(f"{method}: layers", done, len(layers))
    seconds = time.perf_counter() - t0
    how = f"{steps_total} adaround steps, {fed_back} by error feedback"
    notes.append(f"{method}: {done} layers, {how}, {seconds:.1f} s")
    return (
        out,
        notes,
        {
            "layers": done,
            "steps": steps_total,
            "error_feedback": fed_back,
            "seconds": round(seconds, 2),
        },
    )


def _row_scales(ly: Layer, scale: np.ndarray, g: int, r: int) -> np.ndarray:
    """Per-row scale [groups, rows] from a weight's per-axis (or per-tensor) scale."""
    if scale.ndim == 0 or scale.size == 1:
        return np.full((g, r), float(scale.reshape(-1)[0]))
    return scale.reshape(g, r) if ly.op == "Conv" else scale.reshape(1, r)


def _chunks(layers: list[Layer], memory_mb: float) -> list[list[Layer]]:
    chunks: list[list[Layer]] = [[]]
    used = 0.0
    for ly in layers:
        mb = ly.groups * ly.k * ly.k * 8 / 2**20
        if chunks[-1] and used + mb > memory_mb:
            chunks.append([])
            used = 0.0
        chunks[-1].append(ly)
        used += mb
    return [c for c in chunks if c]
