"""``MergeConfig``: the options of :func:`onnxopt.passes.ensemble.merge.merge`, typed and checked.

Merging is not a pipeline pass, but its options follow the pass contract's
:class:`~onnxopt.contract.PassConfig`: a frozen dataclass whose field defaults are the merge
defaults, built from string-keyed options with :meth:`MergeConfig.from_options` (an unknown
key, or a value that does not fit, is a one-line :class:`~onnxopt.errors.OptionError` naming
the option). The CLI ``onnxopt merge`` builds one; ``onnxopt.api.merge(models, mode, **options)``
builds one from its keyword arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxopt.contract import PassConfig
from onnxopt.defaults import SYNTH_RUNS
from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.modes import ALL_MODES, ON_CHOICES

#: modes that fit something on labeled data (weights, a meta-learner, a gate threshold)
FITTED_MODES = ("weighted", "stack", "cascade")
META_LEARNERS = ("logistic", "ridge")


@dataclass(frozen=True)
class MergeConfig(PassConfig):
    """How to merge.

    Attributes:
        mode: ``average weighted vote max serial stack cascade``.
        on: combine raw ``"outputs"`` (alias ``"logits"``) or softmax ``"probs"``; None: probs
            for ``stack``, outputs otherwise (see :attr:`combine_on`).
        weights: ``weighted``: one weight per member (else fitted on ``fit_data``).
        fit_data: labeled .npz / dict / Feeds to fit ``weighted`` weights on.
        data: verification and evaluation feeds; also what fitted modes fit on without
            ``fit_data``.
        io_map: ``serial``: ``["a.out:b.in", ...]`` or ``{"a.out": "b.in"}``.
        input_map: ``["b.x:input", ...]`` or ``{"b.x": "input"}``: share differently named
            inputs.
        meta: ``stack``'s meta-learner, ``logistic`` or ``ridge``.
        threshold: ``cascade``: the gate's top probability, in [0, 1].
        target_accuracy: ``cascade``: choose the threshold on labeled data to reach this
            accuracy (percent, or a fraction <= 1).
        output: name of the combined output (default: the name of the first member's output).
        member_output: which output of each member to combine: ``NAME`` for every member or
            ``MEMBER:NAME`` (label, file stem or index); default: each member's class scores.
        labels: member labels (default: file stems, or ``m0``, ``m1``, ...).
        keep_member_outputs: also output each member's own scores.
        cse: deduplicate identical initializers and nodes across members.
        verify: check the merged graph against the members run separately.
        fit_fraction: share of the labeled data used to fit (the rest measures accuracy).
        batch: run size when splitting data along a dynamic batch dim.
        shapes: dynamic dims of synthesized verification inputs (``{"x": [1, 4]}``).
        int_range: range of synthesized integer inputs.
        runs: synthesized verification runs when no ``data`` is given.
        ridge_alpha: ``stack --meta ridge``: L2 penalty of the ridge regression.
        l2: ``stack --meta logistic``: L2 penalty of the logistic regression.
    """

    mode: str = "average"
    on: str | None = None
    weights: tuple[float, ...] | None = None
    fit_data: Any = None
    data: Any = None
    io_map: Any = None
    input_map: Any = None
    meta: str = "logistic"
    threshold: float | None = None
    target_accuracy: float | None = None
    output: str | None = None
    member_output: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    keep_member_outputs: bool = False
    cse: bool = True
    verify: bool = True
    fit_fraction: float = 0.5
    batch: int | None = None
    shapes: Mapping[str, Any] | None = None
    int_range: tuple[int, int] | None = None
    runs: int = SYNTH_RUNS
    ridge_alpha: float = 1.0
    l2: float = 1e-3

    @classmethod
    def from_options(
        cls, options: Mapping[str, Any] | None, *, where: str = "merge"
    ) -> MergeConfig:
        """Like :meth:`PassConfig.from_options`; an option given as None takes its default
        (the CLI passes every option, set or not)."""
        given = {k: v for k, v in (options or {}).items() if v is not None}
        return super().from_options(given, where=where)

    def __post_init__(self) -> None:
        self._check_choices()
        self._check_mode_needs()
        self._check_ranges()

    def _check_choices(self) -> None:
        if self.mode not in ALL_MODES:
            raise OptionError(
                f"unknown merge mode {self.mode!r}; choose one of {', '.join(ALL_MODES)}"
            )
        if self.on is not None and self.on not in ON_CHOICES:
            raise OptionError(f"--on {self.on!r}: choose outputs or probs")
        if self.meta not in META_LEARNERS:
            raise OptionError(f"--meta {self.meta!r}: choose logistic or ridge")
        if isinstance(self.member_output, str):
            object.__setattr__(self, "member_output", (self.member_output,))
        for spec in self.member_output or ():
            if not str(spec).rpartition(":")[2]:
                raise OptionError(f"--member-output {spec!r}: give NAME or MEMBER:NAME")

    def _check_mode_needs(self) -> None:
        if self.weights is not None and self.fit_data is not None:
            raise OptionError("give either --weights or --fit-weights, not both")
        if self.mode == "weighted" and self.weights is None and self.fit_data is None:
            raise OptionError("--mode weighted needs --weights W1,W2,... or --fit-weights DATA.npz")
        if self.mode == "cascade" and (self.threshold is None) == (self.target_accuracy is None):
            raise OptionError(
                "--mode cascade needs exactly one of --threshold or --target-accuracy"
            )
        if self.io_map and self.mode != "serial":
            raise OptionError("--io-map is for --mode serial")
        if self.needs_fit and self.fit_source is None:
            raise OptionError(
                f"--mode {self.mode} needs labeled data to fit (--data or --fit-weights)"
            )

    def _check_ranges(self) -> None:
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise OptionError(f"--threshold {self.threshold}: must be a probability in [0, 1]")
        if self.target_accuracy is not None and not 0.0 < float(self.target_accuracy) <= 100.0:
            raise OptionError(
                f"--target-accuracy {self.target_accuracy}: must be a percent in "
                f"(0, 100] (or a fraction <= 1)"
            )
        if not 0.0 < float(self.fit_fraction) < 1.0:
            raise OptionError(f"fit_fraction must be in (0, 1), not {self.fit_fraction}")
        if int(self.runs) < 1:
            raise OptionError(f"runs must be >= 1, not {self.runs}")
        if self.batch is not None and int(self.batch) < 1:
            raise OptionError(f"--batch must be >= 1, not {self.batch}")

    @property
    def combine_on(self) -> str:
        """What parallel and stack heads combine: ``"outputs"`` or ``"probs"``."""
        on = self.on or ("probs" if self.mode == "stack" else "outputs")
        return "outputs" if on == "logits" else on

    @property
    def needs_fit(self) -> bool:
        """Whether the mode fits something on labeled data."""
        return (
            self.mode == "stack"
            or (self.mode == "weighted" and self.fit_data is not None)
            or (self.mode == "cascade" and self.target_accuracy is not None)
        )

    @property
    def fit_source(self) -> Any:
        """The labeled data fitted modes fit on (``fit_data``, else ``data``)."""
        if self.mode not in FITTED_MODES:
            return None
        return self.fit_data if self.fit_data is not None else self.data
