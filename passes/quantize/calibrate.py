"""Calibration: streaming per-tensor statistics and range calibrators.

Statistics are bounded in memory whatever the number of samples: a running min/max and a
histogram of ``bins`` equal bins over ``[-R, R]``, ``R`` the smallest power of two above every
``|x|`` seen. When a batch reaches ``R`` the range doubles (``R' = 2^k R``) and adjacent bins
merge in pairs. Bins are assigned by exact comparison with their edges (``-R + k·2R/bins``,
exact in float64), and the edges of ``2R`` are a subset of those of ``R``, so the histogram
equals the one binned directly at the final ``R``: it depends on the values only, not on their
order or how they were split. :meth:`TensorStats.merge` therefore combines statistics
collected on separate workers bit for bit equal to one process's.

Calibrators turn the statistics into a real range ``[lo, hi]``:

- ``minmax``: ``[min, max]``.
- ``percentile(p)``: two-sided, ``lo = F^-1(1 - p/100)``, ``hi = F^-1(p/100)`` read off the
  cumulative histogram (linear within a bin); symmetric ranges use ``|x|``'s ``p``-quantile.
- ``entropy`` (TensorRT): on the ``|x|`` histogram without exact zeros, for each candidate threshold ``T = i·w`` the
  reference ``P`` = first ``i`` bins with the tail folded into bin ``i-1``; ``Q`` = ``P`` merged
  into ``L`` levels (128 for signed data, 256 for non-negative) and spread back over its non-empty
  bins; choose ``T`` minimising ``KL(P || Q)``.
- ``mse``: the range minimising the expected quantization error (ACIQ model):
  ``E(T) = Σ_{|x|>T} (|x|-T)²  +  N_in · Δ²/12``  with ``Δ = (hi - lo) / (2^8 - 1)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxopt.model import model_bytes

logger = logging.getLogger(__name__)

DEFAULT_BINS = 2048


class TensorStats:
    """Running min/max and an adaptive symmetric histogram of one tensor."""

    def __init__(self, name: str, bins: int = DEFAULT_BINS) -> None:
        if bins % 4:
            raise ValueError("bins must be a multiple of 4")
        self.name = name
        self.bins = bins
        self.min = float("inf")
        self.max = float("-inf")
        self.count = 0
        self.half_range = 0.0
        self.hist = np.zeros(bins, dtype=np.int64)
        self._zeros = 0  # values seen while the range was still 0
        self.exact_zeros = 0  # values exactly 0 (ReLU outputs, padding): representable as is

    def update(self, values: np.ndarray) -> None:
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # rare: drop inf / nan, then re-read
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.exact_zeros += int(np.count_nonzero(x == 0.0))
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        m = max(abs(lo), abs(hi))
        if m == 0.0 and self.half_range == 0.0:
            self._zeros += x.size
            return
        if self.half_range == 0.0:
            self.half_range = math.ldexp(1.0, math.frexp(m)[1])  # the power of two above m
            self.hist[self.bins // 2] += self._zeros
            self._zeros = 0
        while m >= self.half_range:
            self._grow()
        self.hist += np.bincount(self._bin(x), minlength=self.bins)

    def _bin(self, x: np.ndarray) -> np.ndarray:
        """Each value's bin, by exact comparison with the edges (``|x| < R``)."""
        r, b = self.half_range, self.bins
        x64 = x.astype(np.float64)
        idx = np.floor((x64 + r) * (b / (2 * r))).astype(np.int64)  # off by one at most
        np.clip(idx, 0, b - 1, out=idx)
        edges = np.arange(b + 1, dtype=np.float64) * (2 * r / b) - r  # exact: powers of two
        idx -= x64 < edges[idx]
        idx += x64 >= edges[idx + 1]
        return idx

    def merge(self, other: TensorStats) -> None:
        """Add ``other``'s statistics (same tensor, same bins): exact, whatever the split."""
        if other.bins != self.bins:
            raise ValueError("cannot merge histograms with different bins")
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.exact_zeros += other.exact_zeros
        hist, zeros = other.hist.copy(), other._zeros
        if other.half_range > 0.0:
            while self.half_range < other.half_range:
                if self.half_range == 0.0:
                    self.half_range = other.half_range
                    self.hist[self.bins // 2] += self._zeros
                    self._zeros = 0
                    break
                self._grow()
            r = other.half_range
            while r < self.half_range:  # other's bins merge in pairs up to self's range
                hist = _grown(hist)
                r *= 2.0
            self.hist += hist
        if self.half_range > 0.0:
            self.hist[self.bins // 2] += zeros + self._zeros
            self._zeros = 0
        else:
            self._zeros += zeros

    def _grow(self) -> None:
        """Double the range: bins (2k, 2k+1) merge into new bin k + bins/4."""
        self.hist = _grown(self.hist)
        self.half_range *= 2.0

    @property
    def width(self) -> float:
        return 2 * self.half_range / self.bins

    def edges(self) -> np.ndarray:
        r = self.half_range
        return np.linspace(-r, r, self.bins + 1)

    def abs_hist(self) -> np.ndarray:
        """Histogram of ``|x|`` over ``[0, R]`` with ``bins/2`` bins."""
        h = self.bins // 2
        return self.hist[h:] + self.hist[:h][::-1]

    @property
    def empty(self) -> bool:
        return self.count == 0


def _grown(hist: np.ndarray) -> np.ndarray:
    """The histogram over twice the range: bins (2k, 2k+1) merge into bin k + bins/4."""
    b = len(hist)
    new = np.zeros_like(hist)
    new[b // 4 : b // 4 + b // 2] = hist.reshape(b // 2, 2).sum(axis=1)
    return new


# ------------------------------------------------------------------------------------------
# Calibrators


@dataclass(frozen=True)
class Calibrator:
    """Base: ``range(stats, symmetric)`` -> (lo, hi)."""

    name = "base"

    def range(self, stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class MinMax(Calibrator):
    name = "minmax"

    def range(self, stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
        if stats.empty:
            return 0.0, 0.0
        if symmetric:
            a = max(abs(stats.min), abs(stats.max))
            return -a, a
        return stats.min, stats.max


def _quantile(hist: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Value below which a fraction ``q`` of the histogram's mass lies (linear in a bin)."""
    cum = np.cumsum(hist, dtype=np.float64)
    total = cum[-1]
    if total <= 0:
        return 0.0
    target = q * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(hist) - 1)
    before = cum[i - 1] if i > 0 else 0.0
    frac = (target - before) / hist[i] if hist[i] > 0 else 0.0
    return float(edges[i] + frac * (edges[i + 1] - edges[i]))


@dataclass(frozen=True)
class Percentile(Calibrator):
    """Clip to the ``p``-th percentile (two-sided, or of ``|x|`` when symmetric). No default:
    the pass's is :attr:`.config.QuantizeConfig.percentile`."""

    p: float
    name = "percentile"

    def range(self, stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
        if stats.empty or stats.half_range == 0.0:
            return MinMax().range(stats, symmetric)
        q = self.p / 100.0
        if symmetric:
            ah = stats.abs_hist()
            edges = np.linspace(0.0, stats.half_range, len(ah) + 1)
            a = min(_quantile(ah, edges, q), max(abs(stats.min), abs(stats.max)))
            return -a, a
        edges = stats.edges()
        lo = max(_quantile(stats.hist, edges, 1.0 - q), stats.min)
        hi = min(_quantile(stats.hist, edges, q), stats.max)
        if stats.min >= 0.0:
            lo = stats.min
        return lo, hi

    def __str__(self) -> str:
        return f"percentile({self.p:g})"


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = p.sum(), q.sum()
    if ps <= 0 or qs <= 0:
        return float("inf")
    p, q = p / ps, q / qs
    m = p > 0
    if (q[m] <= 0).any():
        return float("inf")
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


@dataclass(frozen=True)
class Entropy(Calibrator):
    """TensorRT's KL-divergence threshold on the ``|x|`` histogram."""

    levels: int = 128
    candidates: int = 128
    name = "entropy"

    def threshold(self, ah: np.ndarray, width: float, levels: int) -> float:
        n = len(ah)
        if n <= levels:
            return n * width
        starts = np.unique(np.linspace(levels, n, min(self.candidates, n - levels + 1)).astype(int))
        best, best_i = float("inf"), n
        for i in starts:
            p = ah[:i].astype(np.float64).copy()
            p[i - 1] += ah[i:].sum()
            ref = ah[:i].astype(np.float64)
            nz = p > 0
            # merge the clipped histogram (tail excluded) into `levels` chunks, then spread each
            # chunk's mass over the bins non-empty in P: the clipped tail shows up as the
            # difference between P and Q after both are normalised
            chunk = np.floor(np.arange(i) * levels / i).astype(np.int64)
            sums = np.bincount(chunk, weights=ref, minlength=levels)
            cnt = np.bincount(chunk, weights=nz.astype(np.float64), minlength=levels)
            q = np.where(nz, sums[chunk] / np.maximum(cnt[chunk], 1.0), 0.0)
            kl = _kl(p, q)
            if kl < best:
                best, best_i = kl, int(i)
        return best_i * width

    def range(self, stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
        if stats.empty or stats.half_range == 0.0:
            return MinMax().range(stats, symmetric)
        nonneg = stats.min >= 0.0 and not symmetric
        levels = self.levels * 2 if nonneg else self.levels
        ah = stats.abs_hist().copy()
        # exact zeros are exactly representable: leaving their spike in P would favour narrow
        # chunks (small thresholds) that smear it less, whatever the tail
        ah[0] -= min(stats.exact_zeros, int(ah[0]))
        # sparse data: merge bins until they average >= 8 samples (KL is noise otherwise)
        while len(ah) >= 4 * levels and stats.count / len(ah) < 8 and len(ah) % 2 == 0:
            ah = ah.reshape(-1, 2).sum(axis=1)
        t = self.threshold(ah, stats.half_range / len(ah), levels)
        if symmetric:
            a = min(t, max(abs(stats.min), abs(stats.max)))
            return -a, a
        return max(stats.min, -t), min(stats.max, t)


@dataclass(frozen=True)
class MSE(Calibrator):
    """The range minimising clipping + rounding error (ACIQ model, Δ²/12 rounding noise)."""

    steps: int = 200
    qlevels: int = 255
    name = "mse"

    def range(self, stats: TensorStats, symmetric: bool = False) -> tuple[float, float]:
        if stats.empty or stats.half_range == 0.0:
            return MinMax().range(stats, symmetric)
        lo0, hi0 = min(stats.min, 0.0), max(stats.max, 0.0)
        if symmetric:
            a = max(-lo0, hi0)
            lo0, hi0 = -a, a
        edges = stats.edges()
        c = 0.5 * (edges[:-1] + edges[1:])
        h = stats.hist.astype(np.float64)
        best, best_s = float("inf"), 1.0
        for s in np.linspace(1.0 / self.steps, 1.0, self.steps):
            lo, hi = lo0 * s, hi0 * s
            delta = (hi - lo) / self.qlevels
            over = np.maximum(c - hi, 0.0) + np.maximum(lo - c, 0.0)
            inside = h[over == 0].sum()
            err = float(np.sum(h * over * over) + inside * delta * delta / 12.0)
            if err < best:
                best, best_s = err, float(s)
        lo, hi = lo0 * best_s, hi0 * best_s
        if not symmetric:
            lo, hi = max(lo, stats.min), min(hi, stats.max)
        return lo, hi


CALIBRATORS = ("minmax", "percentile", "entropy", "mse")


def make_calibrator(name: str | Calibrator, percentile: float | None = None) -> Calibrator:
    """``"minmax" | "percentile" | "entropy" | "mse"`` (or an instance) -> Calibrator;
    ``percentile`` is the ``p`` a percentile calibrator needs (no default here: the pass's is
    :attr:`.config.QuantizeConfig.percentile`)."""
    if isinstance(name, Calibrator):
        return name
    key = str(name).lower()
    if key == "minmax":
        return MinMax()
    if key == "percentile":
        if percentile is None:
            raise ValueError("the percentile calibrator needs a percentile")
        return Percentile(percentile)
    if key in ("entropy", "kl"):
        return Entropy()
    if key == "mse":
        return MSE()
    raise ValueError(f"unknown calibrator {name!r}; choose one of {', '.join(CALIBRATORS)}")


# ------------------------------------------------------------------------------------------
# Collection over a model


def _batches(
    runs: list[dict[str, np.ndarray]], batch: int, dynamic_batch: bool
) -> Iterable[tuple[dict[str, np.ndarray], int]]:
    """Concatenate consecutive runs of equal shapes along axis 0 (dynamic batch only).

    Yields (feed, number of runs in it).
    """
    for idx in batch_groups(runs, batch, dynamic_batch):
        if len(idx) == 1:
            yield runs[idx[0]], 1
        else:
            yield {k: np.concatenate([runs[i][k] for i in idx]) for k in runs[idx[0]]}, len(idx)


def batch_groups(
    runs: list[dict[str, np.ndarray]], batch: int, dynamic_batch: bool
) -> list[list[int]]:
    """The runs each onnxruntime call of :func:`collect_stats` concatenates (indices): at most
    ``batch`` consecutive runs of equal shapes. Splitting ``runs`` between groups gives every
    worker the same calls, so statistics collected apart merge to the same values."""
    if not dynamic_batch or batch <= 1:
        return [[i] for i in range(len(runs))]
    groups: list[list[int]] = []
    sig = None
    for i, r in enumerate(runs):
        s = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(r.items()))
        if groups and s == sig and len(groups[-1]) < batch:
            groups[-1].append(i)
        else:
            groups.append([i])
        sig = s
    return groups


def probe_model(
    base: onnx.ModelProto, tensors: list[str]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``base`` whose outputs carry ``tensors`` (those of If/Loop/Scan bodies are
    exposed over every iteration, see :mod:`.bodies`): (the model, {tensor: output name}).
    A mapped model's copy is its skeleton: the weights stay shared."""
    from .bodies import expose

    m = onnx.ModelProto()
    m.CopyFrom(base)
    return m, expose(m, tensors)


def open_session(model: bytes | str | onnx.ModelProto) -> Any:
    """An onnxruntime session with graph optimizations off (a ModelProto's large weights are
    shared with it, not copied: :mod:`onnxopt.sessions`)."""
    import onnxruntime as ort

    from onnxopt import sessions

    def options() -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        return so

    if isinstance(model, onnx.ModelProto):
        return sessions.build(model, options)
    return ort.InferenceSession(model, options(), providers=["CPUExecutionProvider"])


def collect_stats(
    model: bytes | str | onnx.ModelProto,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    *,
    bins: int = DEFAULT_BINS,
    batch: int = 8,
    dynamic_batch: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, TensorStats]:
    """Run ``model`` (tensors already exposed as outputs) and stream their statistics.

    Args:
        model: a ModelProto, serialized model or path whose graph outputs include ``tensors``.
        tensors: names of the float tensors to observe.
        runs: feeds, one dict per run.
        bins: histogram bins per tensor.
        batch: runs concatenated per session call when the batch dimension is dynamic.
        dynamic_batch: whether runs may be concatenated along axis 0.
        progress: ``(what, done, total)`` callback.
    """
    sess = open_session(model)
    stats = {t: TensorStats(t, bins) for t in tensors}
    total = len(runs)
    done = 0
    for feed, n in _batches(runs, batch, dynamic_batch):
        values = sess.run(tensors, feed)
        for name, v in zip(tensors, values, strict=True):
            stats[name].update(v)
        del values
        done += n
        if progress is not None:
            progress("calibrating", min(done, total), total)
    return stats


def write_probe(base: onnx.ModelProto, tensors: list[str], path: str) -> None:
    """Write ``base`` with ``tensors`` added as graph outputs, without copying the model.

    The outputs are appended to ``base`` for the save and removed again; onnxruntime then
    reads the file itself, so no serialized copy stays alive in Python during calibration.
    """
    outs = base.graph.output
    n0 = len(outs)
    have = {v.name for v in outs}
    outs.extend(
        onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
        for t in tensors
        if t not in have
    )
    try:
        big = model_bytes(base) > 1_800_000_000
        onnx.save_model(
            base,
            path,
            save_as_external_data=big,
            all_tensors_to_one_file=True,
            location="probe.onnx.data",
        )
    finally:
        del outs[n0:]


def collect_stats_split(
    model: bytes,
    tensors: list[str],
    runs: list[dict[str, np.ndarray]],
    parallel: Callable,
    *,
    bins: int = DEFAULT_BINS,
    batch: int = 8,
    dynamic_batch: bool = False,
) -> dict[str, TensorStats]:
    """:func:`collect_stats` with the runs cut between concatenated groups into
    ``parallel.workers`` parts, each collected where ``parallel`` runs it, then merged: the
    same statistics, bit for bit (see :meth:`TensorStats.merge`)."""
    groups = batch_groups(runs, batch, dynamic_batch)
    parts = max(1, min(int(getattr(parallel, "workers", 1)), len(groups)))
    bounds = [round(i * len(groups) / parts) for i in range(parts + 1)]
    args = [
        (model, tensors, [runs[i] for g in groups[a:b] for i in g], bins, batch, dynamic_batch)
        for a, b in zip(bounds, bounds[1:], strict=False)
        if b > a
    ]
    merged = {t: TensorStats(t, bins) for t in tensors}
    for part in parallel(_part_stats, args):
        for t, st in part.items():
            merged[t].merge(st)
    return merged


def _part_stats(
    model: bytes, tensors: list[str], runs: list, bins: int, batch: int, dynamic: bool
) -> dict[str, TensorStats]:
    return collect_stats(model, tensors, runs, bins=bins, batch=batch, dynamic_batch=dynamic)
