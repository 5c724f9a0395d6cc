"""Bisection of a failing pass's sites: keep every site that verifies.

A pass that rewrote several independent sites lists them (``PassResult.sites``). When its
candidate fails verification, the sites are re-applied in chunks: a chunk that verifies
together with the sites already kept is kept; a failing chunk is split in halves until single
sites are dropped. At most ``max_trials`` chunks are tried; what is left untried is dropped.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onnxopt.errors import MetricError, first_line


@dataclass
class Trial:
    """One verified (or failed) application of a subset of sites.

    Attributes:
        verdict: what the manager's verification returned for the candidate (a stage and its
            comparisons), or None when it failed.
        why: why it failed ("" when it passed).
        result: the pass's PassResult for this subset (None when the pass raised).
    """

    verdict: Any = None
    why: str = ""
    result: Any = None


@dataclass
class Bisection:
    """The outcome: the last passing trial, the sites dropped and why the last one failed."""

    kept: Trial | None = None
    dropped: list[str] = field(default_factory=list)
    why: str = ""
    trials: int = 0
    #: the trial or time budget ran out (the untried sites are among the dropped)
    budget_spent: bool = False


def bisect_sites(
    sites: list[str],
    trial: Callable[[set[str]], Trial],
    max_trials: int,
    max_seconds: float = float("inf"),
    why: str = "",
) -> Bisection:
    """Find the largest set of ``sites`` that verifies, trying chunks in halves.

    Args:
        sites: the failing candidate's sites, in the pass's order.
        trial: re-applies the pass with only the given sites allowed and verifies it.
        max_trials: at most this many trials; untried chunks are dropped.
        max_seconds: no trial starts after this long; untried chunks are dropped.
        why: why the candidate with every site failed (the reason given for a site dropped
            without a trial, as the one that completes that set).
    """
    out = Bisection()
    start = time.perf_counter()
    good: list[str] = []
    queue: list[list[str]] = [sites[: len(sites) // 2], sites[len(sites) // 2 :]]
    # the sets known to fail, the whole set first: once the first half verifies, the second
    # half joined to it is the failed candidate again (on the PP-OCRv5 recognizer, 2 of 4
    # trials re-ran quantize-int8 on every site, 25 s each, to fail as it had)
    failed = {frozenset(sites)}
    while queue:
        chunk = queue.pop(0)
        if not chunk:
            continue
        if frozenset(good + chunk) in failed:
            if len(chunk) > 1:
                h = len(chunk) // 2
                queue[:0] = [chunk[:h], chunk[h:]]
            else:
                out.dropped.append(chunk[0])
                out.why = why or "it completes the set of sites that failed"
            continue
        if out.trials >= max_trials or time.perf_counter() - start > max_seconds:
            out.dropped.extend(chunk)
            out.budget_spent = True
            continue
        out.trials += 1
        try:
            t = trial(set(good + chunk))
        except MetricError:
            raise  # the user's --metric is broken: no trial can be judged
        except Exception as e:
            t = Trial(None, f"{type(e).__name__}: {first_line(e)}")
        # a trial leaves a whole model behind in gs reference cycles (nodes <-> tensors):
        # collect them now, not when the cyclic GC happens to run (BERT-base: ~1 GB a trial)
        gc.collect()
        if t.verdict is not None:
            good += chunk
            out.kept = t
            continue
        failed.add(frozenset(good + chunk))
        if len(chunk) == 1:
            out.dropped.append(chunk[0])
            out.why = t.why
        else:
            h = len(chunk) // 2
            queue[:0] = [chunk[:h], chunk[h:]]
    if out.kept is None and not out.why:
        out.why = "every site failed"
    return out
