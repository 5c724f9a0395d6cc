"""Typed options of the prune pass: :class:`PruneConfig`.

The field defaults are the family's defaults, defined here and nowhere else. Validation runs in
``__post_init__``: a bad value is an :class:`~onnxopt.errors.OptionError` whose message names the
option (``ratio must be in [0, 1), not 1.5``) and which carries ``option``, ``value`` and ``why``
so the CLI can name its own flag instead (``--ratio 1.5: must be in [0, 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxopt.contract import PassConfig
from onnxopt.errors import OptionError

from .importance import METHODS

#: option names accepted for a field of another name (``global`` is a Python keyword)
ALIASES = {"global": "global_rank"}


invalid = OptionError.invalid


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    """Options of ``prune`` (structured channel pruning).

    Attributes:
        ratio: fraction of each group's units removed, in [0, 1) (unused with
            ``target_flops``).
        target_flops: keep this fraction of the original MACs, in (0, 1]; overrides ``ratio``.
        global_rank: rank units across groups instead of per group (option name ``global``).
        importance: ``l1``, ``l2``, ``bn-scale`` or ``activation``; None: ``activation`` with
            real data, else ``l2`` (see :mod:`.importance`).
        round_to: kept widths are multiples of this; ``"auto"``: onnxruntime's CPU channel
            block (see :func:`.targets.auto_round_to`); 1: no rounding.
        keep: nodes whose channels stay.
        max_ratio: at most this fraction of any group removed, in (0, 1).
        reconstruct: refit the consumers on the data; None: on with real data.
        alpha: ridge strength of the refit (see :mod:`.reconstruct`).
        max_rows: rows per least-squares fit.
        max_samples: samples the importance and the refit learn from.
    """

    ratio: float = 0.3
    target_flops: float | None = None
    global_rank: bool = False
    importance: str | None = None
    round_to: int | str = "auto"
    keep: tuple[str, ...] = ()
    max_ratio: float = 0.9
    reconstruct: bool | None = None
    alpha: float = 1e-3
    max_rows: int = 8192
    max_samples: int = 2048

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None, *, where: str = "") -> PruneConfig:
        """As :meth:`PassConfig.from_options`, where a None value means the default and
        ``global`` names ``global_rank``."""
        values = {ALIASES.get(k, k): v for k, v in (options or {}).items() if v is not None}
        return super().from_options(values, where=where)

    def __post_init__(self) -> None:
        self._number("ratio", float)
        if not 0 <= self.ratio < 1:
            raise invalid("ratio", self.ratio, "must be in [0, 1)")
        if self.target_flops is not None:
            self._number("target_flops", float)
            if not 0 < self.target_flops <= 1:
                raise invalid("target_flops", self.target_flops, "must be in (0, 1]")
        self._number("max_ratio", float)
        if not 0 < self.max_ratio < 1:
            raise invalid("max_ratio", self.max_ratio, "must be in (0, 1)")
        if self.importance is not None and self.importance not in METHODS:
            raise invalid("importance", self.importance, f"must be one of {', '.join(METHODS)}")
        self._round_to()
        keep = (self.keep,) if isinstance(self.keep, str) else tuple(self.keep)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "global_rank", bool(self.global_rank))
        self._number("alpha", float)
        if self.alpha < 0:
            raise invalid("alpha", self.alpha, "must be >= 0")
        for count in ("max_rows", "max_samples"):
            self._number(count, int)
            if getattr(self, count) < 1:
                raise invalid(count, getattr(self, count), "must be >= 1")

    def _number(self, name: str, kind: type) -> None:
        value = getattr(self, name)
        try:
            object.__setattr__(self, name, kind(value))  # normalizing its own frozen field
        except (TypeError, ValueError) as e:
            raise invalid(name, value, "must be a number") from e

    def _round_to(self) -> None:
        if self.round_to == "auto":
            return
        try:
            step = int(self.round_to)
        except (TypeError, ValueError):
            step = 0
        if step < 1:
            raise invalid("round_to", self.round_to, "must be 'auto' or an integer >= 1")
        object.__setattr__(self, "round_to", step)
