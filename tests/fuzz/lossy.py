"""The lossy oracle: passes that are lossy by declaration on fuzzed graphs.

A lossy pass (half precision, int4, int8 with nearest or learned rounding) may depend on its data, so the exact oracle
(:mod:`tests.fuzz.oracle`) does not apply. Each case runs ``cleanup, fusion, <pass>`` under a
budget (cosine >= :data:`BUDGET` against the original), verified on the verification
distribution, and the model returned is then run on held-out inputs *of the same
distribution* (other seeds), both as written and as onnxruntime runs it (graph optimizations
on). Buckets:

- ``kept`` / ``unchanged``: the pass kept at least one site (or none) and everything below
  held;
- ``invalid``: the model fails the checker or strict shape inference, renames or retypes its
  inputs or outputs, or does not run (in either session);
- ``nonfinite``: an output is NaN or infinite where the original's is finite, in either
  session: wrong whatever the budget;
- ``over_budget``: finite and valid, but on held-out inputs the cosine against the original is
  below :data:`FLOOR`: the pass generalizes worse than its verification promised (counted and
  shown, since a data-dependent pass can meet its budget only on data like its own);
- ``crashed``: an exception escaped ``PassManager.run``; ``refused``: a one-line
  ``OnnxoptError``; ``not_runnable``: onnxruntime cannot run the original.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from onnxopt.data import Feeds
from onnxopt.errors import OnnxoptError, first_line
from onnxopt.runner import Runner
from onnxopt.verify import compare
from tests.fuzz import feeds as fz_feeds
from tests.fuzz.generator import Case
from tests.fuzz.oracle import runnable, validity

#: the lossy passes fuzzed (by a label: the pass is "pass", else the label), with the target and
#: options each needs
LOSSY: dict[str, dict] = {
    "convert-fp16": {},
    # fuzzed weights are small: every one of them is converted (the default skips small ones)
    "convert-bf16": {"options": {"min_weight_elements": 1}},
    "quantize-int4": {"target": "onnxruntime"},
    # tiny graphs are never faster in int8: the speed gate and per-layer timing are off, so
    # the oracle judges what the pass writes, not what the machine's load decided
    "quantize-int8": {"allow_slower": True, "options": {"latency_aware": False}},
    # learned rounding, layer by layer on the calibration activations
    "quantize-int8 adaround": {
        "pass": "quantize-int8",
        "allow_slower": True,
        "options": {"latency_aware": False, "rounding": "adaround", "adaround_iterations": 50},
    },
}
BUDGET = 0.99
FLOOR = 0.95
BAD = ("invalid", "nonfinite", "crashed")
HELD_OUT = 4


@dataclass
class LossyOutcome:
    status: str
    pass_name: str
    detail: str = ""
    cosine: float | None = None
    sites: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return self.status in BAD


def check_lossy(case: Case, label: str) -> LossyOutcome:
    """Run ``cleanup, fusion`` and the lossy pass ``label`` names (:data:`LOSSY`) on ``case``
    and judge it on held-out inputs."""
    from onnxopt.passes.registry import manager
    from onnxopt.verify import Budget

    t0 = time.perf_counter()
    spec = LOSSY[label]
    pass_name = spec.get("pass", label)
    why = runnable(case)
    if why:
        return LossyOutcome("not_runnable", label, why)
    feeds = Feeds(fz_feeds.verification(case.inputs), source="fuzz verify")
    try:
        pm = manager(
            ["cleanup", "fusion", pass_name],
            target=spec.get("target", "onnx"),
            budget=Budget(min_cosine=BUDGET),
            options={pass_name: spec.get("options", {})},
            allow_slower=spec.get("allow_slower", False),
        )
        out, report = pm.run(case.model, feeds)
    except OnnxoptError as e:
        return LossyOutcome("refused", label, first_line(e, 300))
    except Exception as e:  # noqa: BLE001 - the bug this counts
        return LossyOutcome("crashed", label, f"{type(e).__name__}: {first_line(e, 300)}")
    p = report.passes[-1]
    res = LossyOutcome("kept" if p.status == "kept" else "unchanged", label)
    res.sites, res.notes = p.rewrites, [p.reason] if p.reason else []
    _judge(case, out, res)
    res.seconds = time.perf_counter() - t0
    return res


def _judge(case: Case, out, res: LossyOutcome) -> None:
    why = validity(case.model, out)
    if why:
        res.status, res.detail = "invalid", why
        return
    runner = Runner(threads=1, quiet=True)
    runs = [fz_feeds.feed(case.inputs, "verify", 5000 + i) for i in range(HELD_OUT)]
    refs, cands = [], []
    for run in runs:
        try:
            ref = runner.run(case.model, Feeds([run]))[0]
        except OnnxoptError:
            continue
        for optimized in (False, True):
            try:
                got = runner.run(out, Feeds([run]), optimized=optimized)[0]
            except OnnxoptError as e:
                where = "with optimizations on" if optimized else "as written"
                res.status, res.detail = "invalid", f"does not run {where}: {first_line(e, 200)}"
                return
            bad = _introduced_nonfinite(ref, got)
            if bad:
                where = " (optimizations on)" if optimized else ""
                res.status, res.detail = "nonfinite", bad + where
                return
            refs.append(ref)
            cands.append(got)
    res.cosine = compare(refs, cands).cosine if refs else None  # the verifier's comparison
    if res.cosine is not None and res.cosine < FLOOR:
        res.status, res.detail = "over_budget", f"held-out cosine {res.cosine:.4f} < {FLOOR}"


def _introduced_nonfinite(ref: dict, got: dict) -> str:
    for name, a in ref.items():
        b = got[name]
        if a.dtype.kind != "f" or a.shape != b.shape:
            continue
        new = np.isfinite(a) & ~np.isfinite(b)
        if new.any():
            return f"'{name}': {int(new.sum())} non-finite values where the original's are finite"
    return ""
