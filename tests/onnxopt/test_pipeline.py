"""PassManager: rollback of a wrong pass, bisection, order validation, strict, lossy budgets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import parser

from onnxopt.contract import Pass, PassContext, PassResult
from onnxopt.errors import OptionError, PipelineError
from onnxopt.passes.registry import ORDER, manager
from onnxopt.pipeline import PassManager, validate_order
from onnxopt.synth import synthesize
from onnxopt.verify import Budget

CHAIN = """<ir_version: 8, opset_import: ["": 17]>
g (float[2,8] x) => (float[2,8] y) {
  a = Neg(x)
  b = Neg(a)
  c = Neg(b)
  d = Neg(c)
  y = Relu(d)
}"""


def model():
    return parser.parse_model(CHAIN)


class NegToAbs(Pass):
    """Test-only: rewrites every Neg; the sites in ``wrong`` become Abs (changes outputs)."""

    name = "test-neg"
    exact = True
    tags = ("test",)

    def __init__(self, wrong=("c",)):
        self.wrong = set(wrong)

    def run(self, graph, ctx):
        sites = []
        for n in graph.nodes:
            key = n.outputs[0].name
            if n.op == "Neg" and ctx.allow(key):
                sites.append(key)
                n.op = "Abs" if key in self.wrong else "Neg"
                n.name = f"rewritten_{key}"
        return PassResult(
            changed=bool(sites),
            rewrites=len(sites),
            sites=sites,
            notes=[f"rewrote {sorted(sites)}"],
            details={"sites": sorted(sites)},
        )


class AllWrong(Pass):
    name = "test-wrong"
    exact = True
    tags = ("test",)

    def run(self, graph, ctx):
        for n in graph.nodes:
            if n.op == "Relu":
                n.op = "Sigmoid"
        return PassResult(changed=True, rewrites=1)


class Crashes(Pass):
    name = "test-crash"
    exact = True

    def run(self, graph, ctx):
        raise RuntimeError("boom")


class Scale(Pass):
    """Test-only lossy pass: multiplies the output by (1 + eps) via an extra Mul."""

    name = "test-scale"
    exact = False
    tags = ("quantize",)

    def __init__(self, noise):
        self.noise = noise

    def run(self, graph, ctx):
        import onnx_graphsurgeon as gs

        y = graph.outputs[0]
        relu = y.inputs[0]
        mid = gs.Variable("pre_y", dtype=np.float32)
        relu.outputs = [mid]
        rng = np.random.default_rng(0)
        k = gs.Constant("k", (1 + self.noise * rng.standard_normal((2, 8))).astype(np.float32))
        graph.nodes.append(gs.Node("Mul", inputs=[mid, k], outputs=[y]))
        return PassResult(changed=True, rewrites=1)


def feeds():
    return synthesize(model(), runs=3)


def test_wrong_pass_is_rolled_back_and_output_is_original():
    out, rep = PassManager([AllWrong()]).run(model(), feeds())
    assert rep.passes[0].status == "rolled back"
    assert "outputs changed" in rep.passes[0].reason
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model().graph.node]


def test_bisection_keeps_good_sites_and_drops_culprit():
    out, rep = PassManager([NegToAbs(wrong=("c",))]).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept"
    assert pr.dropped_sites == ["c"]
    assert pr.rewrites == 3
    names = {n.name for n in out.graph.node}
    assert {"rewritten_a", "rewritten_b", "rewritten_d"} <= names
    assert "rewritten_c" not in names
    assert [n.op_type for n in out.graph.node].count("Abs") == 0
    # details and notes describe the model kept, not the full candidate that failed
    assert pr.details == {"sites": ["a", "b", "d"]}
    assert pr.notes[0] == "rewrote ['a', 'b', 'd']" and "bisection kept 3 of 4" in pr.notes[1]


def test_a_pass_and_its_bisection_trials_share_one_memo():
    """The first run and every trial of a pass see the same memo; the next pass a new one."""

    class Remembers(NegToAbs):
        seen: list = []

        def run(self, graph, ctx):
            runs = ctx.memo.setdefault("runs", [])
            self.seen.append((self.name, ctx.site_filter is None, len(runs)))
            runs.append(1)
            return super().run(graph, ctx)

    first, second = Remembers(wrong=("c",)), Remembers(wrong=())
    second.name = "test-neg-2"
    PassManager([first, second], batch_exact=False).run(model(), feeds())
    one = [(f, k) for name, f, k in Remembers.seen if name == "test-neg"]
    assert len(one) > 2 and one == [(True, 0)] + [(False, k) for k in range(1, len(one))]
    assert [(f, k) for name, f, k in Remembers.seen if name == "test-neg-2"] == [(True, 0)]


def test_crashing_pass_is_reported_not_raised():
    out, rep = PassManager([Crashes(), NegToAbs(wrong=())]).run(model(), feeds())
    assert rep.passes[0].status == "error" and "boom" in rep.passes[0].reason
    assert rep.passes[1].status == "kept"


def test_strict_raises():
    with pytest.raises(PipelineError, match="test-wrong"):
        PassManager([AllWrong()], strict=True).run(model(), feeds())


def test_bad_order_is_refused_before_running():
    class Fuse(Pass):
        name = "test-fuse"
        tags = ("fusion",)

    with pytest.raises(OptionError, match="must run before"):
        validate_order([Scale(0.0), Fuse()], ORDER)
    with pytest.raises(OptionError):
        PassManager([Scale(0.0), Fuse()], order=ORDER)
    with pytest.raises(OptionError):
        manager([Scale(0.0), Fuse()])


def test_unknown_pass_name():
    with pytest.raises(OptionError, match="unknown pass 'nope'"):
        manager(["nope"])


def test_lossy_pass_judged_by_budget():
    _, rep = PassManager([Scale(0.001)], budget=Budget(min_cosine=0.99)).run(model(), feeds())
    assert rep.passes[0].status == "kept"
    assert rep.passes[0].vs_original.cosine < 1.0
    _, rep = PassManager([Scale(1.0)], budget=Budget(min_cosine=0.99)).run(model(), feeds())
    assert rep.passes[0].status == "rolled back" and "over budget" in rep.passes[0].reason


def test_report_json_roundtrip():
    import json

    _, rep = PassManager([NegToAbs(wrong=())]).run(model(), feeds())
    d = json.loads(rep.to_json())
    assert d["passes"][0]["name"] == "test-neg" and d["passes"][0]["status"] == "kept"
    assert d["original"]["nodes"] == 5


def test_input_model_is_not_modified():
    m = model()
    before = m.SerializeToString()
    PassManager([NegToAbs(wrong=())]).run(m, feeds())
    assert m.SerializeToString() == before
    assert isinstance(m, onnx.ModelProto)


def test_apply_returns_the_input_itself_when_unchanged():
    """Pass.apply: a whole-model pass works on a copy; unchanged, the caller's model comes back."""

    class Touches(Pass):
        name = "test-touch"
        needs_model = True

        def run_model(self, m, ctx):
            m.doc_string = "touched"  # on the copy; reports no change
            return PassResult.unchanged()

    m = model()
    res, out = Touches().apply(m, PassContext())
    assert not res.changed and out is m and m.doc_string != "touched"


class LossyNegToAbs(NegToAbs):
    """The same rewrite, judged as a lossy pass made for speed (so it may be timed)."""

    name = "test-lossy-neg"
    exact = False


def test_bisection_of_a_lossy_pass_lists_its_candidates():
    pm = PassManager(
        [LossyNegToAbs(wrong=("c",))],
        budget=Budget(min_cosine=0.9999),
        measure_candidates=True,
    )
    _, rep = pm.run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and pr.dropped_sites == ["c"]
    cands = pr.details["candidates"]
    assert cands[0]["label"] == "input of the pass" and cands[0]["reference"]
    assert cands[1]["label"] == "all 4 sites" and not cands[1]["ok"]
    assert [c["chosen"] for c in cands].count(True) == 1
    chosen = next(c for c in cands if c["chosen"])
    assert chosen["ok"] and "c" not in chosen["sites"] and len(chosen["sites"]) == 3
    assert all(c["latency_ms"] > 0 for c in cands)
    assert cands[1]["cosine"] < chosen["cosine"]


def test_candidates_are_timed_only_when_asked():
    from onnxopt.candidates import candidate_row
    from onnxopt.verifier import Checked

    row = candidate_row("x", model(), Checked(None, "over budget"), None)
    assert row == {"label": "x", "ok": False, "cosine": None, "accuracy": None, "latency_ms": None}


class CountedSpeedNeg(LossyNegToAbs):
    """A lossy pass made for speed that counts how often the manager applies it."""

    name = "test-speed-neg"
    goal = "speed"

    def __init__(self, wrong=("c",)):
        super().__init__(wrong)
        self.applied = 0

    def run(self, graph, ctx):
        self.applied += 1
        return super().run(graph, ctx)


def _stub_speed(monkeypatch, why, ratio=None):
    from onnxopt.verifier import Checked, Verifier

    def judge_speed(self, candidate, stage, out=None, prior=()):
        out = out if out is not None else Checked(None)
        out.why, out.speed_ratio = why, ratio
        return out

    monkeypatch.setattr(Verifier, "judge_speed", judge_speed)


def test_a_speed_pass_not_faster_with_every_site_is_not_bisected(monkeypatch):
    _stub_speed(monkeypatch, "not faster than its input: 1.0 ms vs 1.0 ms")
    p = CountedSpeedNeg(wrong=("c",))
    out, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "rolled back" and p.applied == 1
    assert pr.reason.startswith("over budget")
    assert "not bisected: with every site rewritten it is not faster" in pr.reason
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model().graph.node]


def test_a_speed_pass_barely_faster_with_every_site_is_not_bisected(monkeypatch):
    _stub_speed(monkeypatch, "", ratio=0.98)
    p = CountedSpeedNeg(wrong=("c",))
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "rolled back" and p.applied == 1
    assert "not bisected: with every site rewritten it runs in 0.98x" in pr.reason
    assert "a subset would gain less than the 5%" in pr.reason


@pytest.mark.parametrize("ratio", [None, 0.8])
def test_a_speed_pass_faster_with_every_site_is_bisected(monkeypatch, ratio):
    _stub_speed(monkeypatch, "", ratio=ratio)
    p = CountedSpeedNeg(wrong=("c",))
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and pr.dropped_sites == ["c"] and p.applied > 1


class NegWithFallbacks(CountedSpeedNeg):
    """A searching lossy pass: its candidate rewrites every Neg ("c" wrongly), and it offers
    the manager its next candidates, each rewriting less (``verified``: the indices of those
    it checked on the verification runs already)."""

    name = "test-fallback-neg"

    def __init__(self, fallbacks, verified=()):
        super().__init__(wrong=("c",))
        self.offered = fallbacks
        self.verified = list(verified)

    def run(self, graph, ctx):
        res = super().run(graph, ctx)
        if ctx.site_filter is None:
            res.fallbacks = [list(f) for f in self.offered]
            res.verified_fallbacks = list(self.verified)
        return res


def test_a_failed_candidate_is_followed_by_the_pass_own_fallbacks(monkeypatch):
    """The first fallback still rewrites "c" and fails; the second passes and is kept, after
    two re-runs of the pass and no bisection (no race before it either)."""
    _stub_speed(monkeypatch, "", ratio=0.8)
    p = NegWithFallbacks([("a", "b", "c"), ("a", "b")])
    out, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and p.applied == 3
    assert pr.rewrites == 2 and sorted(pr.dropped_sites) == ["c", "d"]
    assert "its fallback 2 of 2, 2 of 4 sites, passed" in pr.notes[-1]
    assert not any("bisection" in n for n in pr.notes)
    assert [n.op_type for n in out.graph.node].count("Abs") == 0
    # every fallback fails: rolled back, with no bisection after them
    p = NegWithFallbacks([("a", "c")])
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "rolled back" and p.applied == 2
    assert "its 1 fallbacks failed too" in pr.reason


def test_a_fallback_keeping_less_than_half_the_sites_is_passed_over_for_bisection(monkeypatch):
    """The only fallback rewrites 1 of the 4 sites: bisection runs instead of it, and keeps
    every site but the wrong one."""
    _stub_speed(monkeypatch, "", ratio=0.8)
    p = NegWithFallbacks([("a",)])
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and pr.dropped_sites == ["c"] and pr.rewrites == 3
    assert any("bisection kept 3 of 4 sites" in n for n in pr.notes)
    assert not any("its fallback" in n for n in pr.notes)


def test_a_small_fallback_the_verification_runs_passed_is_the_last_resort(monkeypatch):
    """The same one-site fallback, offered as one the pass checked on the verification runs
    already (the PP-OCRv5 recognizer's floor, its CTC head alone, under an 11-layer choice).
    Where bisection keeps three sites, it runs as before and the fallback is not tried; where
    the candidate is too little faster to bisect (0.98x), the manager verifies the fallback
    rather than rolling the pass back, and keeps it."""
    _stub_speed(monkeypatch, "", ratio=0.8)
    p = NegWithFallbacks([("a",)], verified=[0])
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and pr.dropped_sites == ["c"] and pr.rewrites == 3
    assert not any("its fallback" in n for n in pr.notes)
    _stub_speed(monkeypatch, "", ratio=0.98)
    p = NegWithFallbacks([("a",)], verified=[0])
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    pr = rep.passes[0]
    assert pr.status == "kept" and pr.rewrites == 1 and p.applied == 2
    assert "its fallback 1 of 1, 1 of 4 sites, passed" in pr.notes[-2]
    assert "checked on the verification runs already" in pr.notes[-1]
    p = NegWithFallbacks([("a",)])  # not verified: rolled back, as before
    _, rep = PassManager([p], budget=Budget(min_cosine=0.9999)).run(model(), feeds())
    assert rep.passes[0].status == "rolled back" and p.applied == 1


class SeesCalibration(Scale):
    """Test-only lossy pass that records the labels of the runs it learns from."""

    name = "test-sees"
    seen: list[int] = []

    def run(self, graph, ctx):
        SeesCalibration.seen = [int(x[0]) for x in ctx.feeds.labels]
        return super().run(graph, ctx)


def test_an_exact_pass_after_a_lossy_one_compares_the_same_runs():
    # 12 verification runs, exact ones on 8 of them (spread over the data and put first): the
    # lossy stage's outputs on those 8 are what the exact pass after it is compared with
    f = synthesize(model(), runs=24)
    pm = PassManager([Scale(0.001), NegToAbs(wrong=())], budget=Budget(min_cosine=0.99))
    _, rep = pm.run(model(), f)
    assert len(pm.verifier.exact_feeds) == 8 < len(pm.verifier.feeds) == 12
    assert [p.status for p in rep.passes] == ["kept", "kept"], [p.reason for p in rep.passes]
    assert rep.passes[0].vs_previous.cosine > 0.9999


class SeesTiming(Scale):
    """Test-only lossy pass that records the input it would time models on."""

    name = "test-sees-timing"
    timed: dict | None = None

    def run(self, graph, ctx):
        SeesTiming.timed = ctx.feeds.timing_feed()
        return super().run(graph, ctx)


def test_the_passes_and_the_speed_gate_time_the_same_input():
    # the passes learn from runs 0, 2, 4 and the gate judges on 1, 3, 5: each half's own
    # median run would be another input; both time the median run of all six
    f = synthesize(model(), runs=6)
    pm = PassManager([SeesTiming(0.001)], budget=Budget(min_cosine=0.99))
    pm.run(model(), f)
    assert SeesTiming.timed is f.runs[3]
    assert pm.verifier.exact_feeds.timing_feed() is f.runs[3]


def test_lossy_passes_learn_from_every_other_run_not_the_first_half():
    # data saved by class: the first half would be class 0 alone, judged on class 1 alone
    f = synthesize(model(), runs=6)
    f.labels = [np.array([c, c]) for c in (0, 0, 0, 1, 1, 1)]  # 2 samples a run
    _, rep = PassManager([SeesCalibration(0.001)], budget=Budget(min_cosine=0.99)).run(model(), f)
    assert SeesCalibration.seen == [0, 0, 1]
    assert any("every other one" in n for n in rep.notes)


def test_a_task_metric_scores_the_original_once_and_each_candidate_once():
    """The original's score is its reference and its own result, and the kept candidate's
    score is its final one: no second call on the same outputs (an OCR metric runs a pipeline
    per image)."""
    from dataclasses import replace

    from onnxopt.metric import TaskMetric

    seen: list[int] = []

    def score(runs, labels):
        seen.append(len(runs))
        return float(np.mean([r["y"].mean() for r in runs]))

    data = feeds()
    data = replace(data, labels=[np.array([i]) for i in range(len(data.runs))])
    budget = Budget(min_cosine=None, metric=TaskMetric(score, "t:score"), max_metric_drop=50.0)
    _, rep = PassManager([Scale(0.001)], budget=budget).run(model(), data)
    assert rep.passes[0].status == "kept" and rep.metric_original is not None
    assert len(seen) == 2, seen  # the original; the candidate, which is the final model
    assert rep.metric_final == rep.passes[0].vs_original.metric


def test_a_task_metric_runs_the_original_once_on_every_run(monkeypatch):
    """The metric reads the original's outputs on every run at the start: one pass over them
    also gives the exact runs (a prefix), which are not run a second time in a helper thread."""
    from dataclasses import replace

    from onnxopt.metric import TaskMetric
    from onnxopt.runner import Runner

    original = model()
    ran: list[int] = []
    real = Runner.run

    def spy(self, m, feeds, *a, **k):
        if m is original:
            ran.append(len(feeds))
        return real(self, m, feeds, *a, **k)

    monkeypatch.setattr(Runner, "run", spy)
    data = synthesize(original, runs=12)
    data = replace(data, labels=[np.array([i]) for i in range(len(data.runs))])
    budget = Budget(min_cosine=None, metric=TaskMetric(lambda r, lab: 1.0, "t:one"))
    pm = PassManager([Scale(0.001)], budget=budget, exact_runs=4)
    pm.run(original, data)
    assert ran == [len(pm.verifier.feeds)], ran
    assert pm.verifier.first.outputs == pm.verifier.first.full[:4]


def test_a_lossy_pass_may_ask_the_verifier_early():
    """``ctx.precheck`` gives a lossy pass's first run the manager's verdict on the
    verification runs: "" for a model within the budget, the reason for one outside it; an
    exact pass gets none."""
    seen: dict[str, object] = {}

    class Asks(Pass):
        name = "test-asks"
        exact = False
        tags = ("quantize",)
        needs_model = True

        def run_model(self, m, ctx):
            bad = parser.parse_model(CHAIN.replace("Relu", "Sigmoid"))
            seen["same"], seen["bad"] = ctx.precheck(m), ctx.precheck(bad)
            return PassResult(changed=False)

    class Exact(NegToAbs):
        def run(self, graph, ctx):
            seen["exact"] = ctx.precheck
            return super().run(graph, ctx)

    budget = Budget(min_cosine=None, max_abs_err=0.01)
    PassManager([Exact(wrong=()), Asks()], budget=budget, batch_exact=False).run(model(), feeds())
    assert seen["same"] == "" and "over budget" in seen["bad"] and seen["exact"] is None


def _scaled(m: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``m`` with its output scaled by ``factor`` (a Mul before the output)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    g = out.graph
    g.node[-1].output[0] = "pre_y"
    k = onnx.numpy_helper.from_array(np.full((2, 8), factor, np.float32), "k")
    g.initializer.append(k)
    g.node.append(onnx.helper.make_node("Mul", ["pre_y", "k"], ["y"], name="scale"))
    return out


class Prechecks(Pass):
    """Test-only lossy pass: prechecks a scaled model, then returns it (or another one)."""

    name = "test-prechecks"
    exact = False
    tags = ("quantize",)
    needs_model = True

    def __init__(self, same: bool, turns: list[float] | None = None) -> None:
        self.same, self.turns = same, turns or []

    def run_model(self, m, ctx):
        checked = _scaled(m, 1.0001)
        assert ctx.precheck(checked) == ""
        out = checked if self.same else _scaled(m, 1.0002)
        return PassResult(changed=True, rewrites=1, model=out, timed_rounds=self.turns)


def _count_lossy_verdicts(monkeypatch) -> list[int]:
    from onnxopt.verifier import Verifier

    calls: list[int] = []
    real = Verifier._judge_lossy

    def spy(self, outputs, stage):
        calls.append(len(outputs))
        return real(self, outputs, stage)

    monkeypatch.setattr(Verifier, "_judge_lossy", spy)
    return calls


def test_a_model_the_pass_prechecked_is_not_verified_again(monkeypatch):
    """A pass that returns the very model its precheck passed (its nodes' provenance
    recorded since) is kept on that verdict: the verification runs run once."""
    calls = _count_lossy_verdicts(monkeypatch)
    out, rep = PassManager([Prechecks(same=True)], budget=Budget(min_cosine=0.99)).run(
        model(), feeds()
    )
    pr = rep.passes[0]
    assert pr.status == "kept" and len(calls) == 1
    assert any("the pass returned the model checked there" in n for n in pr.notes)
    assert out.graph.node[-1].op_type == "Mul"
    # the totals reuse the comparison with the original the verification made
    assert rep.final_vs_original.cosine == pytest.approx(1.0, abs=1e-6)


def test_a_model_other_than_the_prechecked_one_is_verified(monkeypatch):
    calls = _count_lossy_verdicts(monkeypatch)
    _, rep = PassManager([Prechecks(same=False)], budget=Budget(min_cosine=0.99)).run(
        model(), feeds()
    )
    pr = rep.passes[0]
    assert pr.status == "kept" and len(calls) == 2
    assert not any("the pass returned the model checked there" in n for n in pr.notes)


def test_the_race_starts_from_the_rounds_the_pass_timed(monkeypatch):
    """A speed pass's own timing of its result (``timed_rounds``, on the feed the race times
    on) reaches the manager's race as its first rounds, for the prechecked model too."""
    seen: list[tuple] = []
    from onnxopt.verifier import Checked, Verifier

    def judge_speed(self, candidate, stage, out=None, prior=()):
        seen.append(tuple(prior))
        return out if out is not None else Checked(None)

    monkeypatch.setattr(Verifier, "judge_speed", judge_speed)

    class Timed(Prechecks):
        goal = "speed"

    for same in (True, False):
        seen.clear()
        _, rep = PassManager(
            [Timed(same=same, turns=[0.5] * 6)], budget=Budget(min_cosine=0.99)
        ).run(model(), feeds())
        assert rep.passes[0].status == "kept" and seen == [(0.5,) * 6]


def test_the_prechecked_verdict_keeps_the_model_returned_with_its_provenance():
    """The same bytes but for the nodes' metadata (the provenance recorded after the pass):
    the verdict holds, and the stage kept is the returned model, metadata and all; another
    stage, or other bytes, get no verdict."""
    from onnxopt.pipeline import _Prechecked
    from onnxopt.verifier import Checked, Stage

    checked_model = _scaled(model(), 1.0001)
    stage = Stage(model(), [], None)
    checked = Checked(Stage(checked_model, [], None))
    pre = _Prechecked.of(checked_model, stage, checked)
    returned = _scaled(model(), 1.0001)
    entry = returned.graph.node[-1].metadata_props.add()
    entry.key, entry.value = "onnxopt.from", '["relu"]'
    assert pre.verdict(_scaled(model(), 1.0002), stage) is None
    assert pre.verdict(returned, Stage(model(), [], None)) is None
    got = pre.verdict(returned, stage)
    assert got is checked and got.stage.model is returned
