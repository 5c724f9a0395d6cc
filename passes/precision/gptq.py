"""GPTQ (Frantar et al. 2022) for block-wise MatMulNBits weights, in numpy.

For ``Y = X·W`` with ``W`` K×N and calibration inputs ``X`` (rows = tokens), the layer's error
``‖X(W − Ŵ)‖²`` is ``tr(Dᵀ H D)`` with ``D = W − Ŵ`` and ``H = XᵀX`` (K×K, accumulated over
batches: memory is K², never the activations). GPTQ quantizes the input rows ``k = 0..K−1`` of
``W`` in order and moves each row's rounding error onto the rows not yet quantized, the
optimal update for a quadratic error:

    H ← H + λ·mean(diag H)·I              (dampening, λ = ``damp``)
    U upper triangular with UᵀU = H⁻¹      (one Cholesky factorization: see inverse_cholesky)
    e_k = (w_k − q(w_k)) / U[k, k]
    w_j ← w_j − e_k · U[k, j]    for j > k

Updates are applied lazily in chunks of ``LAZY`` rows (the published algorithm's batching).
At the start of each quantization block (``block_size`` rows of K) its scale and zero point are
chosen from the *updated* weights by the given parameter rule (round-to-nearest by default), so
scales, zero points and codes are those MatMulNBits stores, with no re-quantization afterwards.
Rows with ``H[k, k] = 0`` (inputs that were always zero) are quantized as they are.

A layer keeps GPTQ only when GPTQ fitted on half of the calibration runs beats the data-free
quantizer on the other half (:func:`gptq_generalizes`); the GPTQ kept is then fitted on all
runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .nbits import Quantized, encode, rtn_params

#: rows updated together before the rest of the matrix (the paper's lazy batch)
LAZY = 128

ParamRule = Callable[[np.ndarray, int, bool], tuple[np.ndarray, np.ndarray]]


def relative_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray | None) -> float:
    """``‖X(W − Ŵ)‖ / ‖XW‖`` from ``H = XᵀX`` (``‖W − Ŵ‖ / ‖W‖`` when ``h`` is None).

    The products run in float32 (BLAS), the sums in float64."""
    w = np.asarray(w, np.float32)
    d = w - np.asarray(w_hat, np.float32)
    if h is None:
        num, den = np.sum(d * d, dtype=np.float64), np.sum(w * w, dtype=np.float64)
    else:
        h = np.asarray(h, np.float32)
        num = np.sum((h @ d) * d, dtype=np.float64)
        den = np.sum((h @ w) * w, dtype=np.float64)
    return float(np.sqrt(max(num, 0.0) / den)) if den > 0 else 0.0


def inverse_cholesky(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper ``U`` with ``UᵀU = (H + λI)⁻¹`` (``λ = damp·mean(diag H)``; more if ``H`` is not
    definite), from one Cholesky factorization of the reversed matrix: with ``J`` the
    reversal, ``JHJ = MMᵀ`` gives ``U = J·M⁻¹·J``. Rows with ``H[k, k] = 0`` get 1."""
    hk = np.array(h, np.float64, copy=True)
    dead = np.diag(hk) == 0
    hk[dead, dead] = 1.0
    k = hk.shape[0]
    base = float(np.mean(np.diag(hk))) or 1.0
    for extra in (1.0, 10.0, 100.0):
        hd = hk + np.eye(k) * (damp * extra * base)
        try:
            m = np.linalg.cholesky(hd[::-1, ::-1])
        except np.linalg.LinAlgError:
            continue
        return np.ascontiguousarray(np.linalg.inv(m)[::-1, ::-1])
    raise np.linalg.LinAlgError("the Hessian is not positive definite even when dampened")


def quantize_gptq(
    w: np.ndarray,
    h: np.ndarray | None,
    bits: int,
    block_size: int,
    symmetric: bool,
    damp: float = 0.01,
    params: ParamRule = rtn_params,
    u: np.ndarray | None = None,
) -> Quantized:
    """GPTQ of a K×N weight ``w`` for ``H = XᵀX`` (K×K), or for its :func:`inverse_cholesky`
    ``u`` when given (layers reading the same input share it)."""
    k, n = w.shape
    nb = -(-k // block_size)
    kp = nb * block_size
    work = np.zeros((n, kp), np.float64)
    work[:, :k] = w.T
    if u is None:
        u = inverse_cholesky(h, damp)
    if kp > k:
        padded = np.eye(kp)
        padded[:k, :k] = u
        u = padded
    codes = np.zeros((n, nb, block_size), np.uint8)
    scales = np.zeros((n, nb), np.float32)
    zeros = np.zeros((n, nb), np.uint8)
    lazy = max(LAZY // block_size, 1) * block_size
    for i1 in range(0, kp, lazy):
        i2 = min(i1 + lazy, kp)
        err = np.zeros((n, i2 - i1))
        for i in range(i1, i2):
            g, j = divmod(i, block_size)
            if j == 0:  # a new quantization block: parameters from the updated weights
                blk = work[:, i : i + block_size].astype(np.float32)
                scales[:, g], zeros[:, g] = params(blk, bits, symmetric)
            col = work[:, i].astype(np.float32)
            q = encode(col[:, None, None], scales[:, g, None], zeros[:, g, None], bits)[:, 0, 0]
            codes[:, g, j] = q
            deq = (q.astype(np.float64) - zeros[:, g]) * scales[:, g]
            e = (work[:, i] - deq) / u[i, i]
            work[:, i + 1 : i2] -= np.outer(e, u[i, i + 1 : i2])
            err[:, i - i1] = e
        work[:, i2:] -= err @ u[i1:i2, i2:]
    return Quantized(codes, scales, zeros, bits, block_size, k, symmetric)


def gptq_generalizes(
    w: np.ndarray,
    fit: np.ndarray,
    check: np.ndarray,
    quantize: Callable[[np.ndarray, np.ndarray | None], Quantized],
) -> bool:
    """Whether GPTQ fitted on half of the calibration runs (``fit``: its
    :func:`inverse_cholesky`) beats the data-free quantizer on the other half (``check``:
    its ``XᵀX``). With fewer rows than K the Hessian is singular and GPTQ moves the rounding
    error into directions the fit never saw: on new data it is then worse than rounding.
    ``quantize(w, u)`` is GPTQ for ``u``, the data-free quantizer for None."""
    gptq = quantize(w, fit).dequantize()
    plain = quantize(w, None).dequantize()
    return relative_error(w, gptq, check) < relative_error(w, plain, check)
