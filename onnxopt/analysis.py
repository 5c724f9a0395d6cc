"""What the HTML report shows beyond the pass table, computed once from the two models.

:func:`analyze` compares the original with the optimized model tensor by tensor
(:mod:`onnxopt.layerwise`), profiles both in onnxruntime (:mod:`onnxopt.opprofile`) and finds
the regions the passes changed (:mod:`onnxopt.graphdiff`). The result is plain JSON data: it is
stored in ``PipelineReport.analysis`` so that ``onnxopt report RUN.json`` renders the page from
the JSON alone. It is computed when ``--html`` is given (or by ``onnxopt report RUN.json
--original A --optimized B``), not for ``--report`` alone: the profiles take a few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx

from onnxopt.data import Feeds
from onnxopt.errors import OnnxoptError, first_line

logger = logging.getLogger(__name__)

#: verification runs the per-layer comparison uses
LAYER_RUNS = 4


def analyze(
    original: onnx.ModelProto,
    optimized: onnx.ModelProto,
    feeds: Feeds,
    *,
    layers: bool = True,
    profile: bool = True,
    graph: bool = True,
    threads: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """``{"layers": LayerReport dict, "profile": {"before", "after"}, "graph": regions,
    "errors": {part: why}}``; a part that fails is left out and its error recorded."""
    out: dict[str, Any] = {"errors": {}}
    steps: list[tuple[str, Callable[[], Any]]] = []
    if layers:
        steps.append(("layers", lambda: _layers(original, optimized, feeds, progress)))
    if profile:
        steps.append(("profile", lambda: _profiles(original, optimized, feeds, threads)))
    if graph:
        steps.append(("graph", lambda: _graph(original, optimized)))
    for i, (name, step) in enumerate(steps):
        if progress is not None:
            progress(f"report: {name}", i, len(steps))
        try:
            out[name] = step()
        except (OnnxoptError, RuntimeError, ValueError) as e:
            logger.info("report part %s failed: %s", name, e)
            out["errors"][name] = first_line(e)
    return out


def _layers(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Feeds, progress: Any) -> dict:
    from onnxopt.layerwise import compare_layers
    from onnxopt.mapped import mapped_from_proto

    rep = compare_layers(
        mapped_from_proto(a), mapped_from_proto(b), feeds.subset(LAYER_RUNS), progress=progress
    )
    return rep.to_dict()


def _profiles(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Feeds, threads: int) -> dict:
    from onnxopt.opprofile import profile_models

    before, after = profile_models([a, b], feeds.subset(1), threads=threads)
    return {"before": before, "after": after}


def _graph(a: onnx.ModelProto, b: onnx.ModelProto) -> dict:
    from onnxopt.graphdiff import changed_regions

    return changed_regions(a, b)
