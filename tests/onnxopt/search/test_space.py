"""The search space: defaults, recipes (TOML, YAML, dotted keys), validation before any trial
(unknown pass or option, bad value, empty range, ordering), sampling and normalization."""

from __future__ import annotations

import pytest

from onnxopt.errors import OptionError
from onnxopt.search.recipe import build_space, read_recipe
from onnxopt.search.space import Settings


def _labels(space):
    return [t.label() for t in space.trials()]


def test_defaults_cover_prune_and_int8_with_the_baseline():
    space = build_space()
    assert [s.name for s in space.stages] == ["exact", "prune", "precision"]
    labels = _labels(space)
    assert labels[0] == "exact only"  # the baseline: every lossy stage off
    assert any(x.startswith("prune(ratio=0.5) + quantize-int8(calibrator=entropy") for x in labels)
    # percentile's two values only with the percentile calibrator: 4 calibrations x 2 layouts,
    # and the registered precision passes the target allows (convert-fp16, convert-bf16; not
    # quantize-int4, whose MatMulNBits is an onnxruntime contrib op: every trial would fail)
    assert {"convert-fp16", "convert-bf16"} <= set(labels)
    assert not any("int4" in x for x in labels)
    assert len(labels) == space.size == 4 * (1 + 4 * 2 + 2)
    assert "quantize-int4" in _labels(build_space(target="onnxruntime"))
    assert "quantize-int8(calibrator=percentile, per_channel=True, percentile=99.9)" in labels
    assert "quantize-int8(calibrator=entropy, per_channel=True)" in labels  # percentile unread
    exact = space.stages[0].choices[0]
    assert exact.exact and "fold-batchnorm" in exact.passes and "cse" in exact.passes


def test_recipe_replaces_a_pass_ranges_and_normalizes_values(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[search]\nprecision = ["fp32", "int8"]\ntrials = 5\n'
        '[prune]\nratio = [0, 0.5]\nround_to = [1, "auto"]\n'
        '[quantize]\ncalibrator = "mse"\nsmooth = ["none", 0.5]\n'
    )
    space = build_space(read_recipe(path))
    assert space.settings.trials == 5
    prune = space.stages[1]
    assert prune.choices[0] is None  # ratio 0: no pruning
    steps = [c for c in prune.choices if c is not None]
    assert [dict(s.options[0][1]) for s in steps] == [
        {"ratio": 0.5, "round_to": 1},
        {"ratio": 0.5, "round_to": "auto"},
    ]
    quant = [c for c in space.stages[2].choices if c is not None]
    assert {dict(q.options[0][1])["smooth"] for q in quant} == {None, 0.5}
    assert len(space.trials()) == 5  # sampled: 3 * 3 = 9 combinations


def test_yaml_and_dotted_keys(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("prune.ratio: [0, 0.3]\nprecision: [fp32]\n")
    space = build_space(read_recipe(path))
    assert _labels(space) == ["exact only", "prune(ratio=0.3)"]


def test_generic_pickup_of_any_pass_and_option():
    """Any registered pass and any field of its config_class, through the registry only."""
    space = build_space(
        {
            "fold-constants": {"max_bytes": [1024, 2048]},
            "quantize-dynamic": {"per_channel": [True]},
            "search": {"precision": ["fp32", "quantize-dynamic"]},
        }
    )
    assert len(space.stages[0].choices) == 2  # two exact batches
    assert _labels(space)[-1].startswith("prune(ratio=0.7) + quantize-dynamic(per_channel=True)")


def test_sampling_is_seeded_and_keeps_the_baseline():
    a = build_space(None, trials=6, seed=1).trials()
    b = build_space(None, trials=6, seed=1).trials()
    c = build_space(None, trials=6, seed=2).trials()
    assert [t.id for t in a] == [t.id for t in b] != [t.id for t in c]
    assert a[0].label() == c[0].label() == "exact only"


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"nosuchpass": {"x": [1]}}, "unknown pass 'nosuchpass'"),
        ({"prune": {"nosuchoption": [1]}}, "prune: unknown option 'nosuchoption'"),
        ({"prune": {"ratio": []}}, "prune.ratio: empty range"),
        ({"prune": {"ratio": [0.3, 1.5]}}, "ratio must be in [0, 1), not 1.5"),
        ({"search": {"pipeline": ["quantize", "prune"]}}, "cannot run before 'prune'"),
        ({"search": {"precision": ["int3"]}}, "precision 'int3': no registered pass"),
        ({"search": {"precision": ["fp32"]}, "quantize": {"calibrator": ["mse"]}}, "never runs"),
        ({"search": {"trails": 3}}, "unknown setting 'trails'"),
        ({"search": {"eta": 1}}, "eta"),
        ({"prune": 0.3}, "must be a table"),
    ],
)
def test_bad_recipes_are_one_line_errors(recipe, message):
    with pytest.raises(OptionError) as e:
        build_space(recipe)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_recipe_files_that_do_not_parse(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[prune\nratio = 1")
    with pytest.raises(OptionError, match="cannot parse"):
        read_recipe(bad)
    with pytest.raises(OptionError, match="no such file"):
        read_recipe(tmp_path / "missing.toml")
    txt = tmp_path / "r.txt"
    txt.write_text("x")
    with pytest.raises(OptionError, match=r"\.toml"):
        read_recipe(txt)


def test_settings_validate():
    assert Settings().objective == "fastest"
    with pytest.raises(OptionError, match="objective"):
        Settings(objective="cheapest")


def test_a_precision_the_target_cannot_run_is_refused_before_the_search():
    """Named in a recipe under ``--target onnx``, int4 (an onnxruntime contrib op) is a
    one-line error naming the flag that allows it, not a column of failed trials."""
    with pytest.raises(OptionError, match="add --target onnxruntime"):
        build_space({"search": {"precision": ["fp32", "int4"]}})
    space = build_space({"search": {"precision": ["fp32", "int4"]}}, target="onnxruntime")
    assert [t.label() for t in space.trials()][-1].endswith("quantize-int4")
