"""Typed options of the precision passes: :class:`HalfConfig` (``convert-fp16``),
:class:`Bf16Config` (``convert-bf16``) and :class:`Int4Config` (``quantize-int4``).

The field defaults are the family's defaults, defined here and nowhere else; ``__post_init__``
validates them with an :class:`~onnxopt.errors.OptionError` that names the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnxopt.contract import PassConfig
from onnxopt.errors import OptionError

invalid = OptionError.invalid

COMPUTE = ("all", "weights")
ALGOS = ("rtn", "hqq", "gptq")
BLOCK_SIZES = (32, 64, 128)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def names(value: Any) -> tuple[str, ...]:
    """Node names or op types: a comma-separated string or a sequence."""
    if isinstance(value, str):
        return tuple(x.strip() for x in value.split(",") if x.strip())
    return tuple(value)


def _set(config: PassConfig, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)  # normalizing a frozen dataclass's own field


def _number(config: PassConfig, name: str, kind: type, low: float, high: float | None = None):
    value = getattr(config, name)
    if isinstance(value, bool):
        raise invalid(name, value, "must be a number")
    try:
        number = kind(value)
    except (TypeError, ValueError) as e:
        raise invalid(name, value, f"must be a{'n integer' if kind is int else ' number'}") from e
    if kind is int and number != value and not isinstance(value, str):
        raise invalid(name, value, "must be an integer")
    if number < low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise invalid(name, value, f"must be {bound}")
    _set(config, name, number)


@dataclass(frozen=True)
class HalfConfig(PassConfig):
    """Options of ``convert-fp16`` (and, with other defaults, ``convert-bf16``).

    Attributes:
        keep_io_types: the graph's inputs and outputs stay float32 (Casts at the boundary).
        compute: ``all``: float tensors, ops and weights in half precision; ``weights``: only
            the weights are stored in half precision, each read through a Cast to float32
            (half the file, float32 arithmetic).
        block_ops: op types kept in float32 on top of the default block list
            (:data:`.blocklist.BLOCK_LIST`).
        allow_ops: op types taken off the default block list (for a runtime whose half
            kernels accumulate in float32).
        block_nodes: node names kept in float32.
        overflow_check: run the float32 model on the calibration data and keep in float32 the
            nodes whose tensors leave the half type's range.
        headroom: a tensor counts as overflowing above ``max_finite / headroom`` (the data only
            samples the range).
        calib_runs: calibration runs the ranges are measured on.
        probe_mb: megabytes of intermediate tensors per run held at once while measuring.
        min_weight_elements: ``compute="weights"``: smaller initializers stay float32.
    """

    keep_io_types: bool = True
    compute: str = "all"
    block_ops: tuple[str, ...] = ()
    allow_ops: tuple[str, ...] = ()
    block_nodes: tuple[str, ...] = ()
    overflow_check: bool = True
    headroom: float = 2.0
    calib_runs: int = 8
    probe_mb: int = 256
    min_weight_elements: int = 256

    def __post_init__(self) -> None:
        if self.compute not in COMPUTE:
            raise invalid("compute", self.compute, f"must be one of {', '.join(COMPUTE)}")
        for key in ("block_ops", "allow_ops", "block_nodes"):
            _set(self, key, names(getattr(self, key)))
        for flag in ("keep_io_types", "overflow_check"):
            _set(self, flag, bool(getattr(self, flag)))
        _number(self, "headroom", float, 1.0)
        for count in ("calib_runs", "probe_mb"):
            _number(self, count, int, 1)
        _number(self, "min_weight_elements", int, 1)


@dataclass(frozen=True)
class Bf16Config(HalfConfig):
    """Options of ``convert-bf16``: :class:`HalfConfig` with the weights in bfloat16 by default
    (``compute="weights"``): onnxruntime's CPU provider has no bfloat16 kernels for arithmetic
    (Add, MatMul, Conv, ...), so a fully bfloat16 graph runs only on GPU providers and cannot
    be verified here. ``compute="all"`` writes it anyway (for the Python API)."""

    compute: str = "weights"


@dataclass(frozen=True)
class Int4Config(PassConfig):
    """Options of ``quantize-int4`` (weight-only ``com.microsoft.MatMulNBits``).

    Attributes:
        algo: ``rtn`` (round to nearest), ``hqq`` (data-free error-minimising search of the
            scales and zero points) or ``gptq`` (calibration data, a Hessian per layer).
        block_size: weights per scale along K: 32, 64 or 128.
        symmetric: no zero points (MatMulNBits' default of 8); asymmetric otherwise.
        accuracy_level: MatMulNBits' ``accuracy_level`` (0: unset; 4: int8 activations inside
            the kernel, faster on CPU, less accurate).
        sensitive_bits: bits of the layers the sensitivity analysis marks (8; 4: no mixing).
        max_sensitive: at most this share of the layers gets ``sensitive_bits``.
        sensitivity: a layer is sensitive when its 4-bit error (relative output error on the
            calibration data) exceeds this many times the median layer's.
        exclude: node names or op types left in float32.
        damp: GPTQ's dampening of the Hessian (share of its mean diagonal).
        calib_runs: calibration runs GPTQ's Hessians are accumulated on (RTN and HQQ read at
            most 8, for the per-layer errors and the sensitivity analysis).
        probe_mb: megabytes of activations and Hessians held at once.
        hqq_iters: iterations of the half-quadratic solver.
        fuse_bias: a constant bias Add after the MatMul becomes MatMulNBits' bias input.
        embedding_bits: Gathers of constant tables (embeddings) become ``GatherBlockQuantized``
            with this many bits (8 by default: a 4-bit table costs far more accuracy than a
            4-bit MatMul); 0 leaves them float32.
    """

    algo: str = "rtn"
    block_size: int = 32
    symmetric: bool = False
    accuracy_level: int = 0
    sensitive_bits: int = 8
    max_sensitive: float = 0.1
    sensitivity: float = 3.0
    exclude: tuple[str, ...] = ()
    damp: float = 0.01
    calib_runs: int = 32
    probe_mb: int = 256
    hqq_iters: int = 20
    fuse_bias: bool = True
    embedding_bits: int = 8

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise invalid("algo", self.algo, f"must be one of {', '.join(ALGOS)}")
        _number(self, "block_size", int, 1)
        if self.block_size not in BLOCK_SIZES:
            raise invalid("block_size", self.block_size, "must be 32, 64 or 128")
        _number(self, "accuracy_level", int, 0, 4)
        _number(self, "sensitive_bits", int, 4)
        if self.sensitive_bits not in (4, 8):
            raise invalid("sensitive_bits", self.sensitive_bits, "must be 4 or 8")
        _number(self, "max_sensitive", float, 0.0, 1.0)
        _number(self, "sensitivity", float, 1.0)
        _number(self, "damp", float, 0.0, 1.0)
        for count in ("calib_runs", "probe_mb", "hqq_iters"):
            _number(self, count, int, 1)
        _number(self, "embedding_bits", int, 0)
        if self.embedding_bits not in (0, 4, 8):
            raise invalid("embedding_bits", self.embedding_bits, "must be 0, 4 or 8")
        for flag in ("symmetric", "fuse_bias"):
            _set(self, flag, bool(getattr(self, flag)))
        _set(self, "exclude", names(self.exclude))
