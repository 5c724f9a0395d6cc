"""MergeConfig: the merge options, typed, completed and checked (one-line errors naming the
option)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.config import MergeConfig
from onnxopt.passes.ensemble.merge import merge
from tests.passes.ensemble.models import linear


def test_unknown_key_names_the_option_and_the_known_ones():
    with pytest.raises(OptionError, match=r"^merge: unknown option 'metta'; known: .*meta") as e:
        MergeConfig.from_options({"metta": "ridge"})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "options,words",
    [
        ({"mode": "median"}, "unknown merge mode 'median'"),
        ({"meta": "foo"}, "--meta 'foo'"),
        ({"on": "scores"}, "--on 'scores'"),
        ({"mode": "cascade", "threshold": 1.5}, "--threshold 1.5"),
        ({"mode": "cascade"}, "exactly one of --threshold or --target-accuracy"),
        ({"mode": "weighted"}, "needs --weights"),
        ({"mode": "weighted", "weights": [0.5], "fit_data": "x.npz"}, "either --weights or"),
        ({"mode": "average", "io_map": ["a.y:b.x"]}, "--io-map is for --mode serial"),
        ({"mode": "stack"}, "needs labeled data to fit"),
        ({"fit_fraction": 1.0}, "fit_fraction"),
    ],
)
def test_bad_values_are_one_line_naming_the_option(options, words):
    with pytest.raises(OptionError) as e:
        MergeConfig.from_options(options)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_defaults_are_completed_and_none_means_default():
    cfg = MergeConfig.from_options({"mode": "stack", "data": "d.npz", "meta": None, "on": None})
    assert cfg.meta == "logistic" and cfg.cse and cfg.verify and cfg.runs == 4
    assert cfg.combine_on == "probs"  # stack combines probabilities by default
    assert MergeConfig(on="logits").combine_on == "outputs"
    assert cfg.needs_fit and cfg.fit_source == "d.npz"
    assert MergeConfig.from_options({"mode": "weighted", "weights": [1, 2]}).weights == (1, 2)


def test_merge_takes_a_config_or_keywords_not_both():
    cfg = MergeConfig(mode="max")
    merged, rep = merge([linear(0), linear(1)], config=cfg)
    assert rep.mode == "max" and rep.verified
    with pytest.raises(TypeError, match="either as a MergeConfig or as keywords"):
        merge([linear(0), linear(1)], config=cfg, on="probs")


def test_replace_validates_and_keeps_data_objects():
    from onnxopt.data import Feeds

    feeds = Feeds([{"x": np.ones((1, 4), np.float32)}], labels=[np.array([0])])
    cfg = MergeConfig(mode="stack", data=feeds).replace(meta="ridge")
    assert cfg.meta == "ridge" and cfg.data is feeds
    with pytest.raises(OptionError, match="--meta 'lasso'"):
        cfg.replace(meta="lasso")
