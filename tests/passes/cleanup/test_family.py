"""The cleanup family through the PassManager: every pass kept, nothing rolled back."""

from __future__ import annotations

import pytest

from onnxopt.passes import registry
from onnxopt.passes.cleanup import PASSES
from onnxopt.passes.registry import manager
from onnxopt.synth import synthesize
from tests.helpers import assert_identical, ops, parse

MESSY = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,3,4] x) => (float[2,12] y, float[2,12] z)
  <float[4] w1 = {1, 2, 3, 4}, float[4] w2 = {1, 2, 3, 4}, float[4] unused = {0, 0, 0, 0}> {
  i = Identity(x)
  d = Dropout(i)
  half = Constant<value = float {0.5}>()
  ws = Mul(w1, half)
  a = Add(d, ws)
  b = Add(d, w2)
  c = Cast<to = 1>(b)
  t = Transpose<perm = [0, 1, 2]>(c)
  e1 = Relu(a)
  e2 = Relu(a)
  s = Shape(x)
  k = Constant<value = int64[1] {0}>()
  n = Gather<axis = 0>(s, k)
  m1 = Constant<value = int64[1] {-1}>()
  tgt = Concat<axis = 0>(n, m1)
  sum = Add(e1, e2)
  tt = Add(sum, t)
  y = Reshape(tt, tgt)
  dead = Neg(x)
  z = Reshape(e2, tgt)
}"""


EXPECTED = {
    "remove-identity": 2,
    "fold-shapes": 1,
    "fold-constants": 1,
    "remove-noops": 2,
    "dedup-initializers": 1,
    "cse": 1,
    "dead-code": 2,
}


def test_family_alias_resolves_in_order() -> None:
    assert [p.name for p in registry.resolve(["cleanup"])] == [p.name for p in PASSES]
    assert all(p.exact and "cleanup" in p.tags for p in registry.resolve(["cleanup"]))


def test_cleanup_family_through_manager() -> None:
    m = parse(MESSY)
    feeds = synthesize(m, runs=2)
    out, report = manager(["cleanup"]).run(m, feeds)
    statuses = {p.name: p.status for p in report.passes}
    assert "rolled back" not in statuses.values() and "error" not in statuses.values()
    assert sorted(ops(out)) == ["Add"] * 4 + ["Relu", "Reshape", "Reshape"]
    assert statuses["fold-shapes"] == statuses["cse"] == "kept"
    assert_identical(m, out)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_pass_kept_by_manager(name: str) -> None:
    m = parse(MESSY)
    out, report = manager([name]).run(m, synthesize(m, runs=1))
    (pr,) = report.passes
    assert pr.status == "kept", (pr.status, pr.notes, pr.errors)
    assert pr.rewrites >= EXPECTED[name]
    assert_identical(m, out)


def test_cleanup_family_on_exporter_style_nodes() -> None:
    """torch.onnx leaves every node's ``domain`` unset: the family must clean up just as much."""
    from tests.passes.cleanup.test_lift import exporter_style

    m = exporter_style(parse(MESSY))
    out, report = manager(["cleanup"]).run(m, synthesize(m, runs=1))
    assert all(p.status in ("kept", "unchanged") for p in report.passes)
    assert sorted(ops(out)) == ["Add"] * 4 + ["Relu", "Reshape", "Reshape"]
    assert_identical(m, out)
