"""Compare model outputs, Polygraphy-style (the runs come from :mod:`onnxopt.runner`).

- :func:`compare` gives per-output statistics: max / mean / p99 of absolute and relative error,
  cosine similarity, top-1 agreement for class scores, and agreement for label outputs.
- :class:`Exact` is the fixed per-dtype tolerance for exact passes:
  ``|a - b| <= max(atol * scale + rtol * |b|, k * noise)`` with ``scale = max(1, max|b|)``
  (b = reference). ``noise`` is the model's own float noise on that output, when measured: the
  largest difference between onnxruntime's run of the reference with graph optimizations on and
  off (its fusions reorder float arithmetic as a graph rewrite does); ``k`` is
  ``defaults.NOISE_FACTOR``. On a failure it reports the smallest (atol, rtol) that would pass.
- :class:`Budget` is the user's lossy budget (cosine, max abs error, top-1 agreement, accuracy).
- :func:`metric_output` picks the output that holds the scores (or labels) a metric reads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from onnxopt import phases
from onnxopt.defaults import EXACT_ATOL, EXACT_RTOL, MIN_COSINE, NOISE_FACTOR
from onnxopt.errors import DataError, OptionError
from onnxopt.runner import Runs, contiguous, in_threads, side_by_side

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Comparison


@dataclass
class OutputStats:
    """Error statistics of one output over all runs."""

    name: str
    dtype: str
    max_abs: float = 0.0
    mean_abs: float = 0.0
    p99_abs: float | None = None  # computed only when asked: compare(percentiles=True)
    max_rel: float = 0.0
    mean_rel: float = 0.0
    p99_rel: float | None = None
    cosine: float = 1.0
    top1: float | None = None
    ref_scale: float = 0.0
    shape_mismatch: str | None = None
    exact_equal: bool = True


@dataclass
class Comparison:
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    #: per float output, each run's dot products (r.c, r.r, c.c): the cosine of any subset of
    #: the runs without comparing them again (:meth:`cosines_over`); not in the report
    run_dots: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def cosines_over(self, runs: slice) -> dict[str, float]:
        """Each float output's cosine over ``runs`` only (the outputs compared as a whole,
        such as one with non-finite values, are left out)."""
        out = {}
        for name, dots in self.run_dots.items():
            rc, rr, cc = dots[runs].sum(axis=0)  # an empty slice sums to zeros
            out[name] = _cosine_of(float(rc), float(rr), float(cc))
        return out

    @property
    def max_abs(self) -> float:
        return max((s.max_abs for s in self.outputs.values()), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((s.max_rel for s in self.outputs.values()), default=0.0)

    @property
    def cosine(self) -> float:
        return min((s.cosine for s in self.outputs.values()), default=1.0)

    @property
    def top1(self) -> float | None:
        vals = [s.top1 for s in self.outputs.values() if s.top1 is not None]
        return min(vals) if vals else None

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": {k: asdict(v) for k, v in self.outputs.items()}, "missing": self.missing}


def _looks_like_scores(a: np.ndarray) -> bool:
    """Class scores: [batch, classes], or a sequence of class probabilities [batch, steps,
    classes] whose rows are non-negative and sum to 1 (a CTC recognizer's softmax): top-1
    agreement is then per step."""
    if a.dtype.kind != "f" or a.shape[-1:] in ((), (0,), (1,)):
        return False
    if a.ndim == 2:
        return True
    if a.ndim != 3 or not a.size:
        return False
    # the row sums accumulate in float64 without a float64 copy of the whole array; the
    # minimum needs no boolean copy (NaN fails both)
    return bool(a.min() >= 0 and np.allclose(a.sum(-1, dtype=np.float64), 1.0, atol=1e-3))


def compare(
    reference: Runs, candidate: Runs, percentiles: bool = False, errors: bool = True
) -> Comparison:
    """Compare two runs lists output by output (all runs pooled). ``errors=False``: a float
    output's cosine alone (its error statistics and top-1 agreement left NaN and None), for
    a verdict that reads nothing else: a task metric's search scores (0.4 s of a PP-OCRv5
    recognizer's comparison, 60 %, goes to the errors and the argmax)."""
    comp = Comparison()
    if not reference:
        return comp
    for name in reference[0]:
        if name not in candidate[0]:
            comp.missing.append(name)
            continue
        refs = [r[name] for r in reference]
        cands = [c[name] for c in candidate]
        dots: list[tuple[float, float, float]] = []
        comp.outputs[name] = compare_arrays(name, refs, cands, percentiles, dots, errors)
        if len(dots) == len(refs):
            comp.run_dots[name] = np.array(dots, dtype=np.float64).reshape(-1, 3)
    return comp


@phases.timed(phases.COMPARING)
def compare_arrays(
    name: str,
    refs: list[np.ndarray],
    cands: list[np.ndarray],
    percentiles: bool = False,
    run_dots: list[tuple[float, float, float]] | None = None,
    errors: bool = True,
) -> OutputStats:
    """Statistics of ``cands`` against ``refs`` (lists of arrays, one per run); the 99th
    percentiles of the errors only with ``percentiles`` (None otherwise). ``run_dots``, for a
    float output: each run's (r.c, r.r, c.c) is appended to it."""
    dtype = np.asarray(refs[0]).dtype
    st = OutputStats(name=name, dtype=dtype.name)
    for r, c in zip(refs, cands):
        r, c = np.asarray(r), np.asarray(c)
        if r.shape != c.shape:
            st.shape_mismatch = f"{list(c.shape)} vs reference {list(r.shape)}"
            st.exact_equal = False
            st.cosine = 0.0
            st.max_abs = st.max_rel = float("inf")
            return st
    if dtype.kind not in "fc":
        equal = all(np.array_equal(r, c) for r, c in zip(refs, cands))
        st.exact_equal = equal
        if all(np.asarray(x).ndim == 1 for x in refs) and dtype.kind in "iub":
            st.top1 = float(
                np.concatenate([np.asarray(r) == np.asarray(c) for r, c in zip(refs, cands)]).mean()
            )
        if not equal:
            diffs = [
                np.abs(np.asarray(r, np.float64) - np.asarray(c, np.float64)).max(initial=0)
                for r, c in zip(refs, cands)
                if np.asarray(r).size
            ]
            st.max_abs = float(max(diffs, default=0.0))
            st.cosine = 0.0 if st.max_abs else 1.0
        return st
    # float outputs: the statistics accumulate slice by slice of each run, in float64, so
    # memory stays a slice's (a CTC recognizer's 63 runs x 40 steps x 18,385 classes pool to
    # 93M values: ~1.5 GB of float64 and 9 s a comparison when pooled); percentiles need every
    # error at once and are computed only when asked (``onnxopt verify``)
    acc = _Sums()
    scores = True
    agree: list[np.ndarray] = []
    keep: list[tuple[np.ndarray, np.ndarray]] = []
    for run in _per_run(refs, cands, percentiles, errors):
        if run is None:  # non-finite values at different places
            st.max_abs = st.max_rel = float("inf")
            st.cosine, st.exact_equal, st.top1 = 0.0, False, None
            return st
        sums, kept, looks, same = run
        keep += kept
        scores = scores and looks
        if scores:
            agree.append(same)
        acc.merge(sums)
        if run_dots is not None:
            run_dots.append((sums.rc, sums.rr, sums.cc))
    n, sum_abs, sum_rel, rc, rr, cc = acc.n, acc.sum_abs, acc.sum_rel, acc.rc, acc.rr, acc.cc
    st.max_abs, st.max_rel, st.ref_scale = acc.max_abs, acc.max_rel, acc.ref_scale
    st.exact_equal = st.exact_equal and acc.max_abs == 0.0
    if not errors:  # not measured
        st.max_abs = st.max_rel = st.ref_scale = math.nan
        st.exact_equal = False
    if not n:
        return st
    st.mean_abs, st.mean_rel = sum_abs / n, sum_rel / n
    if percentiles:
        st.p99_abs = float(np.percentile(np.concatenate([d for d, _ in keep]), 99))
        st.p99_rel = float(np.percentile(np.concatenate([r for _, r in keep]), 99))
    st.cosine = _cosine_of(rc, rr, cc)
    if scores and agree:
        st.top1 = float(np.concatenate(agree).mean())
    return st


#: values a comparison holds before it compares its runs in threads (one per core, at most
#: :data:`onnxopt.runner.MAX_SIDE`): the PP-OCRv5 recognizer's 31 runs (93M values) took
#: 0.38 s in one thread and 0.26 s in two, 16 times in a quantization job
THREADS_MIN_VALUES = 1 << 22


_Run = tuple["_Sums", list[tuple[np.ndarray, np.ndarray]], bool, np.ndarray]


def _per_run(
    refs: list[np.ndarray], cands: list[np.ndarray], keep: bool, errors: bool = True
) -> list[_Run | None]:
    """Each run's statistics (:func:`_compare_run`), in the runs' order: the runs cut into
    contiguous parts, one thread each, when they hold :data:`THREADS_MIN_VALUES` values or
    more (numpy releases the GIL in its loops; each part has its own slice buffers, and the
    runs' sums merge in the same order as in one thread, so the statistics are the same)."""
    size = max(max(np.asarray(x).size for x in refs), 1)
    total = sum(np.asarray(x).size for x in refs)
    threads = side_by_side() if total >= THREADS_MIN_VALUES else 1

    def part(lo: int, hi: int) -> list[_Run | None]:
        # four float64 rows reused by every slice: fresh ones cost a page fault per value
        # (each is mapped anew above malloc's threshold) and made a comparison of 31
        # recognizer runs take 0.9 s of a quantization's 13 comparisons
        work = np.empty((4, min(_CHUNK, size)))
        return [_compare_run(refs[i], cands[i], work, keep, errors) for i in range(lo, hi)]

    out: list[_Run | None] = []
    for runs in in_threads(part, contiguous(len(refs), threads)):
        out += runs
    return out


def _compare_run(x: Any, y: Any, work: np.ndarray, keep: bool, errors: bool = True) -> _Run | None:
    """One run's (sums, kept errors, whether it looks like class scores, its per-step top-1
    agreement), None when its non-finite values are not at the same places in both."""
    x, y = np.asarray(x), np.asarray(y)
    r, c = x.ravel(), y.ravel()
    run, kept = _run_sums(r, c, work, keep, errors)
    if not (np.isfinite(run.rr) and np.isfinite(run.cc)):
        # a NaN or an infinity (no sum of squares of finite values overflows float64): both
        # must hold it at the same places; the values elsewhere are compared
        r, c = r.astype(np.float64), c.astype(np.float64)
        r_nan, c_nan = ~np.isfinite(r), ~np.isfinite(c)
        if (r_nan != c_nan).any() or not np.array_equal(r[r_nan], c[c_nan], equal_nan=True):
            return None
        run, kept = _run_sums(r[~r_nan], c[~r_nan], work, keep, errors)
    looks = errors and _looks_like_scores(x)
    # raveled: runs of a sequence model give [batch, steps, classes]
    same = (np.argmax(x, -1) == np.argmax(y, -1)).ravel() if looks else np.empty(0, bool)
    return run, kept, looks, same


#: values per slice of a run compared at once: the float64 temporaries of a slice stay in the
#: CPU's cache (a CTC recognizer's run is 6.5M values; whole-run float64 arrays made a
#: comparison of 31 runs take 2 s, 24 ns a value)
_CHUNK = 1 << 16


@dataclass
class _Sums:
    """Running error statistics over slices of runs (float64)."""

    n: int = 0
    sum_abs: float = 0.0
    sum_rel: float = 0.0
    rc: float = 0.0
    rr: float = 0.0
    cc: float = 0.0
    max_abs: float = 0.0
    max_rel: float = 0.0
    ref_scale: float = 0.0

    def add(
        self, r: np.ndarray, c: np.ndarray, keep: bool, work: np.ndarray, errors: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add one slice (any float dtype, at most ``work``'s row length), computed in
        ``work``'s four float64 rows; returns its (|error|, relative error) when ``keep``
        (for percentiles), else empty arrays."""
        m = r.size
        if not m:
            return np.empty(0), np.empty(0)
        r64, c64, diff, rel = (row[:m] for row in work)
        np.copyto(r64, r, casting="unsafe")
        np.copyto(c64, c, casting="unsafe")
        # einsum sums in its own loop, one thread: BLAS threads a dot of 65,536 values, and
        # with onnxruntime's threads (or another process) on the cores, each of the thousands
        # of dots a comparison makes waits for them (a recognizer comparison: 0.3 s -> 3.6 s)
        # an infinity or a NaN makes these NaN without a warning on the user's console: the
        # caller checks the sums and compares such runs value by value
        with np.errstate(invalid="ignore", over="ignore"):
            self.rc += float(np.einsum("i,i", r64, c64))
            self.rr += float(np.einsum("i,i", r64, r64))
            self.cc += float(np.einsum("i,i", c64, c64))
            if not errors:  # the dot products alone (compare(errors=False))
                self.n += m
                return np.empty(0), np.empty(0)
            np.abs(np.subtract(r64, c64, out=diff), out=diff)
            np.abs(r64, out=rel)
            self.ref_scale = max(self.ref_scale, float(rel.max()))
            np.divide(diff, np.maximum(rel, 1e-12, out=rel), out=rel)
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.n += m
        self.sum_abs += float(diff.sum())
        self.sum_rel += float(rel.sum())
        return (diff.copy(), rel.copy()) if keep else (np.empty(0), np.empty(0))

    def merge(self, other: _Sums) -> None:
        """Add ``other``'s slices to these."""
        self.n += other.n
        self.sum_abs += other.sum_abs
        self.sum_rel += other.sum_rel
        self.rc, self.rr, self.cc = self.rc + other.rc, self.rr + other.rr, self.cc + other.cc
        self.max_abs = max(self.max_abs, other.max_abs)
        self.max_rel = max(self.max_rel, other.max_rel)
        self.ref_scale = max(self.ref_scale, other.ref_scale)


def _run_sums(
    r: np.ndarray, c: np.ndarray, work: np.ndarray, keep: bool, errors: bool = True
) -> tuple[_Sums, list[tuple[np.ndarray, np.ndarray]]]:
    """One run's statistics (``r``, ``c`` raveled), slice by slice of ``work``'s row length;
    with ``keep``, each slice's errors too (for percentiles)."""
    run, kept, step = _Sums(), [], work.shape[1]
    for lo in range(0, r.size, step):
        got = run.add(r[lo : lo + step], c[lo : lo + step], keep, work, errors)
        if keep:
            kept.append(got)
    return run, kept


def _cosine_of(rc: float, rr: float, cc: float) -> float:
    """Cosine from the dot products r.c, r.r and c.c."""
    if rr == 0 and cc == 0:
        return 1.0
    if rr == 0 or cc == 0:
        return 0.0
    return float(np.clip(rc / (np.sqrt(rr) * np.sqrt(cc)), -1.0, 1.0))


# --------------------------------------------------------------------------------------------
# Tolerances


@dataclass(frozen=True)
class Tol:
    rtol: float
    atol: float


#: fixed per-dtype tolerances for exact passes; "" is the default key
EXACT_TOLERANCES: dict[str, Tol] = {
    "": Tol(rtol=EXACT_RTOL, atol=EXACT_ATOL),
    "float32": Tol(rtol=EXACT_RTOL, atol=EXACT_ATOL),
    "float16": Tol(rtol=1e-2, atol=1e-3),
    "bfloat16": Tol(rtol=2e-2, atol=1e-2),
    "float64": Tol(rtol=1e-7, atol=1e-9),
}


@dataclass
class Verdict:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    #: :meth:`Exact.check`: the outputs over their tolerance alone (:meth:`Exact.widened`)
    over: dict[str, Over] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return self.ok

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass(frozen=True)
class Over:
    """An output over its exact tolerance: the largest error of its values over it, the
    tolerances that would pass (text), its dtype and the reason given."""

    worst: float
    need: str
    dtype: str
    reason: str


class Exact:
    """Outputs must match within float noise: ``|a-b| <= atol*max(1,max|b|) + rtol*|b|``."""

    def __init__(self, tolerances: dict[str, Tol] | None = None) -> None:
        self.tolerances = dict(EXACT_TOLERANCES if tolerances is None else tolerances)

    def tol(self, dtype: str) -> Tol:
        return self.tolerances.get(dtype, self.tolerances[""])

    def check(
        self, reference: Runs, candidate: Runs, noise: dict[str, float] | None = None
    ) -> Verdict:
        """Every output of ``candidate`` within tolerance of ``reference``; ``noise`` (per
        output) widens the tolerance to ``NOISE_FACTOR`` times the model's own float noise."""
        reasons: list[str] = []
        over: dict[str, Over] = {}
        if not reference:
            return Verdict(True)
        for name in reference[0]:
            if name not in candidate[0]:
                reasons.append(f"output '{name}' is missing")
                continue
            refs = [np.asarray(r[name]) for r in reference]
            cands = [np.asarray(c[name]) for c in candidate]
            why = self._check_output(name, refs, cands, (noise or {}).get(name, 0.0), over)
            if why:
                reasons.append(why)
        return Verdict(not reasons, reasons, over)

    def widened(self, verdict: Verdict, noise: dict[str, float]) -> Verdict:
        """``verdict`` (of :meth:`check` without ``noise``) as :meth:`check` with ``noise``
        would give it, without comparing again: a value over the tolerance fails the widened
        one too when its error is over ``NOISE_FACTOR`` times the noise, so an output passes
        when its largest such error does (0.17 s a check of 8 PP-OCRv5 recognizer runs)."""
        by_reason = {o.reason: (name, o) for name, o in verdict.over.items()}
        reasons = []
        for why in verdict.reasons:
            if why not in by_reason:  # a shape, a NaN pattern, a missing output: as it was
                reasons.append(why)
                continue
            name, o = by_reason[why]
            floor = noise.get(name, 0.0)
            if o.worst > NOISE_FACTOR * floor:
                reasons.append(self._exceeds(name, o.dtype, floor, o.need))
        return Verdict(not reasons, reasons)

    def _exceeds(self, name: str, dtype: str, noise: float, need: str) -> str:
        t = self.tol(dtype)
        floor = f" and {NOISE_FACTOR}x its float noise {noise:.3g}" if noise else ""
        return f"'{name}': exceeds rtol={t.rtol:g} atol={t.atol:g}{floor} ({need})"

    def _check_output(
        self,
        name: str,
        refs: list[np.ndarray],
        cands: list[np.ndarray],
        noise: float = 0.0,
        over: dict[str, Over] | None = None,
    ) -> str:
        for r, c in zip(refs, cands):
            if r.shape != c.shape:
                return f"'{name}': shape {list(c.shape)} != {list(r.shape)}"
            if r.dtype != c.dtype:
                return f"'{name}': dtype {c.dtype} != {r.dtype}"
        if refs[0].dtype.kind not in "fc":
            if not all(np.array_equal(r, c) for r, c in zip(refs, cands)):
                return f"'{name}': {refs[0].dtype} values differ"
            return ""
        t = self.tol(refs[0].dtype.name)
        need_atol, need_rtol, bad = 0.0, 0.0, False
        worst = 0.0  # the largest error of the values over the tolerance alone
        work = np.empty((4, min(_CHUNK, max(r.size for r in refs))))
        for r, c in zip(refs, cands):
            r, c = r.ravel(), c.ravel()
            nan = np.isnan(r)
            if not np.array_equal(nan, np.isnan(c)):
                return f"'{name}': NaN pattern differs"
            inf = np.isinf(r) | np.isinf(c)
            if inf.any() and not np.array_equal(r[inf], c[inf]):
                return f"'{name}': Inf values differ"
            if inf.any() or nan.any():
                fin = ~(inf | nan)
                r, c = r[fin], c[fin]
            if r.size == 0:
                continue
            scale = max(1.0, float(np.abs(r).max()))
            # in float64, slice by slice (:data:`_CHUNK`) in four reused rows: whole-run
            # float64 temporaries made this check 1.5 s of the PP-OCRv5 recognizer's verification
            # (1.0 s against 0.36 s on 32 of its runs)
            for lo in range(0, r.size, _CHUNK):
                m = min(_CHUNK, r.size - lo)
                r64, c64, diff, absr = (row[:m] for row in work)
                np.copyto(r64, r[lo : lo + m], casting="unsafe")
                np.copyto(c64, c[lo : lo + m], casting="unsafe")
                np.abs(np.subtract(r64, c64, out=diff), out=diff)
                np.abs(r64, out=absr)
                # allowed = max(atol * scale + rtol * |r|, NOISE_FACTOR * noise), in c64
                np.multiply(absr, t.rtol, out=c64)
                np.add(c64, t.atol * scale, out=c64)
                if noise == 0.0 and np.greater(diff, c64).any():
                    worst = max(worst, float(diff[diff > c64].max()))
                np.maximum(c64, NOISE_FACTOR * noise, out=c64)
                bad = bad or bool(np.greater(diff, c64).any())
                np.multiply(absr, t.rtol, out=c64)
                need_atol = max(need_atol, float(np.subtract(diff, c64, out=c64).max()) / scale)
                np.subtract(diff, t.atol * scale, out=c64)
                np.divide(c64, np.maximum(absr, 1e-30, out=absr), out=c64)
                need_rtol = max(need_rtol, float(c64.max()))
        if bad:
            need = f"would pass with atol>={need_atol:.3g} or rtol>={need_rtol:.3g}"
            why = self._exceeds(name, refs[0].dtype.name, noise, need)
            if over is not None and noise == 0.0:
                over[name] = Over(worst, need, refs[0].dtype.name, why)
            return why
        return ""


@dataclass
class Budget:
    """The user's error budget for lossy passes, checked against the original model.

    Attributes:
        min_cosine: every float output's cosine similarity to the original at least this.
        max_abs_err: every output's max absolute error at most this.
        min_top1_agreement: argmax agreement with the original on class-score outputs.
        max_accuracy_drop: accuracy (with labels) may drop at most this many points (0-100).
        metric: a task metric (:class:`onnxopt.metric.TaskMetric`, ``--metric``) scoring the
            outputs of every verification run; the candidate's score may be at most
            ``max_metric_drop`` below the original's.
        max_metric_drop: in the metric's own units (0: no drop at all).
    """

    min_cosine: float | None = MIN_COSINE
    max_abs_err: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None
    metric: Any = None
    max_metric_drop: float = 0.0

    def check(
        self,
        comparison: Comparison,
        accuracy: tuple[float, float] | None = None,
        metric: tuple[float, float] | None = None,
    ) -> Verdict:
        """``accuracy`` is (original, candidate) in percent, when labels were given; ``metric``
        is (original, candidate) scores of :attr:`metric`, when it was computed."""
        reasons = []
        if self.metric is not None and metric is not None:
            drop = metric[0] - metric[1]
            if drop > self.max_metric_drop:
                reasons.append(
                    f"{self.metric} {metric[1]:.4g} is {drop:.4g} below the original's "
                    f"{metric[0]:.4g} (budget {self.max_metric_drop:g})"
                )
        if comparison.missing:
            reasons.append(f"outputs missing: {comparison.missing}")
        for s in comparison.outputs.values():
            if s.shape_mismatch:
                reasons.append(f"'{s.name}': shape {s.shape_mismatch}")
                continue
            if s.dtype not in ("float32", "float16", "float64", "bfloat16"):
                if (
                    not s.exact_equal
                    and self.max_accuracy_drop is None
                    and self.min_top1_agreement is None
                    and self.metric is None
                ):
                    reasons.append(f"'{s.name}': {s.dtype} output changed")
                continue
            if self.min_cosine is not None and s.cosine < self.min_cosine:
                reasons.append(f"'{s.name}': cosine {s.cosine:.4f} < {self.min_cosine}")
            if self.max_abs_err is not None and s.max_abs > self.max_abs_err:
                reasons.append(f"'{s.name}': max abs err {s.max_abs:.3g} > {self.max_abs_err}")
            if (
                self.min_top1_agreement is not None
                and s.top1 is not None
                and (s.top1 < self.min_top1_agreement)
            ):
                reasons.append(
                    f"'{s.name}': top-1 agreement {s.top1:.4f} < {self.min_top1_agreement}"
                )
        if self.max_accuracy_drop is not None and accuracy is not None:
            drop = accuracy[0] - accuracy[1]
            if drop > self.max_accuracy_drop:
                reasons.append(
                    f"accuracy {accuracy[1]:.2f}% is {drop:.2f} points below {accuracy[0]:.2f}%"
                    f" (budget {self.max_accuracy_drop})"
                )
        return Verdict(not reasons, reasons)

    def describe(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"cosine>={self.min_cosine}")
        if self.max_abs_err is not None:
            parts.append(f"max_abs<={self.max_abs_err}")
        if self.min_top1_agreement is not None:
            parts.append(f"top1>={self.min_top1_agreement}")
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop<={self.max_accuracy_drop}pt")
        if self.metric is not None:
            parts.append(f"{self.metric} drop<={self.max_metric_drop:g}")
        return ", ".join(parts) or "none"


def metric_output(run: dict[str, np.ndarray], output: str | None = None) -> str:
    """The output metrics read: ``output`` when given, else the first that holds class scores
    (float, rank >= 2, more than one class), else the first integer label vector, else the
    first output."""
    if output is not None:
        if output not in run:
            raise OptionError(f"--metric-output {output!r}: the model's outputs are {list(run)}")
        return output
    for name, a in run.items():
        a = np.asarray(a)
        if a.ndim == 2 and _looks_like_scores(a):  # per-sample classes, not per-step ones
            return name
    for name, a in run.items():
        a = np.asarray(a)
        if a.dtype.kind in "iu" and a.ndim == 1:
            return name
    return next(iter(run))


def accuracy(runs: Runs, labels: list[np.ndarray], output: str | None = None) -> float:
    """Top-1 accuracy in percent against ``labels``, read from :func:`metric_output` (argmax of
    scores; an integer label output is compared as it is)."""
    if not runs:
        return 0.0
    name = metric_output(runs[0], output)
    preds, ys = [], []
    for i, (run, lab) in enumerate(zip(runs, labels)):
        out = np.asarray(run[name])
        if out.dtype.kind in "iu" and out.ndim == 1:
            preds.append(out)
        else:
            preds.append(np.argmax(out.reshape(out.shape[0], -1), axis=-1))
        ys.append(np.asarray(lab).reshape(-1))
        if ys[-1].size != preds[-1].size:
            raise DataError(
                f"the labels of run {i} hold {ys[-1].size} values but output '{name}' gives "
                f"{preds[-1].size} predictions: accuracy wants one class per sample (labels "
                "that mean something else belong to a task metric, --metric module:function)"
            )
    p, y = np.concatenate(preds), np.concatenate(ys)
    return float((p == y).mean() * 100.0)
