"""The public Python API (re-exported lazily by ``onnxopt``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from onnxopt.data import Feeds
from onnxopt.model import load_model
from onnxopt.report import PipelineReport
from onnxopt.synth import get_feeds
from onnxopt.verify import Budget


def _feeds(model: onnx.ModelProto, data: Any, **kw: Any) -> Feeds:
    return get_feeds(model, data, **kw)


def optimize(
    model: Any,
    passes: Sequence[str] | None = None,
    data: Any = None,
    budget: Budget | None = None,
    *,
    target: str = "onnx",
    strict: bool = False,
    options: dict[str, dict[str, Any]] | None = None,
    shapes: dict[str, list[int]] | None = None,
    int_range: tuple[int, int] | None = None,
    allow_slower: bool = False,
    metric_output: str | None = None,
    latency_batch: int | None = None,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Run passes (default: every exact pass) with verification; returns (model, report).

    Args:
        model: path, bytes or ModelProto (never modified).
        passes: pass or family names, e.g. ``["cleanup", "fusion", "quantize-int8"]``.
        data: feeds: ``.npz`` path, folder, dict of arrays, iterable of dicts or Feeds.
        budget: lossy budget against the original (default cosine >= 0.99).
        allow_slower: keep int8 / pruning even when the model is not faster than its input.
        metric_output: the output accuracy reads (default: the one holding class scores).
        latency_batch: judge speed at this batch size, the runs stacked (default: the
            median-size run).
    """
    from onnxopt.passes.registry import manager

    m = load_model(model)
    feeds = _feeds(m, data, shapes=shapes, int_range=int_range)
    pm = manager(
        passes,
        budget=budget,
        target=target,
        strict=strict,
        options=options,
        allow_slower=allow_slower,
        metric_output=metric_output,
        latency_batch=latency_batch,
    )
    out, report = pm.run(m, feeds)
    return _self_contained(out), report


def _self_contained(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model whose large weights were memory-mapped (onnxopt.weights) gets them back in the
    proto, so that onnx.save and onnxruntime take it; above protobuf's 2 GB limit it stays
    mapped: save it with :func:`onnxopt.model.save_model`."""
    from onnxopt import weights
    from onnxopt.model import PROTO_LIMIT, model_bytes

    if weights.is_mapped_model(model) and model_bytes(model) < PROTO_LIMIT:
        return weights.materialize(model)
    return model


def quantize(
    model: Any,
    data: Any,
    budget: Budget | None = None,
    *,
    bits: int = 8,
    target: str = "onnx",
    allow_slower: bool = False,
    latency_batch: int | None = None,
    **options: Any,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Static int8 quantization (QDQ) calibrated on ``data``, or with ``bits=4`` weight-only
    4-bit ``MatMulNBits`` (an onnxruntime contrib op: ``target="onnxruntime"``).

    ``options`` are :class:`onnxopt.passes.quantize.config.QuantizeConfig` fields
    (``calibrator="entropy"``, ``percentile=99.9``, ``exclude=["Conv_3"]``, ...), or with
    ``bits=4`` :class:`onnxopt.passes.precision.config.Int4Config` fields (``algo="gptq"``,
    ``block_size=64``, ...); a bad one is an :class:`~onnxopt.errors.OptionError` naming it.
    """
    from onnxopt.errors import OptionError

    if bits not in (4, 8):
        raise OptionError(f"bits must be 8 (int8) or 4 (weight-only MatMulNBits), not {bits!r}")
    name = "quantize-int4" if bits == 4 else "quantize-int8"
    return optimize(
        model,
        [name],
        data,
        budget,
        target=target,
        options={name: options},
        allow_slower=allow_slower,
        latency_batch=latency_batch,
    )


def prune(
    model: Any,
    data: Any = None,
    budget: Budget | None = None,
    *,
    allow_slower: bool = False,
    latency_batch: int | None = None,
    **options: Any,
) -> tuple[onnx.ModelProto, PipelineReport]:
    """Structured channel pruning.

    ``options`` are :class:`onnxopt.passes.prune.config.PruneConfig` fields (``ratio=0.5``,
    ``target_flops=0.5``, ``importance="l1"``, ...); a bad one is an
    :class:`~onnxopt.errors.OptionError` naming it.
    """
    return optimize(
        model,
        ["prune"],
        data,
        budget,
        options={"prune": options},
        allow_slower=allow_slower,
        latency_batch=latency_batch,
    )


def distill(student: Any, teacher: Any, data: Any, *, labels: Any = None, **options: Any) -> Any:
    """Train ``student``'s initializers to reproduce ``teacher`` on unlabeled ``data``.

    ``options`` are :class:`onnxopt.passes.distill.config.DistillConfig` fields (epochs, lr,
    temperature, ...). Returns a :class:`onnxopt.passes.distill.result.DistillResult`
    (``.model`` is the trained student).
    """
    from onnxopt.passes.distill.config import DistillConfig
    from onnxopt.passes.distill.trainer import distill as _distill

    s = load_model(student)
    feeds = data if isinstance(data, Feeds) else get_feeds(s, data)
    return _distill(s, teacher, feeds, DistillConfig.from_options(options), labels=labels)


def merge(
    models: Sequence[Any], mode: str = "average", **options: Any
) -> tuple[onnx.ModelProto, Any]:
    """Merge several models into one graph (parallel, serial, stacking or cascade).

    ``options`` are :class:`onnxopt.passes.ensemble.config.MergeConfig` fields (``on``,
    ``weights``, ``data``, ``io_map``, ``threshold``, ...). Returns (model, MergeReport).
    """
    from onnxopt.passes.ensemble.merge import merge as _merge

    return _merge(list(models), mode=mode, **options)


def bench(models: Sequence[Any], **options: Any) -> Any:
    """Latency / throughput / memory of each model in onnxruntime."""
    from onnxopt import bench as _bench

    return _bench.bench(list(models), **options)


def export(
    module: Any,
    example_inputs: Any,
    path: str | Path,
    *,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamo: bool = False,
    opset: int | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> onnx.ModelProto:
    """``torch.onnx.export`` that also checks torch against onnxruntime on ``example_inputs``."""
    from onnxopt.export import export_torch

    return export_torch(
        module,
        example_inputs,
        path,
        dynamic_axes=dynamic_axes,
        input_names=input_names,
        output_names=output_names,
        dynamo=dynamo,
        opset=opset,
        rtol=rtol,
        atol=atol,
    )
