"""The lossy passes on fuzzed graphs, as CI runs them: 24 graphs from a fixed seed through
``cleanup, fusion`` and each of convert-fp16, convert-bf16, quantize-int4 and quantize-int8
(nearest and learned rounding; ``tests.fuzz.lossy``). No model may be invalid, introduce a NaN/Inf the original does not
have (as written or as onnxruntime runs it), or crash the manager.
``python benchmarks/fuzz_lossy.py --n 500`` is the long run."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fuzz.generator import generate
from tests.fuzz.lossy import LOSSY, LossyOutcome, check_lossy
from tests.fuzz.oracle import quiet

SEED, COUNT = 40_000, 24


@pytest.fixture(scope="module")
def outcomes() -> list[tuple[str, LossyOutcome]]:
    out = []
    with quiet():
        for seed in range(SEED, SEED + COUNT):
            case = generate(seed)
            out += [(case.describe(), check_lossy(case, p)) for p in LOSSY]
    return out


def test_no_invalid_nonfinite_or_crashed_model(outcomes):
    bad = [f"{g} [{o.pass_name}] {o.status}: {o.detail}" for g, o in outcomes if o.bad]
    assert not bad, "\n".join(bad)


def test_every_lossy_pass_rewrites_some_graphs(outcomes):
    kept = Counter(o.pass_name for _, o in outcomes if o.status == "kept")
    assert set(kept) == set(LOSSY), kept
