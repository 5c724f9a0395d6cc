"""The differential fuzzing guard (issue #20), as CI runs it: 200 random graphs from a fixed
seed, each optimized by the exact pipeline for both targets (standard ops, and
``--target onnxruntime`` with its contrib fusions), verified on one input distribution and
then compared with the original on inputs verification never saw (``tests.fuzz.oracle``).

About half a minute of CPU; ``python benchmarks/fuzz.py --n 20000`` is the long run."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.fuzz.generator import MOTIFS, Case, generate
from tests.fuzz.oracle import Outcome, check, quiet

#: the CI run: graphs ``SEED .. SEED + COUNT - 1``
SEED, COUNT = 20_000, 200
TARGETS = ("onnx", "onnxruntime")

#: rollback reasons that are a pass's bug whatever the data: the candidate was not a valid
#: model, or onnxruntime could not run it (other rollbacks are the verifier refusing float
#: noise beyond the fixed tolerance, e.g. a float16 fusion that rounds once instead of twice)
STRUCTURAL = ("invalid model after rewrite", "onnxruntime failed")


@pytest.fixture(scope="module")
def outcomes() -> list[tuple[Case, Outcome]]:
    out = []
    with quiet():
        for seed in range(SEED, SEED + COUNT):
            case = generate(seed)
            for target in TARGETS:
                out.append((case, check(case, target)))
    return out


def _describe(rows: list[tuple[Case, Outcome]]) -> str:
    return "\n".join(
        f"{c.describe()} [{o.target}] {o.status} by {o.culprit or '?'} on {o.inputs}: {o.detail}"
        for c, o in rows
    )


def test_no_changed_invalid_or_crashed_model(outcomes):
    bad = [(c, o) for c, o in outcomes if o.bad]
    assert not bad, _describe(bad)


def test_no_pass_raised_and_no_structural_rollback(outcomes):
    bad = [(c, o.errors) for c, o in outcomes if o.errors]
    bad += [
        (c, o.rollbacks)
        for c, o in outcomes
        if any(s in why for why in o.rollbacks for s in STRUCTURAL)
    ]
    assert not bad, "\n".join(f"{c.describe()}: {why}" for c, why in bad)


def test_the_run_covers_every_motif_and_exact_pass(outcomes):
    from onnxopt.passes.registry import expand

    motifs = Counter(m for c, _ in outcomes[:: len(TARGETS)] for m in c.motifs)
    assert set(motifs) == set(MOTIFS), set(MOTIFS) - set(motifs)
    kept = {p for _, o in outcomes for p in o.kept}
    passes = set(expand(["cleanup", "fusion"]))
    assert passes <= kept, passes - kept
    statuses = Counter(o.status for _, o in outcomes)
    assert statuses["optimized"] > COUNT  # most graphs are rewritten under both targets
