"""PruneConfig: the defaults, the ``global`` alias, None meaning the default, and one-line
errors that name the option."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.prune import Prune
from onnxopt.passes.prune.config import PruneConfig

from . import models as pm
from .support import prune


def test_bad_options_raise():
    with pytest.raises(OptionError, match="ratio"):
        prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), ratio=1.5)
    with pytest.raises(OptionError, match="importance"):
        prune(pm.residual_block(), np.ones([2, 4, 8, 8], np.float32), importance="magic")


def test_defaults_alias_and_none():
    c = PruneConfig()
    assert (c.ratio, c.target_flops, c.global_rank, c.round_to, c.keep) == (
        0.3,
        None,
        False,
        "auto",
        (),
    )
    c = PruneConfig.from_options(
        {"global": True, "keep": "c2", "ratio": None, "round_to": "4", "max_rows": 512.0}
    )
    assert c.global_rank and c.keep == ("c2",) and c.ratio == 0.3
    assert c.round_to == 4 and c.max_rows == 512
    assert c.replace(ratio=0.5).ratio == 0.5 and c.replace(ratio=0.5).global_rank
    assert Prune.from_options({"target_flops": 0.5}).config.target_flops == 0.5


def test_unknown_option_names_it():
    with pytest.raises(OptionError, match="prune: unknown option 'rati'; known: .*ratio"):
        Prune.from_options({"rati": 0.5})


@pytest.mark.parametrize(
    "options,option,message",
    [
        ({"ratio": 1.5}, "ratio", "ratio must be in [0, 1), not 1.5"),
        ({"target_flops": 0}, "target_flops", "target_flops must be in (0, 1], not 0.0"),
        ({"max_ratio": 1}, "max_ratio", "max_ratio must be in (0, 1), not 1.0"),
        (
            {"importance": "magic"},
            "importance",
            "importance must be one of l1, l2, bn-scale, activation, not 'magic'",
        ),
        ({"round_to": 0}, "round_to", "round_to must be 'auto' or an integer >= 1, not 0"),
        ({"alpha": -1}, "alpha", "alpha must be >= 0, not -1.0"),
        ({"max_samples": 0}, "max_samples", "max_samples must be >= 1, not 0"),
        ({"ratio": "half"}, "ratio", "ratio must be a number, not 'half'"),
    ],
)
def test_bad_values_name_the_option(options, option, message):
    with pytest.raises(OptionError) as e:
        Prune.from_options(options)
    assert str(e.value) == f"prune: {message}" and "\n" not in str(e.value)
    assert e.value.__cause__.option == option  # what the CLI turns into its flag
