"""Fitting on labeled data, with numpy only: ensemble weights, stacking meta-learners, gates.

- weights on the simplex minimising the cross-entropy of the combination, by exponentiated
  gradient: ``w <- w * exp(-eta g) / Z``. With ``c = sum_k w_k z_k`` and one-hot labels ``Y``:
  on probabilities ``L = -mean log c_y`` and ``dL/dw_k = -mean(z_k,y / c_y)``; on outputs
  (logits) ``L = CE(softmax(c), Y)`` and ``dL/dw_k = mean(sum_c (softmax(c) - Y) * z_k)``.
- ridge: ``[W; b] = argmin |X W + b - Y|^2 + alpha |W|^2`` (bias not penalised), closed form.
- multinomial logistic regression: ``min CE(softmax(X W + b), Y) + l2/2 |W|^2`` by Nesterov's
  accelerated gradient with step ``1/L``, ``L = |X~|_2^2 / (2 n) + l2`` (X~ = [X, 1]).
- cascade threshold: with per-sample confidence ``q`` of the cheap member and correctness of
  both members, ``acc(T) = mean(q >= T ? cheap_ok : expensive_ok)``; scanning T downwards
  from "always expensive", the last T before ``acc(T)`` first drops below the target is chosen
  (the most samples kept cheap without trusting an isolated dip of the curve).
"""

from __future__ import annotations

import logging

import numpy as np

from onnxopt.passes.ensemble.modes import np_softmax

logger = logging.getLogger(__name__)


def fit_weights(zs: list[np.ndarray], y: np.ndarray, on: str, iters: int = 500) -> list[float]:
    """Simplex weights for ``weighted`` mode (see module docstring)."""
    n = len(zs)
    z = np.stack([np.asarray(a, np.float64).reshape(a.shape[0], -1) for a in zs])  # [n, N, C]
    y = np.asarray(y).reshape(-1).astype(np.int64)
    onehot = np.eye(z.shape[-1])[y]
    w = np.full(n, 1.0 / n)
    best, best_loss = w.copy(), np.inf
    for t in range(iters):
        c = np.tensordot(w, z, axes=1)
        if on == "probs":
            cy = np.maximum(c[np.arange(len(y)), y], 1e-12)
            loss = -np.log(cy).mean()
            g = -(z[:, np.arange(len(y)), y] / cy).mean(axis=1)
        else:
            p = np_softmax(c).astype(np.float64)
            loss = -np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean()
            g = ((p - onehot)[None] * z).sum(-1).mean(-1)
        if loss < best_loss:
            best, best_loss = w.copy(), loss
        g = g - g.mean()  # only differences move weights on the simplex
        spread = np.abs(g).max()
        if not np.isfinite(spread) or spread < 1e-9:
            break
        w = w * np.exp(-g / spread / np.sqrt(t + 1.0))  # each step changes a ratio <= e
        w /= w.sum()
    return [float(v) for v in best]


def fit_ridge(
    x: np.ndarray, y: np.ndarray, classes: int, alpha: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression onto one-hot targets; returns ``W [F, C]``, ``b [C]``."""
    x = np.asarray(x, np.float64)
    t = np.eye(classes)[np.asarray(y).reshape(-1).astype(np.int64)]
    xa = np.hstack([x, np.ones((x.shape[0], 1))])
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0
    sol = np.linalg.solve(xa.T @ xa + reg, xa.T @ t)
    return sol[:-1], sol[-1]


def fit_logistic(
    x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3, iters: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression; returns ``W [F, C]``, ``b [C]``."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    t = np.eye(classes)[np.asarray(y).reshape(-1).astype(np.int64)]
    xa = np.hstack([x, np.ones((n, 1))])
    lip = np.linalg.norm(xa, 2) ** 2 / (2.0 * n) + l2
    step = 1.0 / lip
    mask = np.ones((xa.shape[1], 1))
    mask[-1] = 0.0  # the bias is not penalised
    w = np.zeros((xa.shape[1], classes))
    v = w.copy()
    for k in range(iters):
        z = xa @ v
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        grad = xa.T @ (p - t) / n + l2 * v * mask
        w_next = v - step * grad
        v = w_next + (k / (k + 3.0)) * (w_next - w)
        w = w_next
        if np.abs(grad).max() < 1e-7:
            break
    return w[:-1], w[-1]


def cascade_accuracy(
    conf: np.ndarray, cheap_ok: np.ndarray, exp_ok: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(accuracy %, fraction answered by the cheap member) with per-sample gating."""
    use = conf >= threshold
    return float(np.where(use, cheap_ok, exp_ok).mean() * 100.0), float(use.mean())


def choose_threshold(
    conf: np.ndarray, cheap_ok: np.ndarray, exp_ok: np.ndarray, target: float
) -> tuple[float, str | None]:
    """The smallest threshold from which every higher one meets ``target`` (percent).

    Scanning down from "always expensive", the scan stops at the first threshold that misses
    the target: a lone lucky dip in the accuracy curve is not taken, which generalises better
    than the plain smallest threshold meeting the target. Returns a note when even the best
    threshold misses the target.
    """
    conf = np.asarray(conf, np.float64)
    top = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
    cands = np.unique(np.concatenate([conf, [top]]))[::-1]  # descending
    chosen = None
    best_t, best_acc = top, -1.0
    for t in cands:
        acc, _ = cascade_accuracy(conf, cheap_ok, exp_ok, float(t))
        if acc > best_acc:
            best_t, best_acc = float(t), acc
        if acc < target - 1e-9:
            break
        chosen = float(t)
    if chosen is not None:
        return float(np.float32(chosen)), None
    return float(np.float32(best_t)), (
        f"target accuracy {target:.2f}% is not reachable on the fit split; "
        f"using the best threshold {best_t:.4g} ({best_acc:.2f}%)"
    )
