"""torch -> onnx with a parity check in onnxruntime. torch is imported lazily."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.errors import OnnxoptError, first_line
from onnxopt.model import load_model, save_model


def export_torch(
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
    **export_kwargs: Any,
) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) and check its outputs against onnxruntime.

    ``export_kwargs`` go to ``torch.onnx.export`` unchanged (e.g. ``do_constant_folding``).

    Raises:
        OnnxoptError: the export failed or onnxruntime disagrees with torch beyond rtol/atol.
    """
    import torch

    module = module.eval()
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = list(
        input_names or [f"input_{i}" if len(args) > 1 else "input" for i in range(len(args))]
    )
    outs = list(output_names or ["output"])
    with torch.no_grad():
        ref = module(*args)
    refs = ref if isinstance(ref, (tuple, list)) else (ref,)
    if output_names is None and len(refs) > 1:
        outs = [f"output_{i}" for i in range(len(refs))]
    kwargs: dict[str, Any] = dict(input_names=names, output_names=outs, dynamo=dynamo)
    kwargs.update(export_kwargs)
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamic_axes:
        if dynamo:
            kwargs["dynamic_shapes"] = _dynamic_shapes(dynamic_axes, names)
        else:
            kwargs["dynamic_axes"] = dynamic_axes
    model = _export(module, args, kwargs)
    _check_parity(model, args, outs, refs, rtol, atol)
    save_model(model, path)
    return model


def _export(module: Any, args: tuple, kwargs: dict[str, Any]) -> onnx.ModelProto:
    import torch

    with tempfile.TemporaryDirectory() as d:
        tmp = os.path.join(d, "model.onnx")
        try:
            torch.onnx.export(module, args, tmp, **kwargs)
        except Exception as e:
            raise OnnxoptError(f"torch.onnx.export failed: {first_line(e)}") from e
        return load_model(tmp)


def _check_parity(
    model: onnx.ModelProto,
    args: tuple,
    outs: list[str],
    refs: Sequence[Any],
    rtol: float,
    atol: float,
) -> None:
    """onnxruntime must reproduce torch's outputs within ``rtol``/``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {n: a.detach().cpu().numpy() for n, a in zip([i.name for i in sess.get_inputs()], args)}
    got = sess.run(None, feed)
    for name, r, g in zip(outs, refs, got):
        r = r.detach().cpu().numpy()
        if not np.allclose(r, g, rtol=rtol, atol=atol):
            err = float(np.abs(r - g).max())
            raise OnnxoptError(f"exported '{name}' differs from torch (max abs err {err:.3g})")


def _dynamic_shapes(axes: dict[str, dict[int, str]], names: Sequence[str]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for n in names:
        if n in axes:
            out[n] = {i: torch.export.Dim(label) for i, label in axes[n].items()}
        else:
            out[n] = None
    return out
