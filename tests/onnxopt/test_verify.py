"""The comparator, tolerances and budgets, on plain arrays (no model runs)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.verify import Budget, Exact, compare, compare_arrays


def runs(*arrays, name="y"):
    return [{name: a} for a in arrays]


def test_identical_arrays_are_equal_and_pass_exact():
    a = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    st = compare_arrays("y", [a], [a.copy()])
    assert st.max_abs == 0 and st.cosine == pytest.approx(1.0) and st.top1 == 1.0
    assert Exact().check(runs(a), runs(a.copy())).ok


def test_error_statistics_are_correct():
    r = np.array([1.0, 2.0, 4.0], np.float32)
    c = np.array([1.0, 2.5, 3.0], np.float32)
    st = compare_arrays("y", [r], [c])
    assert st.max_abs == pytest.approx(1.0)
    assert st.mean_abs == pytest.approx(0.5)
    assert st.max_rel == pytest.approx(0.25)
    expected_cos = float(r @ c / np.linalg.norm(r) / np.linalg.norm(c))
    assert st.cosine == pytest.approx(expected_cos)


def test_exact_scales_atol_by_magnitude_and_reports_needed_tolerance():
    r = np.full((100,), 1000.0, np.float32)
    noisy = r + 0.005  # 5e-6 relative: float noise at this magnitude
    assert Exact().check(runs(r), runs(noisy)).ok
    bad = r.copy()
    bad[3] += 5.0
    v = Exact().check(runs(r), runs(bad))
    assert not v.ok
    assert "would pass with atol>=" in v.reason


def test_exact_integer_outputs_must_be_identical():
    r = np.arange(6, dtype=np.int64)
    c = r.copy()
    c[2] = 7
    assert Exact().check(runs(r), runs(r.copy())).ok
    assert not Exact().check(runs(r), runs(c)).ok


def test_exact_detects_shape_and_nan_changes():
    r = np.zeros((2, 3), np.float32)
    assert "shape" in Exact().check(runs(r), runs(np.zeros((3, 2), np.float32))).reason
    n = r.copy()
    n[0, 0] = np.nan
    assert "NaN" in Exact().check(runs(r), runs(n)).reason


def test_top1_agreement_counts_argmax_matches():
    r = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    c = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    assert compare_arrays("y", [r], [c]).top1 == pytest.approx(0.75)


def test_budget_cosine_and_abs():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((8, 10)).astype(np.float32)
    c = r + 0.3 * rng.standard_normal(r.shape).astype(np.float32)
    cmp = compare(runs(r), runs(c))
    assert not Budget(min_cosine=0.999).check(cmp).ok
    assert Budget(min_cosine=0.5).check(cmp).ok
    assert not Budget(min_cosine=None, max_abs_err=0.01).check(cmp).ok


def test_budget_accuracy_drop():
    cmp = compare(runs(np.eye(3, dtype=np.float32)), runs(np.eye(3, dtype=np.float32)))
    assert Budget(min_cosine=None, max_accuracy_drop=1.0).check(cmp, (98.0, 97.5)).ok
    v = Budget(min_cosine=None, max_accuracy_drop=1.0).check(cmp, (98.0, 96.0))
    assert not v.ok and "points below" in v.reason


def test_top1_agreement_per_step_on_a_sequence_of_probabilities():
    """A CTC recognizer's [batch, steps, classes] softmax: agreement counts every step; a 3-D
    tensor that is not probabilities (a feature map) gets none."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7))
    r = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    c = r.copy()
    c[0, 0] = c[0, 0][::-1]  # one step's argmax moves (unless the row is symmetric)
    assert np.argmax(c[0, 0]) != np.argmax(r[0, 0])
    assert compare_arrays("p", [r], [c]).top1 == pytest.approx(9 / 10)
    assert compare_arrays("f", [logits], [logits]).top1 is None


def test_top1_agreement_over_runs_of_different_lengths():
    """Runs of a recognizer hold different numbers of steps (crops of different widths): the
    agreement pools every step of every run (it raised on concatenating them before)."""
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(6), size=(2, steps)) for steps in (4, 9)]
    cands = [p.copy() for p in probs]
    cands[1][1, 3] = cands[1][1, 3][::-1]
    assert np.argmax(cands[1][1, 3]) != np.argmax(probs[1][1, 3])
    assert compare_arrays("p", probs, cands).top1 == pytest.approx(25 / 26)


def test_statistics_accumulated_run_by_run_equal_the_pooled_ones():
    rng = np.random.default_rng(3)
    refs = [rng.standard_normal((2, 7)).astype(np.float32) for _ in range(5)]
    cands = [r + rng.normal(0, 0.1, r.shape).astype(np.float32) for r in refs]
    refs[2][0, 1] = cands[2][0, 1] = np.nan  # a NaN in both, where both have it, is skipped
    st = compare_arrays("y", refs, cands, percentiles=True)
    r = np.concatenate([x.ravel() for x in refs]).astype(np.float64)
    c = np.concatenate([x.ravel() for x in cands]).astype(np.float64)
    r, c = r[np.isfinite(r)], c[np.isfinite(r)]
    d = np.abs(r - c)
    assert st.max_abs == pytest.approx(d.max()) and st.mean_abs == pytest.approx(d.mean())
    assert st.mean_rel == pytest.approx((d / np.abs(r)).mean())
    assert st.p99_abs == pytest.approx(np.percentile(d, 99))
    assert st.cosine == pytest.approx(r @ c / np.linalg.norm(r) / np.linalg.norm(c), abs=1e-12)
    assert compare_arrays("y", refs, cands).p99_abs is None  # only when asked


def test_runs_longer_than_a_slice_give_the_pooled_statistics():
    """A run is compared slice by slice (``verify._CHUNK`` values): the statistics are the
    pooled ones, with a NaN in the second slice and a different maximum in each."""
    from onnxopt import verify

    rng = np.random.default_rng(4)
    size = 2 * verify._CHUNK + 123
    refs = [rng.standard_normal(size).astype(np.float32) for _ in range(2)]
    cands = [r + rng.normal(0, 1e-3, size).astype(np.float32) for r in refs]
    cands[1][verify._CHUNK + 5] += 0.5  # the largest error, in the second slice
    refs[0][verify._CHUNK + 9] = cands[0][verify._CHUNK + 9] = np.nan
    st = compare_arrays("y", refs, cands, percentiles=True)
    r = np.concatenate(refs).astype(np.float64)
    c = np.concatenate(cands).astype(np.float64)
    r, c = r[np.isfinite(r)], c[np.isfinite(r)]
    d = np.abs(r - c)
    assert st.max_abs == pytest.approx(d.max()) and st.mean_abs == pytest.approx(d.mean())
    assert st.max_rel == pytest.approx((d / np.abs(r)).max())
    assert st.ref_scale == pytest.approx(np.abs(r).max())
    assert st.p99_abs == pytest.approx(np.percentile(d, 99))
    assert st.cosine == pytest.approx(r @ c / np.linalg.norm(r) / np.linalg.norm(c), abs=1e-12)
    assert not st.exact_equal
    same = compare_arrays("y", [refs[1]], [refs[1].copy()])
    assert same.exact_equal and same.max_abs == 0.0 and same.cosine == pytest.approx(1.0)


def test_the_cosine_of_a_subset_of_runs_comes_from_one_comparison():
    """compare keeps each run's dot products: the cosine over any slice of the runs equals
    comparing that slice again (float outputs only)."""
    rng = np.random.default_rng(3)
    ref = [
        {"y": rng.standard_normal((5, 7)).astype(np.float32), "k": np.arange(3)} for _ in range(6)
    ]
    cand = [
        {"y": r["y"] + 0.1 * rng.standard_normal((5, 7)).astype(np.float32), "k": r["k"]}
        for r in ref
    ]
    comp = compare(ref, cand)
    assert set(comp.run_dots) == {"y"} and comp.run_dots["y"].shape == (6, 3)
    for part in (slice(0, 3), slice(3, None), slice(None)):
        again = compare(ref[part], cand[part]).outputs["y"].cosine
        assert abs(comp.cosines_over(part)["y"] - again) < 1e-12
    assert abs(comp.cosines_over(slice(None))["y"] - comp.outputs["y"].cosine) < 1e-12
    assert "run_dots" not in comp.to_dict()


@pytest.mark.filterwarnings("error")  # numpy's "invalid value" warning never reaches a user
def test_a_nan_or_inf_in_one_output_only_fails_the_comparison():
    """Non-finite values are found from the run's sums of squares: one in the candidate
    alone gives infinite errors; the same one in both is left out."""
    r = np.linspace(1, 2, 50, dtype=np.float32)
    for bad in (np.nan, np.inf, -np.inf):
        c = r.copy()
        c[7] = bad
        st = compare_arrays("y", [r], [c])
        assert st.max_abs == float("inf") and st.cosine == 0.0 and not st.exact_equal
        both = r.copy()
        both[7] = bad
        st = compare_arrays("y", [both], [c])
        assert st.max_abs == 0.0 and st.cosine == pytest.approx(1.0)


def test_runs_compared_in_threads_give_one_threads_statistics(monkeypatch):
    """A large comparison cuts its runs into parts, one thread each: the statistics, the
    runs' dot products and the top-1 agreement are the ones a single thread computes, bit for
    bit, and a non-finite value in a late run still fails it."""
    import onnxopt.verify as v

    rng = np.random.default_rng(3)
    refs = [rng.dirichlet(np.ones(50), size=(2, 30)).astype(np.float32) for _ in range(9)]
    cands = [(r + rng.normal(0, 1e-3, r.shape)).astype(np.float32) for r in refs]

    def stats(min_values, cands=cands):
        monkeypatch.setattr(v, "THREADS_MIN_VALUES", min_values)
        monkeypatch.setattr(v, "side_by_side", lambda: 2)
        dots = []
        st = compare_arrays("y", refs, cands, run_dots=dots)
        return st, dots

    one, one_dots = stats(1 << 40)
    split, split_dots = stats(0)
    assert split == one and split_dots == one_dots
    assert one.top1 is not None and 0 < one.top1 < 1
    bad = [c.copy() for c in cands]
    bad[-1][0, 0, 0] = np.nan
    assert stats(0, bad)[0].max_abs == float("inf")


def test_a_comparison_without_errors_reads_the_same_cosine_and_dots() -> None:
    """``compare(errors=False)`` (a search's scores under a cosine or task-metric budget):
    the cosine and the per-run dot products as the full comparison has them, the error
    statistics and the top-1 agreement not measured; non-finite values at other places
    still read cosine 0."""
    import math

    rng = np.random.default_rng(0)
    ref = [{"y": rng.standard_normal((2, 5, 7)).astype(np.float32)} for _ in range(3)]
    cand = [
        {"y": r["y"] + 0.01 * rng.standard_normal(r["y"].shape).astype(np.float32)} for r in ref
    ]
    full, light = compare(ref, cand), compare(ref, cand, errors=False)
    assert light.outputs["y"].cosine == full.outputs["y"].cosine < 1.0
    np.testing.assert_array_equal(light.run_dots["y"], full.run_dots["y"])
    assert full.outputs["y"].max_abs > 0 and math.isnan(light.outputs["y"].max_abs)
    assert light.outputs["y"].top1 is None and not light.outputs["y"].exact_equal
    cand[1]["y"][0, 0, 0] = np.nan
    assert compare(ref, cand, errors=False).outputs["y"].cosine == 0.0


@pytest.mark.parametrize("noise", [0.0, 1e-6, 5e-5, 2e-4, 1.0])
def test_a_check_widened_by_noise_reads_as_the_check_with_it(noise: float) -> None:
    """``Exact.widened`` gives the verdict (and reasons) ``check`` gives with the noise floor,
    from the strict check's pass alone; a shape mismatch stays whatever the noise."""
    rng = np.random.default_rng(1)
    ref = [{"y": rng.standard_normal((4, 50)).astype(np.float32), "z": np.ones((2, 3), np.float32)}]
    cand = [
        {
            "y": ref[0]["y"] + np.float32(1e-4) * rng.standard_normal((4, 50)).astype(np.float32),
            "z": np.ones((2, 3), np.float32),
        }
    ]
    exact = Exact()
    strict = exact.check(ref, cand)
    assert not strict and "y" in strict.over
    floors = {"y": noise}
    want = exact.check(ref, cand, floors)
    got = exact.widened(strict, floors)
    assert (bool(got), got.reasons) == (bool(want), want.reasons)
    cand[0]["z"] = np.ones((3, 2), np.float32)
    strict = exact.check(ref, cand)
    got, want = exact.widened(strict, floors), exact.check(ref, cand, floors)
    assert not got and got.reasons == want.reasons
    assert any("shape" in r for r in got.reasons)
