"""Task metrics as budgets: a user's Python callable that scores a model's outputs.

``--metric module:function`` (or ``path/to/file.py:function``) names a callable

    ``score = function(runs, labels)``

where ``runs`` is one ``{output name: array}`` per verification run (in the order of
``--data``), ``labels`` the runs' labels (``None`` without labels in ``--data``), and
``score`` a float, higher is better: OCR exact text, retrieval recall, mAP. The budget then
holds ``score(candidate) >= score(original) - max_metric_drop`` (:class:`onnxopt.verify.Budget`);
the accuracy-aware fallback of a pass and the pass manager's verifier both use it.

An error inside the callable (or a score that is not a finite number) is a
:class:`~onnxopt.errors.MetricError`: one line naming the callable, exit 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt import phases
from onnxopt.errors import MetricError, OptionError, first_line

Runs = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class TaskMetric:
    """A named scoring callable ``fn(runs, labels) -> float`` (higher is better)."""

    fn: Callable[[Runs, list[np.ndarray] | None], Any]
    name: str

    @phases.timed(phases.METRIC)
    def __call__(self, runs: Runs, labels: list[np.ndarray] | None) -> float:
        """The score of ``runs``; any error inside the callable is a one-line MetricError."""
        try:
            value = self.fn(runs, labels)
            score = float(value)
        except Exception as e:  # noqa: BLE001 - the user's code may raise anything
            raise MetricError(f"--metric {self.name}: {type(e).__name__}: {first_line(e)}") from e
        if not math.isfinite(score):
            raise MetricError(f"--metric {self.name}: returned {value!r}, not a finite number")
        return score

    def __str__(self) -> str:
        return self.name


def load_metric(spec: str) -> TaskMetric:
    """The callable named by ``module:function`` or ``path/to/file.py:function``.

    A module is imported with the current directory on ``sys.path`` (as ``python -m`` would);
    a file is loaded as a module of its own. A bad name is a one-line OptionError.
    """
    where, sep, attr = str(spec).rpartition(":")
    if not sep or not where or not attr:
        raise OptionError(f"--metric {spec!r}: give module:function or path/to/file.py:function")
    try:
        module = _import(where)
    except OptionError:
        raise
    except Exception as e:  # noqa: BLE001 - importing user code may raise anything
        raise OptionError(
            f"--metric {spec}: cannot import {where!r} ({type(e).__name__}: {first_line(e)})"
        ) from e
    fn = getattr(module, attr, None)
    if fn is None:
        raise OptionError(f"--metric {spec}: {where!r} has no attribute {attr!r}")
    if not callable(fn):
        raise OptionError(f"--metric {spec}: {attr!r} is not callable")
    return TaskMetric(fn, spec)


def _import(where: str) -> Any:
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise OptionError(f"--metric {where}: no such file")
        name = f"onnxopt_metric_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise OptionError(f"--metric {where}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    finally:
        if added:
            sys.path.remove(cwd)
