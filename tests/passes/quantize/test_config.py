"""QuantizeConfig and DynamicQuantizeConfig: defaults, normalized values, and one-line errors
that name the option."""

from __future__ import annotations

import pytest

from onnxopt.errors import OptionError
from onnxopt.passes.quantize import QuantizeDynamic, QuantizeInt8
from onnxopt.passes.quantize.calibrate import MinMax, make_calibrator
from onnxopt.passes.quantize.config import DynamicQuantizeConfig, QuantizeConfig


def test_defaults_are_the_pass_defaults():
    c = QuantizeInt8().config
    assert c == QuantizeConfig() and c.percentile == 99.99 and c.calibrator == "percentile"
    assert str(make_calibrator(c.calibrator, c.percentile)) == "percentile(99.99)"
    assert QuantizeConfig.defaults()["percentile"] == 99.99
    assert QuantizeDynamic().config == DynamicQuantizeConfig()


def test_values_are_normalized():
    c = QuantizeConfig.from_options(
        {
            "exclude": "Conv,mm1",
            "smooth": True,
            "percentile": "99.9",
            "calib_batch": 4.0,
            "calibrator": MinMax(),
        }
    )
    assert c.exclude == ("Conv", "mm1") and c.smooth == 0.5 and c.percentile == 99.9
    assert c.calib_batch == 4 and str(make_calibrator(c.calibrator)) == "minmax"
    assert QuantizeConfig(smooth=False).smooth is None
    assert QuantizeConfig(exclude=["a", "b"]).exclude == ("a", "b")
    assert DynamicQuantizeConfig.from_options({"exclude": "x,y"}).exclude == ("x", "y")
    assert QuantizeConfig().replace(per_channel=False).per_channel is False


def test_unknown_key_is_named():
    with pytest.raises(OptionError, match="unknown option 'percentil'; known: .*percentile"):
        QuantizeConfig.from_options({"percentil": 1})
    with pytest.raises(OptionError, match="quantize-dynamic: unknown option 'min_size'"):
        QuantizeDynamic.from_options({"min_size": 0})


@pytest.mark.parametrize(
    "options,option,message",
    [
        ({"percentile": 120}, "percentile", "percentile must be in (50, 100], not 120.0"),
        (
            {"calibrator": "median"},
            "calibrator",
            "calibrator must be one of minmax, percentile, entropy, mse, not 'median'",
        ),
        (
            {"smoothed_calibrator": "max"},
            "smoothed_calibrator",
            "smoothed_calibrator must be one of minmax, percentile, entropy, mse, not 'max'",
        ),
        (
            {"activations": "int4"},
            "activations",
            "activations must be uint8 or int8-sym, not 'int4'",
        ),
        (
            {"elementwise": "some"},
            "elementwise",
            "elementwise must be int8-inputs or all, not 'some'",
        ),
        ({"smooth": 2.0}, "smooth", "smooth must be in [0, 1] (0.5 is typical), not 2.0"),
        ({"smooth": "x"}, "smooth", "smooth must be a number, not 'x'"),
        ({"bins": 10}, "bins", "bins must be a multiple of 4, not 10"),
        ({"fallback_runs": 0}, "fallback_runs", "fallback_runs must be >= 1, not 0"),
        (
            {"reduce_range": "yes"},
            "reduce_range",
            "reduce_range must be 'auto' or a boolean, not 'yes'",
        ),
    ],
)
def test_bad_values_name_the_option(options, option, message):
    with pytest.raises(OptionError) as e:
        QuantizeInt8.from_options(options)
    assert str(e.value) == f"quantize-int8: {message}"
    assert e.value.__cause__.option == option  # what the CLI turns into its flag
