"""Feeds: loading, layouts, synthesis and the clear errors on mismatches."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import parser

from onnxopt.data import Feeds, batch_feed, load_feeds, parse_shape_overrides, representative
from onnxopt.errors import DataError
from onnxopt.synth import get_feeds, synthesize

MODEL = parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
g (float[N,3] x, int64[N,5] ids) => (float[N,3] y) { y = Relu(x) }""")
STATIC = parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
g (float[2,3] x) => (float[2,3] y) { y = Relu(x) }""")


def test_npz_split_along_batch_and_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((6, 3), np.float32), ids=np.zeros((6, 5), np.int64), labels=np.arange(6))
    f = load_feeds(p, MODEL, batch=2)
    assert len(f) == 3 and f.runs[0]["x"].shape == (2, 3)
    assert [list(x) for x in f.labels] == [[0, 1], [2, 3], [4, 5]]


def test_stacked_layout_and_static_batch(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, x=np.zeros((5, 2, 3), np.float32))
    assert len(load_feeds(p, STATIC)) == 5
    np.savez(p, x=np.zeros((4, 3), np.float32))
    assert len(load_feeds(p, STATIC)) == 2


def test_runs_of_different_shapes_one_key_per_run(tmp_path):
    """An OCR detector's images differ in size: ``RUN/NAME`` keys, one array per run."""
    p = tmp_path / "r.npz"
    arrays = {
        "0002/x": np.ones((1, 3), np.float32),
        "0000/x": np.zeros((2, 3), np.float32),
        "0001/x": np.zeros((4, 3), np.float32),
    }
    ids = {f"{i:04d}/ids": np.zeros((n, 5), np.int64) for i, n in enumerate((2, 4, 1))}
    labels = {f"{i:04d}/labels": np.array([i]) for i in range(3)}
    np.savez(p, **arrays, **ids, **labels)
    f = load_feeds(p, MODEL)
    assert [r["x"].shape[0] for r in f.runs] == [2, 4, 1]  # in the order of the run numbers
    assert [int(x[0]) for x in f.labels] == [0, 1, 2]
    np.savez(p, **arrays, **ids)
    assert load_feeds(p, MODEL).labels is None


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"0001/y": np.zeros((1, 3), np.float32)}, "run 0001: input names do not match"),
        ({"0000/labels": np.array([0])}, "1 of 2 runs have labels"),
    ],
)
def test_runs_of_different_shapes_errors(tmp_path, extra, message):
    p = tmp_path / "r.npz"
    arrays = {"0000/x": np.zeros((2, 3), np.float32), "0000/ids": np.zeros((2, 5), np.int64)}
    if "0001/y" not in extra:
        arrays.update(
            {"0001/x": np.zeros((1, 3), np.float32), "0001/ids": np.zeros((1, 5), np.int64)}
        )
    np.savez(p, **arrays, **extra)
    with pytest.raises(DataError, match=message):
        load_feeds(p, MODEL)


def test_a_mixed_layout_names_a_few_keys_and_says_what_is_wrong(tmp_path):
    """A per-run file with a plain ``labels`` key: the error lists 8 of the 120 keys, and why."""
    p = tmp_path / "r.npz"
    runs = {
        f"{i:04d}/{n}": np.zeros((1, 3 if n == "x" else 5), np.float32)
        for i in range(60)
        for n in ("x", "ids")
    }
    np.savez(p, **runs, labels=np.arange(60))
    with pytest.raises(DataError) as e:
        load_feeds(p, MODEL)
    msg = str(e.value)
    assert "and 112 more" in msg and "every key as RUN/NAME" in msg and "\n" not in msg
    assert len(msg) < 400


def test_folder_of_npy(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2, 3), np.float32))
    assert len(load_feeds(tmp_path, STATIC)) == 4


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((4, 3), np.float32)}, "missing"),
        ({"x": np.zeros((4, 3), np.float64), "ids": np.zeros((4, 5), np.int64)}, "float64"),
        ({"x": np.zeros((4, 4), np.float32), "ids": np.zeros((4, 5), np.int64)}, "dim 1 must be 3"),
        ({"x": np.zeros((4,), np.float32), "ids": np.zeros((4, 5), np.int64)}, "rank"),
        ({"x": np.full((4, 3), np.nan, np.float32), "ids": np.zeros((4, 5), np.int64)}, "NaN"),
    ],
)
def test_mismatches_are_named(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=match):
        load_feeds(p, MODEL)


def test_not_an_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read"):
        load_feeds(p, MODEL)


def test_synthesize_reads_int_ranges_and_int_range_overrides():
    f = synthesize(MODEL, runs=2)  # 'ids' indexes nothing: 0 or 1
    assert f.synthesized and f.runs[0]["ids"].max() < 2 and f.runs[0]["x"].shape == (1, 3)
    assert f.runs[1]["x"].shape == (2, 3)  # the second size set: batch 2
    f = synthesize(MODEL, int_range=(0, 7), runs=2)
    assert f.runs[0]["ids"].max() < 7


def test_dynamic_inner_dim_gets_two_sizes_and_shape_overrides():
    m = parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[1,S] x) => (float[1,S] y) { y = Relu(x) }""")
    f = get_feeds(m)
    assert [r["x"].shape for r in f.runs] == [(1, 32), (1, 48), (1, 32), (1, 48)]
    assert any("[1x32]" in n and "[1x48]" in n for n in f.notes)
    f = get_feeds(m, shapes=parse_shape_overrides(["x=1x7"]))
    assert f.runs[0]["x"].shape == (1, 7)
    with pytest.raises(DataError):
        parse_shape_overrides(["x=1xa"])


def test_scalar_input_as_a_stack_of_runs_or_one_value(tmp_path):
    # a streaming model: audio [1, 512], a recurrent state and a scalar sample rate
    m = parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
    g (float[1,512] input, float[2,1,8] state, int64 sr) => (float[1,512] y) {
        y = Relu(input)
    }""")
    p = tmp_path / "runs.npz"
    n = 3
    np.savez(
        p,
        input=np.zeros((n, 1, 512), np.float32),
        state=np.zeros((n, 2, 1, 8), np.float32),
        sr=np.full(n, 16000, np.int64),
    )
    f = load_feeds(p, m)
    assert len(f) == n and f.runs[0]["sr"].shape == () and int(f.runs[2]["sr"]) == 16000
    q = tmp_path / "one.npz"
    np.savez(
        q,
        input=np.zeros((n, 1, 512), np.float32),
        state=np.zeros((n, 2, 1, 8), np.float32),
        sr=np.array(8000, np.int64),
    )
    f = load_feeds(q, m)
    assert len(f) == n and all(r["sr"].shape == () and int(r["sr"]) == 8000 for r in f.runs)


def test_batch_feed_stacks_the_runs_and_cycles_them():
    rng = np.random.default_rng(0)
    runs = [
        {"x": rng.standard_normal((2, 3)).astype(np.float32), "ids": np.full((2, 5), i)}
        for i in range(3)
    ]
    feeds = Feeds(runs)
    five = batch_feed(MODEL, feeds, 5)
    assert five["x"].shape == (5, 3) and five["ids"].shape == (5, 5)
    np.testing.assert_array_equal(five["x"], np.concatenate([r["x"] for r in runs])[:5])
    eight = batch_feed(MODEL, feeds, 8)  # 6 samples in the runs: cycled
    np.testing.assert_array_equal(eight["ids"][:, 0], [0, 0, 1, 1, 2, 2, 0, 0])
    assert feeds.subset(1).timing is None
    timed = Feeds(runs, timing=five)
    assert timed.subset(1).timing is five and timed.split(0.5)[1].timing is five
    assert timed.timing_feed() is five and feeds.timing_feed() is runs[1]


def test_speed_is_judged_on_the_median_size_run():
    runs = [
        {"x": np.zeros((1, n), np.float32), "ids": np.zeros(2, np.int64)} for n in (5, 1, 9, 3, 7)
    ]
    assert representative(runs) is runs[0]  # sizes 1, 3, 5, 7, 9 (+2 each)
    assert Feeds(runs).timing_feed() is runs[0]
    assert representative(runs[:2]) is runs[0]  # of two, the larger


def test_batch_feed_refuses_what_does_not_stack():
    with pytest.raises(DataError, match="input 'x' has a fixed batch of 2"):
        batch_feed(STATIC, Feeds([{"x": np.zeros((2, 3), np.float32)}]), 4)
    assert batch_feed(STATIC, Feeds([{"x": np.zeros((1, 3), np.float32)}]), 2)["x"].shape == (2, 3)
    two_sizes = Feeds([{"x": np.zeros((1, 3), np.float32)}, {"x": np.ones((1, 4), np.float32)}])
    assert not batch_feed(MODEL, two_sizes, 3)["x"].any()  # the runs shaped like the first
    with pytest.raises(DataError, match="input 'x' is a scalar"):
        batch_feed(MODEL, Feeds([{"x": np.float32(1)}]), 2)


def test_split_spread_takes_every_other_run_in_order():
    runs = [{"x": np.full((1, 3), i, np.float32)} for i in range(6)]
    labels = [np.array([c]) for c in (0, 0, 0, 1, 1, 1)]  # saved by class
    feeds = Feeds(runs, labels)
    first, rest = feeds.split(0.5)
    assert [int(x[0]) for x in first.labels] == [0, 0, 0]  # the leading half: one class
    first, rest = feeds.split(0.5, spread=True)
    assert [int(r["x"][0, 0]) for r in first.runs] == [0, 2, 4]
    assert [int(r["x"][0, 0]) for r in rest.runs] == [1, 3, 5]
    assert [int(x[0]) for x in first.labels] == [0, 0, 1]  # labels follow their runs
    assert [int(x[0]) for x in rest.labels] == [0, 1, 1]
    seven = Feeds([{"x": np.full((1, 3), i, np.float32)} for i in range(7)])
    a, b = seven.split(0.5, spread=True)
    ids = [int(r["x"][0, 0]) for r in a.runs] + [int(r["x"][0, 0]) for r in b.runs]
    assert len(a) == 4 and sorted(ids) == list(range(7))  # disjoint, nothing lost
    one = Feeds(runs[:1]).split(0.5, spread=True)
    assert len(one[0]) == 1 and len(one[1]) == 0


def test_a_subset_spreads_over_the_runs_with_their_labels():
    # runs saved by class: the first half would be class 0 alone
    runs = [{"x": np.full((1, 3), i, np.float32)} for i in range(8)]
    f = Feeds(runs, labels=[np.array([i // 4]) for i in range(8)], notes=["n"])
    sub = f.subset(4)
    assert [int(r["x"][0, 0]) for r in sub.runs] == [0, 2, 4, 6]
    assert [int(y[0]) for y in sub.labels] == [0, 0, 1, 1] and sub.notes == ["n"]
    assert f.subset(1).runs == [runs[0]] and len(f.subset(20)) == 8 and not f.subset(0).runs


def test_spread_first_puts_a_spread_prefix_first_and_keeps_every_run():
    runs = [{"x": np.full((1, 3), i, np.float32)} for i in range(7)]
    f = Feeds(runs, labels=[np.array([i]) for i in range(7)])
    g = f.spread_first(3)
    assert [int(r["x"][0, 0]) for r in g.runs] == [0, 2, 4, 1, 3, 5, 6]
    assert [int(y[0]) for y in g.labels] == [0, 2, 4, 1, 3, 5, 6]
