"""Every graph under ``tests/fuzz/regressions/``: a fuzzed graph that once showed a pass's
bug, shrunk by ``tests.fuzz.minimize`` and saved with what went wrong in its metadata. Each
must now optimize cleanly under its target: outputs equal on the adversarial inputs, a valid
model, and the pass that was wrong neither raised nor was rolled back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.minimize import REGRESSIONS, load
from tests.fuzz.oracle import check, symptom

CASES = sorted(REGRESSIONS.glob("*.onnx"))


def test_there_are_regression_cases():
    assert len(CASES) >= 5


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_regression_case_optimizes_cleanly(path: Path):
    case, meta = load(path)
    res = check(case, meta["fuzz.target"], attribute=False)
    assert not res.bad, f"{meta['fuzz.bug']}: {res.status} on {res.inputs}: {res.detail}"
    for kind in ("error", "rolled back"):
        assert not symptom(res, kind, meta["fuzz.pass"]), (meta["fuzz.bug"], res)
