"""The ``distill`` pass: distills against the pipeline's original, declines without a real
student or data, and reports errors as its own."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: threads only contend on these tiny graphs

from onnxopt.contract import PassContext, PassError
from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.passes.distill import PASSES
from onnxopt.passes.distill.distill import Distill
from onnxopt.synth import synthesize
from tests.passes.distill.models import FAST, data, mlp


def test_pass_distills_against_the_original() -> None:
    teacher, student = mlp(32, seed=1), mlp(6, seed=2)
    feeds = Feeds([data(320)], source="test")
    ctx = PassContext(feeds=feeds, original=teacher)
    res = Distill.from_options(FAST).run_model(student, ctx)
    assert res.changed and res.model is not None and res.rewrites == 4
    assert any("held-out loss" in n for n in res.notes)
    assert PASSES == [Distill] and Distill.tags == ("distill",) and not Distill.exact


def test_pass_declines_without_a_real_student_or_data() -> None:
    teacher = mlp(32, seed=1)
    real = Feeds([data(64)], source="test")
    same = Distill().run_model(teacher, PassContext(feeds=real, original=teacher))
    assert not same.changed and "student is the original" in same.notes[0]
    fake = synthesize(teacher, shapes={"x": [4, 16]}, runs=2)
    synth = Distill().run_model(mlp(6, 2), PassContext(feeds=fake, original=teacher))
    assert not synth.changed and "synthesized" in synth.notes[0]


def test_pass_allow_synthetic_distills_on_synthesized_inputs() -> None:
    teacher = mlp(32, seed=1)
    fake = synthesize(teacher, shapes={"x": [32, 16]}, runs=4)
    res = Distill.from_options({"allow_synthetic": True, "epochs": 1}).run_model(
        mlp(6, 2), PassContext(feeds=fake, original=teacher)
    )
    assert not any("synthesized" in n for n in res.notes)
    assert any("held-out loss" in n for n in res.notes)


def test_pass_reports_bad_options_as_pass_errors() -> None:
    from onnxopt.passes.registry import resolve

    # a bad value is refused when the pipeline is configured, before anything runs
    with pytest.raises(OptionError, match="distill: --loss"):
        resolve(["distill"], {"distill": {"loss": "hinge"}})
    # options the configuration accepts but the run cannot use are the pass's error
    ctx = PassContext(feeds=Feeds([data(64)]), original=mlp(32, 1))
    with pytest.raises(PassError, match="distill: .*labels"):
        Distill.from_options({"alpha": 0.5, "epochs": 1}).run_model(mlp(6, 2), ctx)


def test_without_torch_the_pass_says_how_to_install_it(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a)
    )
    teacher = mlp(32, seed=1)
    res = Distill().run_model(mlp(8, 2), PassContext(feeds=Feeds([data(64)]), original=teacher))
    assert not res.changed and res.notes == [
        "needs PyTorch, which is not installed: pip install torch==2.13.0"
    ]
