"""Run models in onnxruntime and compare outputs, Polygraphy-style.

- :class:`Runner` builds CPU sessions (graph optimizations off by default, so a reference is the
  literal graph), caches them by model bytes, and runs a :class:`~onnxopt.data.Feeds`.
- :func:`compare` gives per-output statistics: max / mean / p99 of absolute and relative error,
  cosine similarity, and top-1 agreement for class scores.
- :class:`Exact` is the fixed per-dtype tolerance for exact passes:
  ``|a - b| <= atol * scale + rtol * |b|`` with ``scale = max(1, max|b|)`` (b = reference).
  On a failure it reports the smallest (atol, rtol) that would have passed.
- :class:`Budget` is the user's lossy budget (cosine, max abs error, top-1 agreement, accuracy).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.defaults import EXACT_ATOL, EXACT_RTOL, MIN_COSINE
from onnxopt.errors import ModelError, first_line

logger = logging.getLogger(__name__)

Runs = list[dict[str, np.ndarray]]


class Runner:
    """onnxruntime CPU sessions with a small LRU cache keyed by the model's bytes."""

    def __init__(self, *, threads: int = 0, cache_size: int = 2, quiet: bool = False) -> None:
        self.threads = threads
        self.cache_size = cache_size
        #: onnxruntime logs nothing (for probing runs that are expected to fail)
        self.quiet = quiet
        self._sessions: OrderedDict[tuple[str, bool], Any] = OrderedDict()

    def session(self, model: onnx.ModelProto, *, optimized: bool = False) -> Any:
        import onnxruntime as ort

        structure, names, arrays = _split_weights(model)
        key = (hashlib.sha1(structure).hexdigest(), optimized)
        for cached_key, cached in self._sessions.items():
            # the weights are hashed only when the structure matches a cached session
            if cached_key == key and _same_weights(cached._onnxopt_weights[0], arrays):
                self._sessions.move_to_end(cached_key)
                return cached
        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimized
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.log_severity_level = 4 if self.quiet else 3
        # a verification session runs a handful of times: packing every GEMM weight up front
        # costs more (0.3 s and a copy of the weights on BERT-base) than it saves over the runs
        so.add_session_config_entry("session.disable_prepacking", "1")
        if self.threads:
            so.intra_op_num_threads = self.threads
        # The weights go to onnxruntime as in-memory initializers rather than inside the
        # serialized proto: on a 400 MB model this skips a full SerializeToString (and
        # onnxruntime's parse of it), and models above protobuf's 2 GB limit need no temp file.
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        if names:
            so.add_external_initializers(names, values)
        try:
            sess = ort.InferenceSession(structure, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            msg = first_line(e)
            raise ModelError(f"onnxruntime cannot load the model: {msg}") from e
        sess._onnxopt_weights = (arrays, values)  # onnxruntime uses this memory; keep it alive
        self._sessions.pop(key, None)
        self._sessions[key] = sess
        while len(self._sessions) > self.cache_size:
            self._sessions.popitem(last=False)
        return sess

    def run(self, model: onnx.ModelProto, feeds: Feeds, *, optimized: bool = False) -> Runs:
        """Run every feed; returns one {output_name: array} per run."""
        return self.run_session(self.session(model, optimized=optimized), feeds)

    def run_session(self, sess: Any, feeds: Feeds) -> Runs:
        """Run every feed through a session from :meth:`session`."""
        import onnxruntime as ort

        names = [o.name for o in sess.get_outputs()]
        opts = ort.RunOptions()
        opts.log_severity_level = 4 if self.quiet else 3
        out: Runs = []
        for run in feeds.runs:
            try:
                values = sess.run(names, run, opts)
            except Exception as e:
                msg = first_line(e)
                raise ModelError(f"onnxruntime failed to run the model: {msg}") from e
            out.append(dict(zip(names, values)))
        return out

    def clear(self) -> None:
        self._sessions.clear()

    def forget(self, session: Any) -> None:
        """Drop ``session`` from the cache (and with it the weights it holds)."""
        for key, cached in list(self._sessions.items()):
            if cached is session:
                del self._sessions[key]


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b)
    )


def _split_weights(model: onnx.ModelProto) -> tuple[bytes, list[str], list[np.ndarray]]:
    """(serialized model whose large initializers are external stubs, their names, arrays)."""
    from onnx import numpy_helper

    from onnxopt.model import light_model

    shell = light_model(model, stubs=True)
    stubbed = {
        t.name for t in shell.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    }
    names, arrays = [], []
    for t in model.graph.initializer:
        if t.name in stubbed:
            names.append(t.name)
            arrays.append(np.ascontiguousarray(numpy_helper.to_array(t)))
    return shell.SerializeToString(), names, arrays


# --------------------------------------------------------------------------------------------
# Comparison


@dataclass
class OutputStats:
    """Error statistics of one output over all runs."""

    name: str
    dtype: str
    max_abs: float = 0.0
    mean_abs: float = 0.0
    p99_abs: float = 0.0
    max_rel: float = 0.0
    mean_rel: float = 0.0
    p99_rel: float = 0.0
    cosine: float = 1.0
    top1: float | None = None
    ref_scale: float = 0.0
    shape_mismatch: str | None = None
    exact_equal: bool = True


@dataclass
class Comparison:
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

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
    return a.dtype.kind == "f" and a.ndim == 2 and a.shape[-1] > 1


def compare(reference: Runs, candidate: Runs) -> Comparison:
    """Compare two runs lists output by output (all runs pooled)."""
    comp = Comparison()
    if not reference:
        return comp
    for name in reference[0]:
        if name not in candidate[0]:
            comp.missing.append(name)
            continue
        refs = [r[name] for r in reference]
        cands = [c[name] for c in candidate]
        comp.outputs[name] = compare_arrays(name, refs, cands)
    return comp


def compare_arrays(name: str, refs: list[np.ndarray], cands: list[np.ndarray]) -> OutputStats:
    """Statistics of ``cands`` against ``refs`` (lists of arrays, one per run)."""
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
        if not equal:
            diffs = [
                np.abs(np.asarray(r, np.float64) - np.asarray(c, np.float64)).max(initial=0)
                for r, c in zip(refs, cands)
                if np.asarray(r).size
            ]
            st.max_abs = float(max(diffs, default=0.0))
            st.cosine = 0.0 if st.max_abs else 1.0
        return st
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in refs])
    c = np.concatenate([np.asarray(x, np.float64).ravel() for x in cands])
    if r.size == 0:
        return st
    r_nan, c_nan = ~np.isfinite(r), ~np.isfinite(c)
    if (r_nan != c_nan).any() or (
        r_nan.any() and not np.array_equal(r[r_nan], c[c_nan], equal_nan=True)
    ):
        st.max_abs = st.max_rel = float("inf")
        st.cosine = 0.0
        st.exact_equal = False
        return st
    fin = np.isfinite(r)
    r, c = r[fin], c[fin]
    if r.size == 0:
        return st
    diff = np.abs(r - c)
    rel = diff / np.maximum(np.abs(r), 1e-12)
    st.exact_equal = bool((diff == 0).all())
    st.max_abs = float(diff.max())
    st.mean_abs = float(diff.mean())
    st.p99_abs = float(np.percentile(diff, 99))
    st.max_rel = float(rel.max())
    st.mean_rel = float(rel.mean())
    st.p99_rel = float(np.percentile(rel, 99))
    st.ref_scale = float(np.abs(r).max())
    st.cosine = _cosine(r, c)
    if all(_looks_like_scores(np.asarray(x)) for x in refs):
        agree = [np.argmax(x, -1) == np.argmax(y, -1) for x, y in zip(refs, cands)]
        st.top1 = float(np.concatenate(agree).mean())
    return st


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


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

    def __bool__(self) -> bool:
        return self.ok

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


class Exact:
    """Outputs must match within float noise: ``|a-b| <= atol*max(1,max|b|) + rtol*|b|``."""

    def __init__(self, tolerances: dict[str, Tol] | None = None) -> None:
        self.tolerances = dict(EXACT_TOLERANCES if tolerances is None else tolerances)

    def tol(self, dtype: str) -> Tol:
        return self.tolerances.get(dtype, self.tolerances[""])

    def check(self, reference: Runs, candidate: Runs) -> Verdict:
        reasons: list[str] = []
        if not reference:
            return Verdict(True)
        for name in reference[0]:
            if name not in candidate[0]:
                reasons.append(f"output '{name}' is missing")
                continue
            refs = [np.asarray(r[name]) for r in reference]
            cands = [np.asarray(c[name]) for c in candidate]
            why = self._check_output(name, refs, cands)
            if why:
                reasons.append(why)
        return Verdict(not reasons, reasons)

    def _check_output(self, name: str, refs: list[np.ndarray], cands: list[np.ndarray]) -> str:
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
        for r, c in zip(refs, cands):
            r64, c64 = r.astype(np.float64), c.astype(np.float64)
            if not np.array_equal(np.isnan(r64), np.isnan(c64)):
                return f"'{name}': NaN pattern differs"
            inf = np.isinf(r64) | np.isinf(c64)
            if inf.any() and not np.array_equal(r64[inf], c64[inf]):
                return f"'{name}': Inf values differ"
            fin = np.isfinite(r64) & np.isfinite(c64)
            r64, c64 = r64[fin], c64[fin]
            if r64.size == 0:
                continue
            scale = max(1.0, float(np.abs(r64).max()))
            diff = np.abs(r64 - c64)
            allowed = t.atol * scale + t.rtol * np.abs(r64)
            if (diff > allowed).any():
                bad = True
            need_atol = max(need_atol, float(((diff - t.rtol * np.abs(r64)).max()) / scale))
            need_rtol = max(
                need_rtol, float(((diff - t.atol * scale) / np.maximum(np.abs(r64), 1e-30)).max())
            )
        if bad:
            return (
                f"'{name}': exceeds rtol={t.rtol:g} atol={t.atol:g} "
                f"(would pass with atol>={need_atol:.3g} or rtol>={need_rtol:.3g})"
            )
        return ""


@dataclass
class Budget:
    """The user's error budget for lossy passes, checked against the original model.

    Attributes:
        min_cosine: every float output's cosine similarity to the original at least this.
        max_abs_err: every output's max absolute error at most this.
        min_top1_agreement: argmax agreement with the original on class-score outputs.
        max_accuracy_drop: accuracy (with labels) may drop at most this many points (0-100).
    """

    min_cosine: float | None = MIN_COSINE
    max_abs_err: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None

    def check(self, comparison: Comparison, accuracy: tuple[float, float] | None = None) -> Verdict:
        """``accuracy`` is (original, candidate) in percent, when labels were given."""
        reasons = []
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
                    and (self.min_top1_agreement is None)
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
        return ", ".join(parts) or "none"


def accuracy(runs: Runs, labels: list[np.ndarray], output: str | None = None) -> float:
    """Top-1 accuracy in percent of the first (or named) output against labels."""
    preds, ys = [], []
    for run, lab in zip(runs, labels):
        scores = run[output] if output else next(iter(run.values()))
        preds.append(np.argmax(scores.reshape(scores.shape[0], -1), axis=-1))
        ys.append(np.asarray(lab).reshape(-1))
    p, y = np.concatenate(preds), np.concatenate(ys)
    return float((p == y).mean() * 100.0)
