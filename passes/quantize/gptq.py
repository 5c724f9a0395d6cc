"""Rounding with error feedback (GPTQ: Frantar et al. 2022, "OPTQ"), in numpy.

A layer's weights are rounded one input column at a time, and the error each column's rounding
leaves is pushed onto the columns not rounded yet, weighted by the inverse of the input Gram
matrix ``H = E[x xᵀ]``, so that the layer's *output* error ``ΔW·H·ΔWᵀ`` stays small rather
than each weight's own. With ``U`` the upper Cholesky factor of ``H⁻¹``:

    for column i:  q_i = clip(round(w_i / s), −q, q);  e = (w_i − s·q_i) / U_ii;
                   w_j -= e · U_ij  for j > i

The columns go in order of decreasing ``H_ii`` (the inputs with the most energy first, whose
errors the rest can still absorb), and ``H`` is damped by 1 % of its mean diagonal.

The 4-bit weights' GPTQ (:mod:`onnxopt.passes.precision.gptq`) is the same sweep for
MatMulNBits' blocks, whose scales it picks from the updated weights block by block; here the
int8 per-channel scales are fixed first, and the groups of a grouped Conv go together. Its
check, that feedback fitted on half the runs beats rounding to nearest on the other half, was
tried here and left out: all-MiniLM-L6-v2 read cosine 0.9930 with it against 0.9938, the
PP-OCRv5 recognizer 84.8 % of its held-out crops against 86.4 %, in 1.7x the time.

Why it sits beside AdaRound (:mod:`.adaround`): AdaRound's steps cost ``rows × K²`` each, so
a wide layer gets few or none within its cost cap (PP-OCRv5's CTC head, 120 inputs × 18,385
classes: one step is 1.1 GFLOP, and the layer was skipped), while error feedback costs one
Cholesky factorization and ``rows × K²`` once. On that head, rounded to nearest its int8
weights changed the text of 1 crop in 66 on held-out lines; with error feedback, none (its
output error 6x lower). Its Gram matrices come from :func:`.adaround.gram_matrices`.
"""

from __future__ import annotations

import numpy as np

#: H's diagonal is raised by this fraction of its mean (a singular H, dead inputs)
DAMP = 0.01
#: columns rounded between two products that update the rest (the "lazy batch" of GPTQ)
BLOCK = 128


def gptq(w: np.ndarray, scale: np.ndarray, gram: np.ndarray, *, qmax: int) -> np.ndarray:
    """Integer weights for grouped rows ``w`` [G, R, K] with per-row ``scale`` [G, R] and input
    Gram matrices ``gram`` [G, K, K] (module docstring). Deterministic. The groups go
    together, batched (a depthwise Conv has hundreds of groups of one row: one at a time, the
    PP-OCRv5 recognizer's 63 layers took 4.4 s, most of it per-group overhead)."""
    g, r, k = w.shape
    h = np.array(gram, dtype=np.float64, copy=True)
    ks = np.arange(k)
    diag = h[:, ks, ks]
    gi, ki = np.nonzero(diag <= 0)
    h[gi, ki, ki] = 1.0  # an input never seen: its weights round to nearest, nothing to feed
    order = np.argsort(-h[:, ks, ks], axis=1, kind="stable")  # [G, K]
    h = np.take_along_axis(np.take_along_axis(h, order[:, :, None], 1), order[:, None, :], 2)
    h[:, ks, ks] += DAMP * h[:, ks, ks].mean(axis=1, keepdims=True)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float64)  # [G, R]
    try:
        u = np.swapaxes(np.linalg.cholesky(np.linalg.inv(h)), 1, 2)  # upper: H⁻¹ = Uᵀ U
    except np.linalg.LinAlgError:  # some group not positive definite even damped
        if g == 1:  # round to nearest
            return np.clip(np.round(w / safe[..., None]), -qmax, qmax)
        return np.concatenate(
            [gptq(w[j : j + 1], scale[j : j + 1], gram[j : j + 1], qmax=qmax) for j in range(g)]
        )
    # the sweep works on the columns as rows, [G, K, R]: each column it rounds, and each row
    # of the updates inside a block, is contiguous (on [G, R, K] a column is R values K apart:
    # PP-OCRv5's CTC head, 120 inputs x 18,385 rows, took 0.46 s on [G, R, K] and takes 0.11
    # s; all-MiniLM-L6-v2's 1536-input layers 0.47 s and 0.34 s, most of it now the
    # factorization above; the same integers)
    work = np.ascontiguousarray(
        np.swapaxes(np.take_along_axis(w.astype(np.float64), order[:, None, :], 2), 1, 2)
    )
    q = np.empty_like(work)
    # the columns go in blocks of BLOCK: inside a block each column's error updates the
    # block's later columns, and the block's errors update the columns after it in one
    # product (all-MiniLM-L6-v2's 36 layers: 16.6 s column by column)
    for b0 in range(0, k, BLOCK):
        b1 = min(b0 + BLOCK, k)
        errs = np.empty((g, b1 - b0, r))
        for i in range(b0, b1):
            col = np.clip(np.round(work[:, i] / safe), -qmax, qmax)
            q[:, i] = col
            err = (work[:, i] - col * safe) / u[:, i, i][:, None]  # [G, R]
            errs[:, i - b0] = err
            if i + 1 < b1:
                work[:, i + 1 : b1] -= u[:, i, i + 1 : b1, None] * err[:, None, :]
        if b1 < k:
            work[:, b1:] -= np.matmul(np.swapaxes(u[:, b0:b1, b1:], 1, 2), errs)
    q = np.swapaxes(q, 1, 2)  # [G, R, K], in the sorted order of the columns
    out = np.empty_like(q)
    np.put_along_axis(out, np.broadcast_to(order[:, None, :], q.shape), q, 2)
    return out
