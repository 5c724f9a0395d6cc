"""Input feeds: calibration and verification inputs for a model.

Sources: an ``.npz`` (keys = input names), a folder of ``.npy`` files named after the inputs, a
dict of arrays, an iterable of dicts, or synthesized from the model's input specs. Every source is
checked against the model (names, dtypes, ranks, static dims) with a one-line :class:`DataError`.

Layouts, told apart by rank (see docs/ARCHITECTURE.md, "Data"):
- rank == input rank + 1: a stack; ``arr[i]`` is one run's whole value;
- rank == input rank: split along axis 0 into runs of the model's batch size (1 if dynamic,
  unless ``batch`` says otherwise).
Labels sit under the key ``labels``, one row per run (or per sample, split like the inputs).
Runs whose shapes differ (an OCR detector's images) cannot share an array: an ``.npz`` whose
every key is ``RUN/NAME`` (``0000/x``, ``0001/x``, ..., labels ``0000/labels``) holds one array
per run and input, runs in the order of their numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import DataError

LABELS_KEY = "labels"


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | str | None]  # int = static, str/None = dynamic

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        dims = "x".join("?" if not isinstance(d, int) else str(d) for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs are excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            raise DataError(f"input '{v.name}' is not a tensor (sequences and maps unsupported)")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape: list[int | str | None] = []
        for d in t.shape.dim:
            if d.HasField("dim_value") and d.dim_value >= 0:
                shape.append(int(d.dim_value))  # 0 is a real (empty) size
            elif d.HasField("dim_param"):
                shape.append(d.dim_param)
            else:
                shape.append(None)
        specs.append(InputSpec(v.name, dtype, shape))
    return specs


@dataclass
class Feeds:
    """A list of runs; each run maps every model input name to an array.

    Attributes:
        runs: the runs.
        labels: one entry per run (array of labels for that run's batch), or None.
        synthesized: True when made up from input specs (no real data).
        source: where they came from, for reports.
    """

    runs: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None = None
    synthesized: bool = False
    source: str = ""
    notes: list[str] = field(default_factory=list)
    #: the input speed is judged on (``--latency-batch``: the deployment batch); None: a run
    timing: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.runs)

    @property
    def num_samples(self) -> int:
        return sum(
            next(iter(r.values())).shape[0] if r and next(iter(r.values())).ndim else 1
            for r in self.runs
        )

    def subset(self, n: int) -> Feeds:
        """``n`` runs spread evenly over the list, in order (all of them when ``n`` is at
        least their number; the first for 1), for checks and statistics on fewer runs: the
        search's scoring runs, the exact verification's, the int8 sensitivity and smoothing
        runs. The leading runs of data saved in order (by class, by source) hold one part of
        it: the search scored candidates on the first 64 of 128 learning runs, the first half
        of the data."""
        return self._pick(_spread(len(self.runs), n))

    def spread_first(self, n: int) -> Feeds:
        """The same runs (with their labels), :meth:`subset`'s ``n`` first and the others after,
        each part in order: a prefix of ``n`` runs that is spread over the data."""
        first = _spread(len(self.runs), n)
        chosen = set(first)
        return self._pick(first + [i for i in range(len(self.runs)) if i not in chosen])

    def split(self, fraction: float, *, spread: bool = False) -> tuple[Feeds, Feeds]:
        """Split runs into (first, rest) by ``fraction`` (at least one run in each if possible).

        ``spread=True``: the first part takes runs spread evenly over the whole list (every
        other run for 0.5) instead of the leading ones, in their order. Data is often saved
        in order, by class or by source: a contiguous half learns from some of it and is
        judged on the rest (the PP-OCRv5 recognizer's runs come image by image, and the
        search's choice, exact on every line of the first 31 images' crops, missed 5 lines
        of 64 on the other 31's)."""
        n = len(self.runs)
        k = max(1, min(n - 1, int(round(n * fraction))))
        first = _spread(n, k) if spread and n > 1 else list(range(k))
        chosen = set(first)
        rest = [i for i in range(n) if i not in chosen]
        return self._pick(first), self._pick(rest)

    def _pick(self, idx: list[int]) -> Feeds:
        """These runs (and labels), in this order."""
        return Feeds(
            [self.runs[i] for i in idx],
            None if self.labels is None else [self.labels[i] for i in idx],
            self.synthesized,
            self.source,
            list(self.notes),
            self.timing,
        )

    def batched(self, batch: int) -> Feeds:
        """Concatenate runs along axis 0 into runs of ``batch`` samples (for dynamic batch)."""
        out: list[dict[str, np.ndarray]] = []
        labels: list[np.ndarray] | None = [] if self.labels is not None else None
        for i in range(0, len(self.runs), batch):
            chunk = self.runs[i : i + batch]
            out.append({k: np.concatenate([r[k] for r in chunk]) for k in chunk[0]})
            if labels is not None:
                labels.append(
                    np.concatenate([np.atleast_1d(x) for x in self.labels[i : i + batch]])
                )
        return Feeds(out, labels, self.synthesized, self.source, list(self.notes), self.timing)

    def timing_feed(self) -> dict[str, np.ndarray]:
        """The input speed is judged on: ``timing``, else the run of median size."""
        return self.timing if self.timing is not None else representative(self.runs)

    def stacked_labels(self) -> np.ndarray | None:
        if self.labels is None:
            return None
        return np.concatenate([np.atleast_1d(x) for x in self.labels])


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices of ``n`` spread evenly, in order (``j * n // k``; all ``n`` for k >= n)."""
    k = max(0, min(k, n))
    return [j * n // k for j in range(k)]


def representative(runs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The run of median size (total input elements; of equal ones, the middle one): the input
    speed is judged on without ``--latency-batch``. Runs of an OCR detector are images of many
    sizes, and the first one says little about the others (one of 62 PP-OCRv5 pages ran in
    11 ms where the median one takes 35 ms)."""
    sizes = [sum(int(np.asarray(v).size) for v in r.values()) for r in runs]
    order = sorted(range(len(runs)), key=lambda i: (sizes[i], i))
    return runs[order[len(order) // 2]]


def batch_feed(model: onnx.ModelProto, feeds: Feeds, batch: int) -> dict[str, np.ndarray]:
    """One input of ``batch`` samples for timing (``--latency-batch``): the runs shaped like
    the first beyond axis 0 (synthesized feeds hold two sizes of a dynamic dimension), stacked
    along axis 0, cycled when they hold fewer samples, cut to ``batch``.

    Raises:
        DataError: an input's batch dimension is fixed to another size, or is a scalar.
    """
    if batch < 1:
        raise DataError(f"--latency-batch {batch}: must be at least 1")
    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        dims = v.type.tensor_type.shape.dim
        if v.name in inits or not dims:
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value != batch:
            raise DataError(
                f"--latency-batch {batch}: input {v.name!r} has a fixed batch of "
                f"{dims[0].dim_value}"
            )
    first = feeds.runs[0]
    for k, a in first.items():
        if np.asarray(a).ndim == 0:
            raise DataError(f"--latency-batch {batch}: input {k!r} is a scalar (no batch axis)")
    runs = [r for r in feeds.runs if all(np.shape(r[k])[1:] == first[k].shape[1:] for k in first)]
    parts: dict[str, list[np.ndarray]] = {k: [] for k in first}
    have, i = 0, 0
    while have < batch:
        r = runs[i % len(runs)]
        for k in parts:
            parts[k].append(r[k])
        have += max(1, r[next(iter(r))].shape[0])
        i += 1
    return {k: np.ascontiguousarray(np.concatenate(v)[:batch]) for k, v in parts.items()}


def parse_shape_overrides(items: Iterable[str] | None) -> dict[str, list[int]]:
    """``["x=1x3x224x224", "ids=1x128"]`` -> {"x": [1,3,224,224], ...}."""
    out: dict[str, list[int]] = {}
    for item in items or []:
        if "=" not in item:
            raise DataError(f"--shape {item!r}: expected name=1x3x224x224")
        name, dims = item.split("=", 1)
        try:
            out[name.strip()] = [int(d) for d in dims.lower().replace(",", "x").split("x") if d]
        except ValueError as e:
            raise DataError(f"--shape {item!r}: dimensions must be integers") from e
        if any(d <= 0 for d in out[name.strip()]):
            raise DataError(f"--shape {item!r}: dimensions must be positive")
    return out


def parse_int_range(text: str | None) -> tuple[int, int] | None:
    """``"0,30522"`` or ``"0:30522"`` -> (0, 30522), high exclusive."""
    if text is None:
        return None
    parts = text.replace(":", ",").split(",")
    try:
        lo, hi = int(parts[0]), int(parts[1])
    except (ValueError, IndexError) as e:
        raise DataError(f"--int-range {text!r}: expected LOW,HIGH (high exclusive)") from e
    if hi <= lo:
        raise DataError(f"--int-range {text!r}: HIGH must be greater than LOW")
    return lo, hi


def load_feeds(
    source: Any,
    model: onnx.ModelProto,
    *,
    batch: int | None = None,
    limit: int | None = None,
) -> Feeds:
    """Load and check feeds for ``model``.

    Args:
        source: path to ``.npz`` / folder of ``.npy``, a dict name->array, or an iterable of dicts.
        model: the model the feeds are for.
        batch: run size when splitting sample arrays along axis 0 and the batch dim is dynamic.
        limit: keep at most this many runs.
    """
    if isinstance(source, Feeds):
        check_feeds(source, model)
        return source
    label_arr = None
    where = "data"
    if isinstance(source, (str, os.PathLike)):
        arrays, where = _read_arrays(Path(os.fspath(source)))
        if arrays and all(_RUN_KEY.match(k) for k in arrays):
            runs, labels = _by_run(arrays, model, where)
        else:
            label_arr = arrays.pop(LABELS_KEY, None)
            runs, labels = _split(arrays, label_arr, model, batch, where)
    elif isinstance(source, Mapping):
        arrays = {k: np.asarray(v) for k, v in source.items()}
        label_arr = arrays.pop(LABELS_KEY, None)
        runs, labels = _split(arrays, label_arr, model, batch, where)
    else:
        runs, labels = [], None
        for item in source:
            run = {k: np.asarray(v) for k, v in item.items()}
            lab = run.pop(LABELS_KEY, None)
            if lab is not None:
                labels = (labels or []) + [lab]
            runs.append(run)
        where = "iterable"
    if not runs:
        raise DataError(f"{where}: no samples")
    if limit is not None:
        runs = runs[:limit]
        labels = labels[:limit] if labels is not None else None
    feeds = Feeds(runs, labels, synthesized=False, source=where)
    check_feeds(feeds, model)
    return feeds


def _read_arrays(path: Path) -> tuple[dict[str, np.ndarray], str]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    arrays: dict[str, np.ndarray] = {}
    try:
        if path.is_dir():
            files = sorted(path.glob("*.npy"))
            if not files:
                raise DataError(f"{path}: folder has no .npy files")
            for f in files:
                arrays[f.stem] = np.load(f, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise DataError(f"{path}: expected an .npz archive of named arrays")
                for k in z.files:
                    arrays[k] = z[k]
    except DataError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):  # numpy would have to unpickle Python objects
            raise DataError(
                f"{path}: cannot read arrays: it holds pickled Python objects (object arrays, "
                "or it is no .npz/.npy at all); refused: onnxopt never unpickles data"
            ) from e
        raise DataError(f"{path}: cannot read arrays ({type(e).__name__}: {e})") from e
    except Exception as e:
        raise DataError(f"{path}: cannot read arrays ({type(e).__name__}: {e})") from e
    return arrays, str(path)


def _split(
    arrays: dict[str, np.ndarray],
    label_arr: np.ndarray | None,
    model: onnx.ModelProto,
    batch: int | None,
    where: str,
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray] | None]:
    specs = {s.name: s for s in input_specs(model)}
    _check_names(set(arrays), specs, where)
    per_input: dict[str, list[np.ndarray]] = {}
    constant: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        s = specs[name]
        if s.rank == 0 and arr.ndim == 0:
            constant[name] = arr  # one value of a scalar input (a sample rate) for every run
        elif arr.ndim == s.rank + 1:
            per_input[name] = [arr[i] for i in range(arr.shape[0])]
        elif arr.ndim == s.rank and s.rank > 0:
            fixed = isinstance(s.shape[0], int)
            b = s.shape[0] if fixed else (batch or 1)
            if fixed and arr.shape[0] % b:
                raise DataError(
                    f"{where}: '{name}' has {arr.shape[0]} samples, not a multiple of the "
                    f"model's fixed batch {b}"
                )
            # a dynamic batch takes a shorter last run
            per_input[name] = [arr[i : i + b] for i in range(0, arr.shape[0], b)]
        else:
            raise DataError(
                f"{where}: '{name}' has rank {arr.ndim}; the model input is {s.describe()} "
                f"(give rank {s.rank} samples or rank {s.rank + 1} stacked runs)"
            )
    if not per_input:  # only scalars: one run
        per_input = {k: [v] for k, v in constant.items()}
        constant = {}
    counts = {k: len(v) for k, v in per_input.items()}
    for k, v in constant.items():
        per_input[k] = [v] * next(iter(counts.values()))
    if len(set(counts.values())) > 1:
        raise DataError(f"{where}: inputs have different numbers of runs: {counts}")
    n = next(iter(counts.values()))
    # np.ascontiguousarray would turn a scalar run (a rank-0 input's) into shape (1,)
    runs = [{k: np.array(v[i], order="C") for k, v in per_input.items()} for i in range(n)]
    labels = None
    if label_arr is not None:
        if label_arr.shape[0] == n:
            labels = [label_arr[i] for i in range(n)]
        else:
            sizes = [next(iter(r.values())).shape[0] for r in runs]
            if sum(sizes) != label_arr.shape[0]:
                raise DataError(
                    f"{where}: {label_arr.shape[0]} labels for {n} runs / {sum(sizes)} samples"
                )
            labels, i = [], 0
            for s in sizes:
                labels.append(label_arr[i : i + s])
                i += s
    return runs, labels


#: a key of the per-run layout: ``RUN/NAME``, RUN a number
_RUN_KEY = re.compile(r"^(\d+)/(.+)$")


def _by_run(
    arrays: dict[str, np.ndarray], model: onnx.ModelProto, where: str
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray] | None]:
    """The per-run layout: ``RUN/NAME`` keys, one array per run and input, each with the
    input's own rank (runs may differ in shape); ``RUN/labels`` on every run or on none."""
    by_run: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        m = _RUN_KEY.match(key)
        assert m is not None  # the caller checked every key
        by_run.setdefault(int(m.group(1)), {})[m.group(2)] = arr
    specs = {s.name: s for s in input_specs(model)}
    runs, labels = [], []
    for k in sorted(by_run):
        run = by_run[k]
        lab = run.pop(LABELS_KEY, None)
        _check_names(set(run), specs, f"{where} run {k:04d}")
        runs.append({n: np.array(v, order="C") for n, v in run.items()})
        labels.append(lab)
    have = sum(lab is not None for lab in labels)
    if have not in (0, len(runs)):
        raise DataError(f"{where}: {have} of {len(runs)} runs have labels: give every run one")
    return runs, (labels if have else None)


def _check_names(names: set[str], specs: Mapping[str, InputSpec], where: str) -> None:
    missing = set(specs) - names
    extra = names - set(specs)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if extra:
            parts.append(f"unknown {_some(extra)}")
        hint = ""
        if any(_RUN_KEY.match(k) for k in extra):  # RUN/NAME keys beside plain ones
            hint = " (one array per run needs every key as RUN/NAME, labels RUN/labels)"
        raise DataError(
            f"{where}: input names do not match the model ({'; '.join(parts)}){hint}; "
            f"model inputs: {_some(specs)}"
        )


def _some(names: Iterable[str], most: int = 8) -> str:
    """Up to ``most`` names, then how many more: an error stays one readable line."""
    names = sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{names[:most]}{more}"


def check_feeds(feeds: Feeds, model: onnx.ModelProto) -> None:
    """Names, dtypes, ranks and static dims of every run against the model's inputs."""
    specs = {s.name: s for s in input_specs(model)}
    where = feeds.source or "data"
    for i, run in enumerate(feeds.runs):
        _check_names(set(run), specs, where)
        for name, arr in run.items():
            s = specs[name]
            if arr.dtype != s.dtype:
                raise DataError(
                    f"{where}: '{name}' is {arr.dtype.name} but the model wants {s.dtype.name} "
                    f"(convert with .astype(np.{s.dtype.name}))"
                )
            if arr.ndim != s.rank:
                raise DataError(
                    f"{where}: '{name}' run {i} has shape {list(arr.shape)}; model wants {s.describe()}"
                )
            for d, (have, want) in enumerate(zip(arr.shape, s.shape)):
                if isinstance(want, int) and have != want:
                    raise DataError(
                        f"{where}: '{name}' run {i} has shape {list(arr.shape)}; "
                        f"dim {d} must be {want} ({s.describe()})"
                    )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise DataError(f"{where}: '{name}' run {i} contains NaN or Inf")
