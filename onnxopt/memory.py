"""Memory: the budget, what a session needs, and the peak resident memory of each pass.

- **Budget** (``--max-memory``): by default 60 % of the machine's RAM. A model whose session
  would not fit in it next to the outputs kept for verification runs block by block
  (:mod:`onnxopt.blocks`), and is verified on fewer runs.
- **A session's need**: the bytes onnxruntime allocates for it: weights held in the proto (they
  are copied into arrays), every weight when graph optimizations are on (onnxruntime copies
  them, and may pack them again), and its activations, estimated from the inferred shapes as
  ``4 x`` the largest intermediate ``+ 32 MiB``. Mapped weights (:mod:`onnxopt.weights`) are
  file pages the kernel can drop and re-read, so they count against the budget but not
  against what must be free before a session is built.
- :func:`check_session` refuses, as a one-line :class:`MemoryBudgetError`, a session that
  needs more than the memory available now: onnxopt stops with a message instead of being
  killed by the kernel.
- :class:`PeakMeter` measures the peak resident set of a stretch of work: the kernel's
  high-water mark when it rose during the stretch (exact), else the largest of samples taken
  every 10 ms. (Resetting the high-water mark would also reset what ``time -v`` reports.)
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

import numpy as np
import onnx

from onnxopt import weights
from onnxopt.errors import OnnxoptError, OptionError

logger = logging.getLogger(__name__)

#: --max-memory when none is given: this fraction of the machine's RAM
DEFAULT_FRACTION = 0.6
MiB = 1 << 20
GiB = 1 << 30


class MemoryBudgetError(OnnxoptError):
    """Not enough memory for what was asked (one line, exit code 2)."""


def total_ram() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def available() -> int:
    """Bytes the kernel can give now without swapping (free + reclaimable cache)."""
    import psutil

    return int(psutil.virtual_memory().available)


def parse_budget(value: str | int | float | None) -> int:
    """``--max-memory``: bytes, ``8G``/``512M``/``2.5GB``, or ``60%`` of RAM; None: 60 %.

    Raises:
        OptionError: an unreadable value.
    """
    if value is None:
        return int(DEFAULT_FRACTION * total_ram())
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper().replace(" ", "")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(%|[KMGT]I?B?|B)?", text)
    if not m or float(m.group(1)) <= 0:
        raise OptionError(f"--max-memory {value!r}: give bytes, 8G, 512M or 60%")
    number, unit = float(m.group(1)), (m.group(2) or "B")
    if unit == "%":
        if number > 100:
            raise OptionError(f"--max-memory {value!r}: a percentage is at most 100")
        return int(number / 100 * total_ram())
    scale = {"B": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[unit[0]]
    return int(number * scale)


def gb(n: int | float) -> str:
    return f"{n / GiB:.1f} GB" if n >= GiB / 10 else f"{n / MiB:.0f} MB"


def activation_bytes(model: onnx.ModelProto) -> int:
    """Estimated activation memory of one run: 4 x the largest inferred intermediate + 32 MiB
    (a dynamic dimension counts as 1)."""
    from onnxopt.model import infer_shapes_light

    try:
        g = infer_shapes_light(model, data_prop=False).graph
    except Exception:
        return 32 * MiB
    largest = 0
    for v in list(g.value_info) + list(g.output):
        t = v.type.tensor_type
        size = weights.itemsize(t.elem_type) if t.elem_type else None
        if not size or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        largest = max(largest, int(np.prod(dims, dtype=np.int64)) * size)
    return 4 * largest + 32 * MiB


def session_need(model: onnx.ModelProto, *, optimized: bool = False) -> tuple[int, int]:
    """(bytes a session allocates, bytes of mapped weights it reads) for ``model``."""
    mapped = inproto = 0
    for t in model.graph.initializer:
        if weights.is_mapped(t):
            mapped += weights.nbytes(t)
        else:
            inproto += weights.nbytes(t)
    own = inproto + activation_bytes(model) + (2 * mapped if optimized else 0)
    return own, mapped


def check_session(model: onnx.ModelProto, *, optimized: bool = False) -> None:
    """Refuse a session that needs more memory than is available now.

    Raises:
        MemoryBudgetError: with what it needs and what is available.
    """
    free = available()
    mapped = sum(weights.nbytes(t) for t in model.graph.initializer if weights.is_mapped(t))
    rough = weights.weight_bytes(model) - mapped + (2 * mapped if optimized else 0)
    if rough + GiB < free:
        return  # activations would have to pass 1 GB: not worth inferring shapes for
    own, _ = session_need(model, optimized=optimized)
    if own > free:
        raise MemoryBudgetError(
            f"not enough memory for an onnxruntime session: it needs about {gb(own)}, "
            f"{gb(free)} is available"
        )


# ------------------------------------------------------------------------------ peak RSS

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss() -> int:
    """Resident set size of this process now, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def _kernel_high_water() -> int:
    """VmHWM: the peak resident set since the process started or since its last reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


#: the process's peak before the last reset of VmHWM, and the meters running across it
_before_reset = 0
_running: set[PeakMeter] = set()


def high_water() -> int:
    """The kernel's record of this process's peak resident set, in bytes (0 if unknown),
    over the whole process life (resets by :class:`PeakMeter` included)."""
    return max(_kernel_high_water(), _before_reset)


def _reset_high_water() -> bool:
    """Reset VmHWM to the current resident set (Linux: ``echo 5 > /proc/self/clear_refs``),
    so the next stretch's peak is the kernel's exact record; False where that is refused."""
    global _before_reset
    hwm = _kernel_high_water()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _before_reset = max(_before_reset, hwm)
    for m in _running:  # a meter already running keeps the peak it had seen
        if m._exact:
            m.peak = max(m.peak, hwm)
    return True


class PeakMeter:
    """The peak resident set while it runs: ``with PeakMeter() as m: ...; m.peak`` (bytes).

    On Linux the kernel's high-water mark is reset on entry, so the peak is exact however
    short the allocation; elsewhere a thread samples the resident set every ``interval``.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._exact = False

    def __enter__(self) -> PeakMeter:
        self.peak = rss()
        self._exact = _reset_high_water()
        _running.add(self)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def current(self) -> int:
        """The peak so far (the meter keeps running)."""
        now = max(self.peak, rss())
        return max(now, _kernel_high_water()) if self._exact else now

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _running.discard(self)
        self.peak = self.current()

    @property
    def peak_mb(self) -> float:
        return self.peak / MiB


# ------------------------------------------------------------------------- run planning

#: verification runs when the model is larger than the budget (exact passes, lossy passes)
BIG_MODEL_RUNS = (2, 4)


class Plan:
    """How a pipeline fits in ``budget`` bytes: runs, block size, whether the reference
    session may stay alive next to a candidate's, and the notes saying so."""

    def __init__(self, model: onnx.ModelProto, budget: int) -> None:
        self.budget = budget
        self.weights = weights.weight_bytes(model)
        self.notes: list[str] = []
        self.exact_runs: int | None = None
        self.verify_runs: int | None = None
        #: sessions of models needing more than this run block by block (None: never)
        self.block_bytes: int | None = None
        self.two_sessions = True
        if self.weights < budget // 8:
            return  # far from the budget: nothing to plan
        act = activation_bytes(model)
        own = session_need(model)[0]
        self.two_sessions = self.weights + 2 * own <= budget
        if self.weights > budget:
            self.exact_runs, self.verify_runs = BIG_MODEL_RUNS
            self.notes.append(
                f"the model ({gb(self.weights)} of weights) is larger than --max-memory "
                f"({gb(budget)}): exact passes are verified on at most {BIG_MODEL_RUNS[0]} runs, "
                f"lossy ones on at most {BIG_MODEL_RUNS[1]}"
            )
        if self.weights + act > budget:
            self.block_bytes = max(budget - act, budget // 4)
            self.notes.append(
                f"one session of it would not fit in --max-memory ({gb(budget)}): models are "
                f"run block by block (at most {gb(self.block_bytes)} of weights a block)"
            )
        elif not self.two_sessions:
            self.notes.append(
                "the reference session is freed before the first candidate's is built "
                f"(two would not fit in --max-memory, {gb(budget)})"
            )
