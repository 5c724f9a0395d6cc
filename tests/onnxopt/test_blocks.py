"""Block-by-block runs: the same outputs as one session, one block alive at a time."""

from __future__ import annotations

import numpy as np

from onnxopt import blocks, weights
from onnxopt.data import Feeds
from onnxopt.passes.registry import manager
from onnxopt.runner import Runner
from tests.onnxopt.test_weights import chain, feeds


def test_plan_cuts_by_weight_bytes() -> None:
    m = chain(layers=4)
    one = weights.nbytes(m.graph.initializer[0])  # a 64x64 weight
    bs = blocks.plan(m, int(1.5 * one))
    assert len(bs) >= 4
    assert all(b.weight_bytes <= 1.5 * one + 1024 for b in bs)
    assert bs[0].inputs == ["x"] and bs[-1].outputs == [m.graph.output[0].name]
    for a, b in zip(bs, bs[1:]):
        assert set(b.inputs) <= set(a.outputs) | {"x"}


def test_chained_run_equals_one_session() -> None:
    m = chain(layers=4)
    f = Feeds([feeds(), feeds()])
    whole = Runner().run(m, f)
    r = Runner()
    r.block_bytes = 20_000
    assert isinstance(r.session(m), blocks.Chained)
    got = r.run(m, f)
    for a, b in zip(whole, got):
        np.testing.assert_array_equal(a[m.graph.output[0].name], b[m.graph.output[0].name])


def test_pipeline_under_a_tiny_budget_runs_block_by_block() -> None:
    m = chain(layers=4)
    out, rep = manager(["cleanup"], max_memory=40_000).run(m, Feeds([feeds()] * 4))
    assert any("block by block" in n for n in rep.notes)
    assert rep.verified_on["exact"] == 2
    assert [p.status for p in rep.passes if p.name == "remove-identity"] == ["kept"]
    assert rep.final_vs_original.max_abs == 0.0
