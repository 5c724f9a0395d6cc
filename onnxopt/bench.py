"""Inference latency, throughput and memory of ONNX models in onnxruntime.

For each model and batch size: create a session (timed), run ``warmup`` untimed inferences, then
``runs`` timed ones (or as many as fit in ``seconds``), cycling over the feeds. Reported:

- latency percentiles p50 / p90 / p99 and mean ± std (sample std, ddof = 1), in ms;
- throughput = batch / mean latency (samples per second);
- session creation time (``InferenceSession(path)``: load, graph optimizations, allocation);
- memory. With ``isolate=True`` (the default) every (model, batch) is measured in a **fresh
  subprocess**: ``peak_rss_mb`` is that process's high-water mark (``getrusage`` ``ru_maxrss``:
  Python + onnxruntime + feeds + session + runs) and ``session_rss_mb`` is that peak minus the RSS
  just before the session was created. With ``isolate=False`` everything runs in this process
  and both numbers come from **RSS deltas** (psutil) sampled after session creation, warm-up and
  the runs, so they are approximate (freed memory and earlier peaks are not seen);
- file size (the .onnx plus external data files it references).

Noise: the 95 % confidence interval of the mean is ``mean ± t₀.₉₇₅,ₙ₋₁ · std / √n``; the 95 %
interval of the median is distribution-free, between the order statistics of rank
``n/2 ∓ 1.96·√n/2`` (binomial). Two results are "within noise" when their median intervals
overlap (latency distributions are skewed, so the median's interval is the robust one).
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds, input_specs, load_feeds
from onnxopt.errors import DataError, ModelError, OptionError
from onnxopt.synth import get_feeds
from onnxopt.timing import Progress, measure

logger = logging.getLogger(__name__)

OPTIMIZATION = ("disable", "basic", "extended", "all")


@dataclass
class BenchResult:
    """One (model, batch) measurement. Times in milliseconds, memory in MiB."""

    model: str
    path: str
    batch: int
    provider: str
    threads: int
    optimization: str
    warmup: int
    runs: int
    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    mean_ci: tuple[float, float]
    median_ci: tuple[float, float]
    throughput: float
    session_ms: float
    peak_rss_mb: float
    session_rss_mb: float
    memory_method: str
    file_bytes: int
    inputs: str
    synthesized: bool
    notes: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self, latencies: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not latencies:
            d.pop("latencies_ms")
        return d

    def within_noise(self, other: BenchResult) -> bool:
        """True when the 95 % intervals of the two medians overlap."""
        return self.median_ci[0] <= other.median_ci[1] and other.median_ci[0] <= self.median_ci[1]

    def ratio(self, base: BenchResult) -> float:
        """Median latency relative to ``base`` (< 1 is faster)."""
        return self.p50 / base.p50 if base.p50 > 0 else float("nan")


# --------------------------------------------------------------------------- statistics


def _t975(dof: int) -> float:
    """Two-sided 95 % Student-t quantile (table below 30 degrees of freedom, else normal)."""
    table = [
        12.71,
        4.303,
        3.182,
        2.776,
        2.571,
        2.447,
        2.365,
        2.306,
        2.262,
        2.228,
        2.201,
        2.179,
        2.160,
        2.145,
        2.131,
        2.120,
        2.110,
        2.101,
        2.093,
        2.086,
        2.080,
        2.074,
        2.069,
        2.064,
        2.060,
        2.056,
        2.052,
        2.048,
        2.045,
    ]
    return table[dof - 1] if 1 <= dof <= len(table) else 1.96


def summarize(lat_ms: Sequence[float]) -> dict[str, Any]:
    """Percentiles, mean, std and 95 % intervals of the mean and of the median."""
    a = np.sort(np.asarray(lat_ms, dtype=np.float64))
    n = len(a)
    if n == 0:
        raise ValueError("no latencies")
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    half = _t975(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
    lo = max(0, int(math.floor(n / 2 - 1.96 * math.sqrt(n) / 2)) - 1)
    hi = min(n - 1, int(math.ceil(n / 2 + 1.96 * math.sqrt(n) / 2)))
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "mean": mean,
        "std": std,
        "mean_ci": (mean - half, mean + half),
        "median_ci": (float(a[lo]), float(a[hi])),
    }


# --------------------------------------------------------------------------- options


def provider_name(name: str) -> str:
    """``cpu`` / ``CPUExecutionProvider`` / any available provider's short name -> full name."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    short = {p.removesuffix("ExecutionProvider").lower(): p for p in available}
    key = name.strip()
    if key in available:
        return key
    if key.lower() in short:
        return short[key.lower()]
    raise OptionError(
        f"--provider {name!r} is not available here; choose one of {', '.join(sorted(short))}"
    )


def parse_batches(text: str | Sequence[int] | None) -> list[int | None]:
    """``"1,8,32"`` -> [1, 8, 32]; None -> [None] (the model's own batch)."""
    if text is None:
        return [None]
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        out = [int(str(b).strip()) for b in items if str(b).strip()]
    except ValueError as e:
        raise OptionError(f"--batch {text!r}: expected integers like 1,8,32") from e
    if not out or any(b <= 0 for b in out):
        raise OptionError(f"--batch {text!r}: batch sizes must be positive integers")
    return out


def _check_options(
    optimization: str, warmup: int, runs: int, seconds: float | None, threads: int
) -> None:
    if optimization not in OPTIMIZATION:
        raise OptionError(f"--optimization {optimization!r}: use one of {', '.join(OPTIMIZATION)}")
    if warmup < 0 or runs < 1 or threads < 0 or (seconds is not None and seconds <= 0):
        raise OptionError("--warmup and --threads must be >= 0, --runs >= 1, --seconds > 0")


# --------------------------------------------------------------------------- feeds


def feeds_for_batch(
    model: onnx.ModelProto,
    batch: int | None,
    *,
    data: Any = None,
    shapes: dict[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    max_runs: int = 8,
) -> Feeds:
    """Feeds whose first dimension is ``batch`` (None: the model's own batch, 1 if dynamic).

    Raises:
        DataError: the model fixes dim 0 to another size, inputs cannot be synthesized (the
            message says which option to give), or the data has fewer samples than ``batch``.
    """
    specs = input_specs(model)
    fixed = {s.name: s.shape[0] for s in specs if s.rank and isinstance(s.shape[0], int)}
    if batch is not None:
        for name, b in fixed.items():
            if b != batch:
                raise DataError(
                    f"input '{name}' has a fixed batch dimension of {b}; "
                    f"--batch {batch} needs a model with a dynamic batch"
                )
    if data is not None:
        feeds = load_feeds(data, model, batch=1, limit=None)
        if batch is not None and batch > 1 and not fixed:
            n = feeds.num_samples
            if n < batch:
                raise DataError(f"{feeds.source}: {n} samples, fewer than --batch {batch}")
            feeds = feeds.subset(batch * max_runs).batched(batch)
            if next(iter(feeds.runs[-1].values())).shape[0] != batch:
                feeds.runs.pop()  # the last, partial batch (batched() built these lists)
                if feeds.labels is not None:
                    feeds.labels.pop()
        return feeds.subset(max_runs)
    shp = {k: list(v) for k, v in (shapes or {}).items()}
    if batch is not None:
        for s in specs:
            if s.rank and not isinstance(s.shape[0], int):
                dims = shp.get(s.name) or [d if isinstance(d, int) else None for d in s.shape]
                if s.name not in shp and any(d is None for d in dims[1:]):
                    continue  # synthesize() names the --shape to give
                shp[s.name] = [batch] + list(dims[1:])
    return get_feeds(model, None, shapes=shp, int_range=int_range, runs=max_runs)


def _describe(run: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.dtype.name}[{'x'.join(map(str, v.shape))}]" for k, v in run.items())


def file_bytes(path: Path, model: onnx.ModelProto | None = None) -> int:
    """Size of the .onnx file plus the external data files it references."""
    total = path.stat().st_size
    if model is None:
        return total
    seen: set[str] = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            f = path.parent / loc if loc else None
            if f is not None and loc not in seen and f.exists():
                seen.add(loc)
                total += f.stat().st_size
    return total


# --------------------------------------------------------------------------- measurement


def bench(
    models: Sequence[str | os.PathLike | onnx.ModelProto],
    *,
    data: Any = None,
    shapes: dict[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    batch: str | Sequence[int] | None = None,
    threads: int = 0,
    warmup: int = 10,
    runs: int = 100,
    seconds: float | None = None,
    provider: str = "cpu",
    optimization: str = "all",
    isolate: bool = True,
    progress: Progress | None = None,
) -> list[BenchResult]:
    """Benchmark each model at each batch size in onnxruntime.

    Args:
        models: paths to .onnx files or ModelProtos (saved to a temporary file).
        data: .npz / folder / dict of real inputs; None synthesizes them.
        shapes: dims for dynamic inputs when synthesizing (``{"x": [1, 3, 224, 224]}``).
        int_range: (low, high) for integer inputs when synthesizing.
        batch: ``"1,8,32"`` or a list; sets dim 0 of dynamic-batch inputs. None: model's own.
        threads: intra-op threads (0: onnxruntime's default).
        warmup: untimed runs before timing.
        runs: timed runs (ignored when ``seconds`` is given).
        seconds: time budget per measurement instead of a run count.
        provider: ``cpu`` or another available execution provider.
        optimization: onnxruntime graph optimization level: disable, basic, extended, all.
        isolate: measure each (model, batch) in a fresh subprocess (clean peak memory).
        progress: ``callback(what, done, total)``; ``what`` is ``"<model> b<batch>"``.

    Returns:
        One BenchResult per (model, batch), models in the order given, batches inner.

    Raises:
        ModelError, DataError, OptionError: one-line, user-facing problems.
    """
    _check_options(optimization, warmup, runs, seconds, threads)
    prov = provider_name(provider)
    batches = parse_batches(batch)
    if not models:
        raise OptionError("give at least one model")
    timing = dict(
        provider=prov,
        threads=threads,
        optimization=optimization,
        warmup=warmup,
        runs=runs,
        seconds=seconds,
    )
    results: list[BenchResult] = []
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-models-") as tmp:
        prepared = [_prepare(m, i, Path(tmp)) for i, m in enumerate(models)]
        labels = _labels([p for p, _ in prepared])
        for (path, model), label in zip(prepared, labels, strict=True):
            for b in batches:
                feeds = feeds_for_batch(model, b, data=data, shapes=shapes, int_range=int_range)
                shown = "" if path.parent == Path(tmp) else str(path)
                results.append(
                    _bench_one(path, shown, model, label, feeds, isolate, progress, timing)
                )
    return results


def _bench_one(
    path: Path,
    shown: str,
    model: onnx.ModelProto,
    label: str,
    feeds: Feeds,
    isolate: bool,
    progress: Progress | None,
    timing: dict[str, Any],
) -> BenchResult:
    """Time one (model, batch) in a subprocess or in this process."""
    first = feeds.runs[0]
    lead = next(iter(first.values())) if first else None
    bsz = lead.shape[0] if lead is not None and lead.ndim else 1
    what = f"{label} b{bsz}"
    cb = None if progress is None else (lambda _w, d, t: progress(what, d, t))
    logger.info("bench %s (%s)", what, _describe(first))
    out = (
        measure_isolated(str(path), feeds.runs, cb, **timing)
        if isolate
        else measure(str(path), feeds.runs, progress=cb, **timing)
    )
    lat = out.pop("latencies_ms")
    stats = summarize(lat)
    return BenchResult(
        model=label,
        path=shown,
        batch=int(bsz),
        runs=len(lat),
        **stats,
        throughput=bsz / (stats["mean"] / 1e3) if stats["mean"] > 0 else 0.0,
        file_bytes=file_bytes(path, model),
        inputs=_describe(first),
        synthesized=feeds.synthesized,
        notes=list(feeds.notes),
        latencies_ms=lat,
        **{k: timing[k] for k in ("provider", "threads", "optimization", "warmup")},
        **out,
    )


def _prepare(m: Any, i: int, tmp: Path) -> tuple[Path, onnx.ModelProto]:
    if isinstance(m, onnx.ModelProto):
        path = tmp / f"model{i}.onnx"
        onnx.save_model(m, str(path))
        return path, m
    path = Path(os.fspath(m))
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelError(f"{path}: not an ONNX model or truncated ({type(e).__name__})") from e
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{path}: not an ONNX model (no graph or IR version)")
    return path, model


def _labels(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(p) for p in paths]


def measure_isolated(
    path: str, runs_feeds: list[dict[str, np.ndarray]], progress: Progress | None, **kw: Any
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(
            feeds_path, **{f"{i}/{k}": v for i, r in enumerate(runs_feeds) for k, v in r.items()}
        )
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps({"path": path, "feeds": str(feeds_path), "nruns": len(runs_feeds), **kw})
        )
        code = "from onnxopt.bench_worker import child; child()"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(job)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        result: dict[str, Any] | None = None
        error: dict[str, str] | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            kind, _, rest = line.strip().partition(" ")
            if kind == "progress" and progress is not None:
                done, total = (float(v) for v in rest.split())
                progress("run", done, total)
            elif kind == "result":
                result = json.loads(rest)
            elif kind == "error":
                error = json.loads(rest)
        stderr = proc.stderr.read() if proc.stderr else ""
        proc.wait()
    if error is not None:
        cls = ModelError if error["type"] == "ModelError" else OptionError
        raise cls(error["message"])
    if result is None:
        last = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise ModelError(f"{path}: benchmark subprocess failed ({last[:200]})")
    return result
