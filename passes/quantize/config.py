"""Typed options of the quantize passes: :class:`QuantizeConfig` (quantize-int8) and
:class:`DynamicQuantizeConfig` (quantize-dynamic).

The field defaults are the family's defaults, defined here and nowhere else. Validation runs in
``__post_init__``: a bad value is an :class:`~onnxopt.errors.OptionError` whose message names the
option (``percentile must be in (50, 100], not 120.0``) and which carries ``option``, ``value``
and ``why`` so the CLI can name its own flag instead (``--percentile 120.0: must be in (50,
100]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnxopt.contract import PassConfig
from onnxopt.errors import OptionError

from .calibrate import CALIBRATORS, DEFAULT_BINS

ACTIVATIONS = ("uint8", "int8-sym")
ELEMENTWISE = ("int8-inputs", "all")
BIAS_CORRECTION = ("off", "empirical", "data-free")
ROUNDING = ("auto", "nearest", "adaround", "gptq")
EQUALIZE_CLIP = ("skip", "relu")
#: what ``smooth=True`` means: SmoothQuant's usual migration strength
SMOOTH_ALPHA = 0.5


invalid = OptionError.invalid


def names(value: Any) -> tuple[str, ...]:
    """Node names or op types: a comma-separated string or a sequence."""
    if isinstance(value, str):
        return tuple(x for x in value.split(",") if x)
    return tuple(value)


def _set(config: PassConfig, name: str, value: Any) -> None:
    object.__setattr__(config, name, value)  # normalizing a frozen dataclass's own field


def _number(config: PassConfig, name: str, kind: type, low: float | None = None) -> None:
    """Coerce field ``name`` to ``kind`` (``float`` or ``int``), at least ``low`` if given."""
    value = getattr(config, name)
    try:
        number = kind(value)
    except (TypeError, ValueError) as e:
        raise invalid(name, value, f"must be a{'n integer' if kind is int else ' number'}") from e
    if low is not None and number < low:
        raise invalid(name, value, f"must be >= {low}")
    _set(config, name, number)


def _reduce_range(config: PassConfig) -> None:
    value = config.reduce_range  # type: ignore[attr-defined]
    if isinstance(value, str):
        if value != "auto":
            raise invalid("reduce_range", value, "must be 'auto' or a boolean")
    else:
        _set(config, "reduce_range", bool(value))


@dataclass(frozen=True)
class QuantizeConfig(PassConfig):
    """Options of ``quantize-int8`` (static int8 QDQ quantization).

    Attributes:
        calibrator: how statistics become a range: ``minmax``, ``percentile``, ``entropy``
            (alias ``kl``), ``mse`` or a :class:`.calibrate.Calibrator` instance.
        percentile: the percentile of ``calibrator="percentile"``, in (50, 100].
        per_channel: one weight scale per output channel (from opset 13) instead of per tensor.
        activations: ``uint8`` (asymmetric, fastest on CPU) or ``int8-sym`` (TensorRT).
        exclude: node names or op types kept in float (a string is split at commas).
        reduce_range: 7-bit weights; ``"auto"``: on x86 without VNNI (see
            :func:`.qdq.resolve_reduce_range`).
        fallback: with a budget, return the most sensitive sites to float until it holds.
        quantize_residual: also quantize an Add/Mul feeding LayerNorm/Softmax (the residual
            stream of a transformer).
        calib_batch: runs concatenated per onnxruntime call while calibrating (dynamic batch).
        fallback_runs: runs the fallback checks the budget on.
        sensitivity_runs: runs each site's sensitivity is measured on (spread over the data,
            :meth:`onnxopt.data.Feeds.subset`, as are ``smooth_runs``).
        embeddings: quantize Gathers of constant tables (int8 embeddings).
        bins: histogram bins per calibrated tensor (a multiple of 4).
        elementwise: ``int8-inputs``: an element-wise site only when one of its inputs is int8
            already; ``all``: every eligible one (see :mod:`.placement`).
        smooth: SmoothQuant alpha in [0, 1] for MatMul inputs (see :mod:`.smooth`); ``True``
            means ``SMOOTH_ALPHA``; ``"auto"``: one alpha per MatMul input, chosen on the
            calibration data, on graphs with attention (:mod:`.transformer`); ``None`` or
            ``False``: off.
        smooth_runs: runs the smoothing statistics are read on.
        smoothed_calibrator: the calibrator of the MatMul inputs smoothing scaled (None: the
            same as ``calibrator``). ``minmax`` by default: a smoothing strength is chosen for
            the input's full range (SmoothQuant's max-based scale; :mod:`.transformer`), and
            the outlier channels it leaves carry what the layer needs. Clipped at the 99.99th
            percentile, all-MiniLM-L6-v2 with its 36 linear layers in int8 read cosine 0.944
            against fp32; at their full range, 0.998.
        linear_calibrator: the calibrator of the other activation inputs of MatMul and Gemm
            layers with a constant weight (None: the same as ``calibrator``). ``minmax`` by
            default, for the same reason: a linear layer's rare large inputs carry what its
            outputs need. PP-OCRv5's CTC head (120 inputs, 18,385 classes) with its input
            clipped at the 99.99th percentile (12.5 of 17.3) read one held-out crop of 66
            differently; at its full range, none.
        equalize: cross-layer equalization before rounding (:mod:`.equalize`; exact in float).
        equalize_clip: a Clip between two layers: ``skip`` the pair, or treat it as ``relu``
            (its upper bound dropped: lossy).
        bias_correction: ``empirical`` (the mean output error measured on calibration data),
            ``data-free`` (from BatchNormalization statistics) or ``off``
            (:mod:`.bias_correction`).
        rounding: ``nearest``, ``adaround`` (learned rounding, :mod:`.adaround`) or ``gptq``
            (rounding with error feedback, :mod:`.gptq`, wide layers too; applied after the
            mixed-precision search to the layers it keeps int8, which it judged rounded to
            nearest); ``auto`` (the default): ``gptq`` on a graph with attention (a
            transformer default, as ``smooth``'s), else ``nearest`` (all-MiniLM-L6-v2's
            held-out cosine 0.9977 → 0.9979 with every layer int8; on CNNs it bought nothing:
            ``benchmarks/rounding.py``).
        adaround_iterations: optimization steps per layer.
        seed: seeds the row sampling of learned rounding and smoothing (results repeat).
        latency_aware: measure each layer's int8 and float time on this CPU and leave in
            float what int8 makes slower (:mod:`.latency`).
        dynamic_fallback: a MatMul whose static int8 loses to dynamic int8 may fall back to
            dynamic int8 before float (:mod:`.mixed`).
        transformer: ``auto`` (detect attention), ``True`` or ``False``: the transformer-aware
            defaults (:mod:`.transformer`).
    """

    calibrator: Any = "percentile"
    percentile: float = 99.99
    per_channel: bool = True
    activations: str = "uint8"
    exclude: tuple[str, ...] = ()
    reduce_range: bool | str = "auto"
    fallback: bool = True
    quantize_residual: bool = False
    calib_batch: int = 8
    fallback_runs: int = 64
    sensitivity_runs: int = 16
    embeddings: bool = True
    bins: int = DEFAULT_BINS
    elementwise: str = "int8-inputs"
    smooth: float | str | None = "auto"
    smooth_runs: int = 64
    smoothed_calibrator: Any = "minmax"
    linear_calibrator: Any = "minmax"
    equalize: bool = False
    equalize_clip: str = "skip"
    bias_correction: str = "empirical"
    rounding: str = "auto"
    adaround_iterations: int = 500
    seed: int = 0
    latency_aware: bool = True
    dynamic_fallback: bool = True
    transformer: bool | str = "auto"

    def __post_init__(self) -> None:
        for option in ("calibrator", "smoothed_calibrator", "linear_calibrator"):
            cal = getattr(self, option)
            if option != "calibrator" and cal is None:
                continue
            if not hasattr(cal, "range") and str(cal).lower() not in (*CALIBRATORS, "kl"):
                raise invalid(option, cal, f"must be one of {', '.join(CALIBRATORS)}")
        _number(self, "percentile", float)
        if not 50.0 < self.percentile <= 100.0:
            raise invalid("percentile", self.percentile, "must be in (50, 100]")
        if self.activations not in ACTIVATIONS:
            raise invalid("activations", self.activations, "must be uint8 or int8-sym")
        if self.elementwise not in ELEMENTWISE:
            raise invalid("elementwise", self.elementwise, "must be int8-inputs or all")
        _set(self, "exclude", names(self.exclude))
        _reduce_range(self)
        for flag in (
            "per_channel",
            "fallback",
            "quantize_residual",
            "embeddings",
            "equalize",
            "latency_aware",
            "dynamic_fallback",
        ):
            _set(self, flag, bool(getattr(self, flag)))
        for count in (
            "calib_batch",
            "fallback_runs",
            "sensitivity_runs",
            "smooth_runs",
            "adaround_iterations",
        ):
            _number(self, count, int, 1)
        _number(self, "seed", int, 0)
        for option, allowed in (
            ("bias_correction", BIAS_CORRECTION),
            ("rounding", ROUNDING),
            ("equalize_clip", EQUALIZE_CLIP),
        ):
            if getattr(self, option) not in allowed:
                raise invalid(option, getattr(self, option), f"must be one of {', '.join(allowed)}")
        if self.transformer not in (True, False, "auto"):
            raise invalid("transformer", self.transformer, "must be auto, true or false")
        _number(self, "bins", int, 4)
        if self.bins % 4:
            raise invalid("bins", self.bins, "must be a multiple of 4")
        self._check_smooth()

    def _check_smooth(self) -> None:
        if self.smooth == "auto":
            return
        if self.smooth is True:
            _set(self, "smooth", SMOOTH_ALPHA)
        elif self.smooth is False:
            _set(self, "smooth", None)
        if self.smooth is None:
            return
        _number(self, "smooth", float)
        if not 0.0 <= self.smooth <= 1.0:
            raise invalid("smooth", self.smooth, "must be in [0, 1] (0.5 is typical)")


@dataclass(frozen=True)
class DynamicQuantizeConfig(PassConfig):
    """Options of ``quantize-dynamic`` (int8 weights, activations quantized at run time).

    Attributes:
        per_channel: one weight scale per output column instead of per tensor.
        exclude: node names or op types kept in float (a string is split at commas).
        reduce_range: 7-bit weights; ``"auto"``: on x86 without VNNI.
    """

    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    reduce_range: bool | str = "auto"

    def __post_init__(self) -> None:
        _set(self, "per_channel", bool(self.per_channel))
        _set(self, "exclude", names(self.exclude))
        _reduce_range(self)
