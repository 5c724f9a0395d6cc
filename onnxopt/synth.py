"""Synthesized inputs, for a model given without ``--data`` (the way onnxsim is called).

- **Dynamic dimensions** get verification sizes: the size the graph requires where a direct
  reader pins it (the K axis of a MatMul/Gemm with a constant weight, the channels of a Conv,
  the broadcast axes of an elementwise op with a constant, the normalized axes of a
  LayerNormalization); otherwise a batch axis 1 and other axes 32 (64 for the spatial axes of an
  image-like rank-4 float input). Inputs that share a dimension name share its size. Where a dimension is dynamic, the runs alternate between two size sets (batch 2,
  and 48 / 96 for the other axes), so a rewrite that only holds for one size is caught.
- **Integer inputs** get values that are valid for what reads them: indices into a table (the
  indices of Gather, GatherElements, GatherND, or OneHot) range over the table's size along
  the gathered axis; an integer divisor is 1 or 2; any other integer input takes 0 or 1
  (masks, token types).
- **Inputs an op reads as a shape, axes, a count or a ratio** (Reshape's shape, Slice's
  starts, Dropout's ratio...) get a value valid for that op (:mod:`onnxopt.synth_values`).
- String inputs get short random words.
- ``--shape`` and ``--int-range`` override both; with ``--shape`` there is one size set.
- The plan is checked by running the model once per size set: a set that fails is dropped, and
  if none runs, fallback sizes and all-ones integers are tried before a one-line DataError.

The notes say which sizes and ranges were used; the written model keeps its dynamic dims.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxopt.data import Feeds, InputSpec, input_specs, load_feeds
from onnxopt.defaults import SYNTH_RUNS
from onnxopt.errors import DataError, OnnxoptError, first_line
from onnxopt.synth_graph import fixed_values, index_ranges, pinned_dims

logger = logging.getLogger(__name__)

#: (first size, second size) for a dynamic batch axis, a spatial image axis, any other axis
BATCH_SIZES = (1, 2)
IMAGE_SIZES = (64, 96)
OTHER_SIZES = (32, 48)
#: sizes tried for the non-batch dynamic axes when the first plan does not run
FALLBACK_SIZES = (64, 16, 128, 224, 8)
BATCH_NAMES = frozenset({"batch", "batch_size", "n", "N", "bs", "B", "unk__0"})


@dataclass
class Plan:
    """What to synthesize: one or two size sets, a value range per integer input, and fixed
    values for the inputs an op reads as parameters."""

    size_sets: list[dict[str, list[int]]]
    int_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    range_reasons: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, np.ndarray] = field(default_factory=dict)
    fixed_reasons: dict[str, str] = field(default_factory=dict)

    def describe(self, specs: list[InputSpec]) -> list[str]:
        """One note per size set and per integer input."""
        out = []
        dynamic = [s for s in specs if any(not isinstance(d, int) for d in s.shape)]
        if dynamic:
            sets = [
                "; ".join(f"{s.name} [{'x'.join(map(str, dims[s.name]))}]" for s in dynamic)
                for dims in self.size_sets
            ]
            out.append("verified on synthesized sizes " + " and ".join(sets))
        for name, (lo, hi) in self.int_ranges.items():
            if name not in self.fixed:
                out.append(f"integer input '{name}' in [{lo}, {hi}): {self.range_reasons[name]}")
        for name, value in self.fixed.items():
            shown = np.array2string(value, threshold=8)
            out.append(f"input '{name}' = {shown}: {self.fixed_reasons[name]}")
        return out


def _is_batch_axis(spec: InputSpec, axis: int) -> bool:
    d = spec.shape[axis]
    return (axis == 0 and spec.rank >= 2) or (isinstance(d, str) and d in BATCH_NAMES)


def _axis_sizes(spec: InputSpec, axis: int) -> tuple[int, int]:
    if _is_batch_axis(spec, axis):
        return BATCH_SIZES
    if spec.rank == 4 and spec.dtype.kind == "f" and axis in (2, 3):
        return IMAGE_SIZES
    return OTHER_SIZES


def size_sets(
    specs: list[InputSpec],
    shapes: Mapping[str, list[int]] | None,
    pinned: Mapping[tuple[str, int], int] | None = None,
) -> list[dict[str, list[int]]]:
    """The size sets: from ``shapes`` (one set), else the sizes the graph pins and the defaults
    (two sets where a dimension is dynamic); inputs sharing a dimension name share its size."""
    shapes = dict(shapes or {})
    pinned = dict(pinned or {})
    named: dict[str, int] = {}  # dimension name -> size given through --shape
    for s in specs:
        for d, v in zip(s.shape, shapes.get(s.name, ())):
            if isinstance(d, str) and d:
                named.setdefault(d, v)
    sets: list[dict[str, list[int]]] = []
    for k in (0,) if shapes else (0, 1):
        chosen = dict(named)
        dims: dict[str, list[int]] = {}
        for s in specs:
            if s.name in shapes:
                dims[s.name] = list(shapes[s.name])
                continue
            row = []
            for i, d in enumerate(s.shape):
                size = pinned.get((s.name, i), _axis_sizes(s, i)[k])
                if isinstance(d, int):
                    row.append(d)
                elif isinstance(d, str) and d:
                    row.append(chosen.setdefault(d, size))
                else:
                    row.append(size)
            dims[s.name] = row
        if dims not in sets:
            sets.append(dims)
    return sets


def make_plan(
    model: onnx.ModelProto,
    shapes: Mapping[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
) -> Plan:
    """Sizes and integer ranges for ``model``'s inputs (see the module docstring)."""
    specs = input_specs(model)
    unknown = set(shapes or {}) - {s.name for s in specs}
    if unknown:
        raise DataError(
            f"--shape names unknown input(s) {sorted(unknown)}; inputs: {[s.name for s in specs]}"
        )
    for s in specs:
        if s.name in (shapes or {}):
            _check_shape(s, list(shapes[s.name]))
    plan = Plan(size_sets(specs, shapes, pinned_dims(model, specs)))
    for name, (value, why) in fixed_values(model, specs, plan.size_sets[0]).items():
        plan.fixed[name], plan.fixed_reasons[name] = value, why
    ints = [s.name for s in specs if s.dtype.kind in "iu"]
    if int_range is not None:
        for n in ints:
            plan.int_ranges[n], plan.range_reasons[n] = int_range, "--int-range"
    else:
        for n, (rng, why) in index_ranges(model, ints).items():
            plan.int_ranges[n], plan.range_reasons[n] = rng, why
    return plan


def _check_shape(s: InputSpec, given: list[int]) -> None:
    if len(given) != s.rank:
        raise DataError(f"--shape {s.name}: rank {len(given)} but the model says {s.describe()}")
    for i, (d, want) in enumerate(zip(given, s.shape)):
        if isinstance(want, int) and d != want:
            raise DataError(f"--shape {s.name}: dim {i} is {d} but the model fixes it to {want}")


def random_runs(
    specs: list[InputSpec], plan: Plan, runs: int, seed: int
) -> list[dict[str, np.ndarray]]:
    """``runs`` random runs, alternating over the plan's size sets."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(runs):
        dims = plan.size_sets[r % len(plan.size_sets)]
        out.append(
            {
                s.name: plan.fixed[s.name].copy()
                if s.name in plan.fixed
                else _random_input(s, dims[s.name], rng, plan.int_ranges.get(s.name))
                for s in specs
            }
        )
    return out


def _random_input(
    s: InputSpec, dims: list[int], rng: np.random.Generator, int_range: tuple[int, int] | None
) -> np.ndarray:
    """Standard-normal floats, random booleans, integers uniform in ``int_range``."""
    if s.dtype.kind == "f":
        return np.asarray(rng.standard_normal(dims), dtype=s.dtype)
    if s.dtype.kind == "b":
        return np.asarray(rng.random(dims) < 0.5)
    if s.dtype.kind in "iu" and int_range is not None:
        lo, hi = int_range
        return np.asarray(rng.integers(lo, hi, size=dims), dtype=s.dtype)
    if s.dtype.kind in "OUS":
        words = np.array(["onnx", "opt", "a", "bc", "text"], dtype=object)
        return np.asarray(words[rng.integers(0, len(words), size=dims)], dtype=object)
    raise DataError(f"input {s.describe()}: cannot synthesize dtype {s.dtype}; give --data")


def _runs_ok(model: onnx.ModelProto, run: dict[str, np.ndarray]) -> str:
    """ "" when the model runs on ``run`` (or cannot be judged: a model onnxruntime cannot load
    fails later with its own error), else the first line of onnxruntime's error."""
    from onnxopt.runner import Runner

    runner = Runner(quiet=True)
    try:
        session = runner.session(model)
    except Exception:
        return ""
    try:
        runner.run_session(session, Feeds([run]))
    except OnnxoptError as e:
        return str(e)
    except Exception as e:
        return first_line(e)
    return ""


def checked_plan(
    model: onnx.ModelProto, plan: Plan, specs: list[InputSpec], fixed: bool
) -> tuple[Plan, list[str]]:
    """Drop size sets the model cannot run; try fallbacks when none runs (unless the user
    fixed sizes and ranges). Returns the plan and notes about what was dropped."""
    errors = [
        _runs_ok(model, random_runs(specs, replace(plan, size_sets=[d]), 1, 0)[0])
        for d in plan.size_sets
    ]
    good = [d for d, e in zip(plan.size_sets, errors) if not e]
    notes = [
        f"synthesized sizes {d} do not run ({e}); not used"
        for d, e in zip(plan.size_sets, errors)
        if e and good
    ]
    if good:
        return replace(plan, size_sets=good), notes
    if not fixed:
        for alt in _fallbacks(specs, plan):
            if not _runs_ok(model, random_runs(specs, alt, 1, 0)[0]):
                return alt, [
                    f"the default synthesized inputs do not run ({errors[0]}); "
                    "used fallback sizes/values"
                ]
    raise DataError(
        f"synthesized inputs do not run ({errors[0]}): give --shape NAME=DIMS, "
        "--int-range LOW,HIGH or --data"
    )


def _fallbacks(specs: list[InputSpec], plan: Plan) -> Iterable[Plan]:
    """Other plans to try when the first does not run: every integer input all ones, then all
    twos (a batch-like count must often match another input's), then other sizes."""
    constant = [
        (
            {n: (v, v + 1) for n in plan.int_ranges},
            {n: f"fallback: all {v}" for n in plan.int_ranges},
        )
        for v in (1, 2)
    ]
    for ranges, reasons in constant:
        yield replace(plan, size_sets=plan.size_sets[:1], int_ranges=ranges, range_reasons=reasons)
    for size in FALLBACK_SIZES:
        dims = {
            s.name: [
                d if isinstance(d, int) else (1 if _is_batch_axis(s, i) else size)
                for i, d in enumerate(s.shape)
            ]
            for s in specs
        }
        yield replace(plan, size_sets=[dims])
        for ranges, reasons in constant:
            yield replace(plan, size_sets=[dims], int_ranges=ranges, range_reasons=reasons)


def synthesize(
    model: onnx.ModelProto,
    *,
    shapes: Mapping[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    runs: int = SYNTH_RUNS,
    seed: int = 0,
    check: bool = True,
) -> Feeds:
    """Random inputs for ``model`` from its input specs and its graph (module docstring).

    Args:
        shapes: dims per input name (``--shape``); fixes one size set.
        int_range: (low, high) for every integer input (``--int-range``).
        runs: how many runs (alternating over the size sets).
        check: run the model once per size set and drop (or replace) sets that fail. Skipped
            when every input is static and every integer range comes from the graph.

    Raises:
        DataError: a --shape that contradicts the model, or inputs that do not run.
    """
    specs = input_specs(model)
    plan = make_plan(model, shapes, int_range)
    dynamic = any(not isinstance(d, int) for s in specs for d in s.shape)
    not_float = any(s.dtype.kind != "f" for s in specs)
    notes: list[str] = []
    if check and (dynamic or not_float or plan.fixed):
        plan, notes = checked_plan(
            model, plan, specs, fixed=shapes is not None and int_range is not None
        )
    feeds = Feeds(
        random_runs(specs, plan, runs, seed),
        synthesized=True,
        source=f"synthesized ({runs} runs, seed {seed})",
    )
    feeds.notes.extend(plan.describe(specs) + notes)
    return feeds


def get_feeds(
    model: onnx.ModelProto,
    data: object = None,
    *,
    shapes: Mapping[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    batch: int | None = None,
    runs: int = SYNTH_RUNS,
    limit: int | None = None,
) -> Feeds:
    """Real feeds when ``data`` is given, else synthesized ones (with notes saying so)."""
    if data is not None:
        return load_feeds(data, model, batch=batch, limit=limit)
    feeds = synthesize(model, shapes=shapes, int_range=int_range, runs=runs)
    feeds.notes.insert(0, "no --data: inputs were synthesized from the input specs")
    return feeds
