"""DistillConfig: settings typed and checked (one-line errors naming the option)."""

from __future__ import annotations

import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.distill.config import DistillConfig


def test_bad_options_are_rejected() -> None:
    with pytest.raises(OptionError, match="--loss"):
        DistillConfig.from_options({"loss": "hinge"})
    with pytest.raises(OptionError, match="unknown option"):
        DistillConfig.from_options({"epoch": 3})


@pytest.mark.parametrize(
    "options,words",
    [
        ({"loss": "hinge"}, "distill: --loss must be one of auto, kl, mse, cosine, not 'hinge'"),
        ({"epoch": 3}, "distill: unknown option 'epoch'; known: "),
        ({"alpha": 2.0}, "distill: --alpha must be in [0, 1], not 2.0"),
        ({"bn_mode": "frozen"}, "distill: bn_mode must be 'eval' or 'train'"),
        ({"features": ["r"]}, "--feature 'r': expected TEACHER_TENSOR:STUDENT_TENSOR"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(options, words) -> None:
    with pytest.raises(OptionError) as e:
        DistillConfig.from_options(options)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_features_are_pairs_from_strings_or_pairs() -> None:
    assert DistillConfig.from_options({"features": "a:b"}).features == (("a", "b"),)
    assert DistillConfig.from_options({"features": ["a:b", ("c", "d")]}).features == (
        ("a", "b"),
        ("c", "d"),
    )
    assert DistillConfig(features=[["r", "r"]]).features == (("r", "r"),)


def test_defaults_and_allow_synthetic() -> None:
    cfg = DistillConfig()
    assert cfg.epochs == 30 and cfg.loss == "auto" and cfg.features == ()
    assert not cfg.allow_synthetic
    assert DistillConfig.from_options({"allow_synthetic": True}).allow_synthetic
