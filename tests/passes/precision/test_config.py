"""HalfConfig, Bf16Config and Int4Config: defaults, normalisation and one-line errors that
name the option (and the CLI flag)."""

from __future__ import annotations

import pytest

from onnxopt.errors import OptionError
from onnxopt.passes import registry
from onnxopt.passes.precision import ConvertBf16, ConvertFp16, QuantizeInt4
from onnxopt.passes.precision.blocklist import BLOCK_LIST
from onnxopt.passes.precision.config import Bf16Config, HalfConfig, Int4Config


def test_defaults() -> None:
    assert HalfConfig().keep_io_types and HalfConfig().compute == "all"
    assert Bf16Config().compute == "weights"
    c = Int4Config()
    assert (c.algo, c.block_size, c.symmetric, c.accuracy_level) == ("rtn", 32, False, 0)


def test_lists_are_normalised() -> None:
    c = HalfConfig.from_options({"block_ops": "Softmax, Erf", "allow_ops": ["ReduceMean"]})
    assert c.block_ops == ("Softmax", "Erf") and c.allow_ops == ("ReduceMean",)
    assert Int4Config(exclude="a,b").exclude == ("a", "b")


@pytest.mark.parametrize(
    "cls,options,text",
    [
        (Int4Config, {"algo": "awq"}, "algo must be one of rtn, hqq, gptq, not 'awq'"),
        (Int4Config, {"block_size": 48}, "block_size must be 32, 64 or 128, not 48"),
        (Int4Config, {"block_size": "x"}, "block_size must be an integer, not 'x'"),
        (Int4Config, {"accuracy_level": 5}, "accuracy_level must be in [0, 4], not 5"),
        (Int4Config, {"sensitive_bits": 6}, "sensitive_bits must be 4 or 8, not 6"),
        (Int4Config, {"embedding_bits": 2}, "embedding_bits must be 0, 4 or 8, not 2"),
        (Int4Config, {"max_sensitive": 1.5}, "max_sensitive must be in [0.0, 1.0], not 1.5"),
        (Int4Config, {"calib_runs": 0}, "calib_runs must be >= 1, not 0"),
        (HalfConfig, {"compute": "half"}, "compute must be one of all, weights, not 'half'"),
        (HalfConfig, {"headroom": 0.5}, "headroom must be >= 1.0, not 0.5"),
        (HalfConfig, {"calib_runs": 2.5}, "calib_runs must be an integer, not 2.5"),
    ],
)
def test_bad_values_name_the_option(cls, options, text) -> None:
    with pytest.raises(OptionError) as e:
        cls.from_options(options)
    assert str(e.value) == text


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(OptionError, match="convert-fp16: unknown option 'bits'; known: allow_ops"):
        ConvertFp16.from_options({"bits": 4})


def test_registry_resolves_the_family_with_options() -> None:
    passes = registry.resolve(
        ["convert-bf16", "quantize-int4"], {"quantize-int4": {"algo": "gptq", "block_size": 64}}
    )
    assert isinstance(passes[0], ConvertBf16) and isinstance(passes[1], QuantizeInt4)
    assert passes[1].config.block_size == 64
    assert [p.name for p in registry.resolve(["precision"])] == ["convert-fp16"]


def test_order_int4_before_int8_and_half_last() -> None:
    with pytest.raises(
        OptionError, match="'convert-fp16' cannot run before 'quantize-int4': int4 passes"
    ):
        registry.manager(["convert-fp16", "quantize-int4"], target="onnxruntime")
    with pytest.raises(OptionError, match="cannot run before"):
        registry.manager(["convert-fp16", "cleanup"])
    registry.manager(
        ["cleanup", "quantize-int4", "quantize-dynamic", "convert-fp16"], target="onnxruntime"
    )


def test_every_block_list_entry_has_a_reason() -> None:
    assert {"ReduceMean", "ReduceSum", "Pow", "Exp", "Resize", "Range", "RandomNormal"} <= set(
        BLOCK_LIST
    )
    assert all(len(why) > 20 for why in BLOCK_LIST.values())
