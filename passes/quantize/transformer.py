"""Transformer-aware choices, made when the graph has attention.

*Attention* is a Softmax whose input comes (through at most four Add/Mul/Div/Where/Reshape/
Transpose/Cast nodes) from a MatMul of two activations (``Q·Kᵀ``). On such graphs:

- SmoothQuant's migration strength is chosen per MatMul input (per *layer*), not once for the
  model: for each candidate ``α`` (and "off") the input rows sampled during calibration are
  smoothed, quantized per tensor (uint8, the range of the smoothed channels) and multiplied by
  the smoothed, per-column int8 weights of every MatMul reading them; the relative error

      ``E(α) = Σ_j ‖Q(X/s)·Q(s·W_j) − X·W_j‖² / Σ_j ‖X·W_j‖²``

  picks ``α``. Smoothing that cannot fold into a LayerNorm costs one float Mul, so it is kept
  only when it cuts ``E`` by ``MIN_GAIN`` at least. ``E`` uses the smoothed input's full range,
  and so does the calibration of that input (``smoothed_calibrator``, :mod:`.config`);
- Softmax, LayerNorm and the residual stream stay float (they are never sites by default, see
  :mod:`.placement`), and MatMuls whose static int8 form loses to dynamic int8 in the
  instrumented run get the dynamic form first in the mixed-precision order (:mod:`.mixed`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from .smooth import smoothing_scales

logger = logging.getLogger(__name__)

#: the candidate strengths: a step of 0.05-0.1 where transformers' best ones fall (with 0.25,
#: 0.5, 0.75 and 0.9 alone, all-MiniLM-L6-v2 with its 36 linear layers in int8 read cosine
#: 0.99775 against fp32; with these, 0.99807, and a fixed 0.8 gave 0.9981)
ALPHAS = (0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
#: smoothing that needs a Mul must cut the error by this fraction
MIN_GAIN = 0.2
_BETWEEN = ("Add", "Mul", "Div", "Where", "Reshape", "Transpose", "Cast", "Sub")


def has_attention(model: onnx.ModelProto) -> bool:
    """Whether a Softmax reads (closely) a MatMul of two activations."""
    g = model.graph
    consts = {t.name for t in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output
    }
    made = {o: n for n in g.node for o in n.output}
    for sm in (n for n in g.node if n.op_type == "Softmax"):
        todo, depth = [sm.input[0]], 0
        while todo and depth < 5:
            nxt = []
            for t in todo:
                p = made.get(t)
                if p is None:
                    continue
                if p.op_type == "MatMul" and not any(i in consts for i in p.input):
                    return True
                if p.op_type in _BETWEEN:
                    nxt.extend(i for i in p.input if i not in consts)
            todo, depth = nxt, depth + 1
    return False


def _qdq(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``x`` through uint8 quantization of the range [lo, hi] (a new array, ``x``'s dtype)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = float(np.clip(np.round(-lo / scale), 0, 255))
    q = x / x.dtype.type(scale)
    np.rint(q, out=q)
    q += zp
    np.clip(q, 0, 255, out=q)
    q -= zp
    q *= x.dtype.type(scale)
    return q


def _wq(w: np.ndarray) -> np.ndarray:
    """``w`` through symmetric int8 quantization per column (a new array, ``w``'s dtype).
    In place where it can: on BERT-base's 768x3072 weights the copies of the plain form took
    twice the time of the product that follows."""
    s = np.abs(w).max(axis=0)
    s = np.where(s > 0, s / 127.0, 1.0).astype(w.dtype)
    q = w / s
    np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    q *= s
    return q


def smoothing_error(
    x: np.ndarray,
    weights: list[np.ndarray],
    s: np.ndarray | None,
    refs: list[np.ndarray] | None = None,
) -> float:
    """``E`` of the module docstring for rows ``x`` [R, K], weights [K, N] and scales ``s``;
    ``refs``: the float products ``x @ w``, when the caller has them (one per weight: they do
    not depend on ``s``, and :func:`choose_alphas` tries ten scales on the same rows). The
    products run in ``x``'s dtype; the sums of squares in float64."""
    xs = x if s is None else x / s.astype(x.dtype)
    xq = _qdq(xs, float(xs.min()), float(xs.max()))
    refs = refs if refs is not None else [x @ w for w in weights]
    num = den = 0.0
    for w, ref in zip(weights, refs):
        ws = w if s is None else w * s.astype(w.dtype)[:, None]
        d = xq @ _wq(ws)
        d -= ref
        num += _sumsq(d)
        den += _sumsq(ref)
    return num / max(den, 1e-30)


def _sumsq(a: np.ndarray) -> float:
    """Σ a², accumulated in float64."""
    return float(np.einsum("ij,ij->", a, a, dtype=np.float64))


def choose_alphas(
    rows: dict[str, np.ndarray],
    x_max: dict[str, np.ndarray],
    weights: dict[str, list[np.ndarray]],
    foldable: set[str],
) -> tuple[dict[str, float], list[str]]:
    """Per input tensor, the α of :data:`ALPHAS` with the least error, if it beats "off"
    (by ``MIN_GAIN`` when the scales cannot fold into a LayerNorm). Returns (alphas, notes)."""
    out, notes = {}, []
    for name, ws in weights.items():
        x = rows.get(name)
        xm = x_max.get(name)
        if x is None or xm is None or len(x) == 0:
            continue
        # float32 products, float64 sums: on BERT-base's 48 inputs the float64 products took
        # 17 s and chose the same alphas
        x = np.asarray(x, np.float32)
        ws = [np.asarray(w, np.float32) for w in ws]
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        refs = [x @ w for w in ws]
        off = smoothing_error(x, ws, None, refs)
        errs = {a: smoothing_error(x, ws, smoothing_scales(xm, wmax, a), refs) for a in ALPHAS}
        best = min(errs, key=errs.get)
        need = 1.0 if name in foldable else 1.0 - MIN_GAIN
        if errs[best] < off * need:
            out[name] = best
            notes.append(f"smooth {name}: alpha {best:g} (error {off:.3g} -> {errs[best]:.3g})")
    return out, notes
