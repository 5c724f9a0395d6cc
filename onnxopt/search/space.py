"""The search space as data: a recipe (TOML, YAML or a dict) lists the pipeline and, per pass,
the values each option may take; it is validated before any trial runs.

A recipe::

    [search]
    pipeline = ["cleanup", "fusion", "prune", "precision"]   # optional; this is the default
    precision = ["fp32", "int8"]                              # what the last stage may be
    trials = 64                                               # a seeded sample if larger

    [prune]
    ratio = [0, 0.3, 0.5, 0.7]          # 0: no pruning in that trial

    [quantize]                           # options of the int8 precision (quantize-int8)
    calibrator = ["percentile", "entropy", "mse"]

Keys may also be dotted (``"prune.ratio" = [...]``, as YAML users write them). A scalar is a
one-value range. Every table names a registered pass, family or alias and every key a field of
that pass's ``config_class``, so a pass registered tomorrow is searchable without a change
here. ``enabled = [true, false]`` in a lossy pass's table also tries the pipeline without it.

The space is the product of the stages' choices: an exact stage (consecutive exact families,
run and verified as one batch) has one choice per combination of its options; a lossy stage one
per combination, plus "off" when ``enabled`` allows it or an option takes its "off" value
(:data:`OFF_VALUES`); the precision stage one per precision value and combination of that
pass's options (``fp32``: none).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxopt.errors import OptionError

#: a lossy stage whose option takes this value is left out of the trial (it would do nothing)
OFF_VALUES: dict[str, tuple[str, Any]] = {"prune": ("ratio", 0), "distill": ("epochs", 0)}

#: an option that only matters when another takes a value: otherwise only its first value is
#: tried (``percentile`` is read by the percentile calibrator alone)
DEPENDS: dict[str, dict[str, tuple[str, Any]]] = {
    "quantize-int8": {"percentile": ("calibrator", "percentile")},
}

#: the option ranges searched when the recipe does not give them
DEFAULT_RANGES: dict[str, dict[str, list[Any]]] = {
    "prune": {"ratio": [0, 0.3, 0.5, 0.7]},
    "quantize-int8": {
        "calibrator": ["percentile", "entropy", "mse"],
        "percentile": [99.99, 99.9],
        "per_channel": [True, False],
    },
}

#: tags of the passes a ``precision`` value may name (applied last, after every other stage)
PRECISION_TAGS = ("quantize", "precision")
#: precision values that mean "no precision pass"
FLOAT = ("fp32", "float32", "none")
#: the precision choices without a recipe (plus every registered pass tagged "precision")
DEFAULT_PRECISION = ["fp32", "int8"]
PRECISION = "precision"


@dataclass(frozen=True)
class Settings:
    """How the search runs (the recipe's ``[search]`` table; CLI flags override some).

    Attributes:
        trials: at most this many configurations; a larger space is sampled with ``seed``
            (the baseline, every lossy stage off, is always in).
        seed: seeds that sample (and nothing else: every trial is deterministic).
        eta: successive halving: the best ``1/eta`` of the cheap trials are verified in full.
        min_full: at least this many trials are verified in full (when that many ran).
        subset: share of the verification runs a cheap trial measures accuracy on.
        short_bench: seconds of latency measurement in a cheap trial.
        full_bench: seconds of interleaved latency measurement (candidate and original) in a
            full one.
        threads: onnxruntime intra-op threads when timing (1: the README's setting).
        objective: which model is chosen among those that meet every constraint:
            ``fastest``, ``smallest`` or ``accurate``.
    """

    trials: int = 64
    seed: int = 0
    eta: int = 3
    min_full: int = 4
    subset: float = 0.25
    short_bench: float = 0.3
    full_bench: float = 1.5
    threads: int = 1
    objective: str = "fastest"

    def __post_init__(self) -> None:
        checks = [
            ("trials", self.trials >= 1, "must be >= 1"),
            ("eta", self.eta >= 2, "must be >= 2"),
            ("min_full", self.min_full >= 1, "must be >= 1"),
            ("subset", 0 < self.subset <= 1, "must be in (0, 1]"),
            ("short_bench", self.short_bench > 0, "must be > 0"),
            ("full_bench", self.full_bench > 0, "must be > 0"),
            ("threads", self.threads >= 1, "must be >= 1"),
            ("objective", self.objective in OBJECTIVES, f"must be one of {', '.join(OBJECTIVES)}"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise OptionError.invalid(name, getattr(self, name), why)


OBJECTIVES = ("fastest", "smallest", "accurate")


@dataclass(frozen=True)
class Step:
    """One node of the trial tree: a batch of exact passes, or one lossy pass, with options.

    ``options`` is ``((pass, ((option, value), ...)), ...)`` with the values normalized by the
    pass's configuration, so equal steps have equal keys.
    """

    passes: tuple[str, ...]
    options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    exact: bool = False

    def options_dict(self) -> dict[str, dict[str, Any]]:
        return {p: dict(kv) for p, kv in self.options}

    def to_json(self) -> dict[str, Any]:
        return {"passes": list(self.passes), "options": self.options_dict(), "exact": self.exact}

    def canonical(self) -> str:
        """A stable text of the step (the cache key is its hash)."""
        return json.dumps(self.to_json(), sort_keys=True, default=str)

    def label(self) -> str:
        opts = self.options_dict()
        if self.exact:
            return "exact" if not opts else f"exact({_kv(opts)})"
        name = self.passes[0]
        return f"{name}({_kv(opts.get(name, {}))})" if opts.get(name) else name


def _kv(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_kv(v) if isinstance(v, Mapping) else _short(v)}" for k, v in d.items())


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Trial:
    """One configuration: the steps from the original model to a candidate."""

    id: str
    steps: tuple[Step, ...]

    def label(self) -> str:
        lossy = [s.label() for s in self.steps if not s.exact]
        return " + ".join(lossy) if lossy else "exact only"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label(), "steps": [s.to_json() for s in self.steps]}


@dataclass
class Stage:
    """A position in the pipeline and the steps it may take there (None: left out)."""

    name: str
    choices: list[Step | None] = field(default_factory=list)


@dataclass
class Space:
    """A validated search space: its stages, settings, and the trials it yields."""

    stages: list[Stage]
    settings: Settings
    source: str = "defaults"

    @property
    def size(self) -> int:
        n = 1
        for s in self.stages:
            n *= len(s.choices)
        return n

    def trials(self) -> list[Trial]:
        """Every configuration, or a seeded sample of ``settings.trials`` of them (the
        baseline always in), in the order of the space."""
        n = self.size
        chosen = range(n)
        if n > self.settings.trials:
            picked = set(
                random.Random(self.settings.seed).sample(range(1, n), self.settings.trials - 1)
            )
            chosen = sorted(picked | {self._baseline_index()})
        combos = list(itertools.product(*(s.choices for s in self.stages)))
        out = []
        for i in chosen:
            steps = tuple(s for s in combos[i] if s is not None)
            out.append(Trial(f"t{i:04d}", steps))
        return out

    def _baseline_index(self) -> int:
        """The index of the trial whose lossy stages are all off (or their first choices)."""
        index = 0
        for s in self.stages:
            k = s.choices.index(None) if None in s.choices else 0
            index = index * len(s.choices) + k
        return index

    def describe(self) -> list[str]:
        return [f"{s.name}: {len(s.choices)} choice(s)" for s in self.stages]
