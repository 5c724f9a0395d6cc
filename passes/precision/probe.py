"""Intermediate tensors of the float32 model on calibration data, in bounded memory.

The model runs in onnxruntime (graph optimizations off: the literal graph) with chosen tensors
of its main graph added as outputs. All of them at once would hold every activation of a run in
memory (BERT-base: about 0.5 GB per run), so they are taken in chunks whose estimated size (from
shape inference with the calibration run's input shapes) stays under ``budget`` bytes; each chunk
is one session over the runs. Callers keep only reductions (a maximum, ``XᵀX``) of what they see.
The weights go to onnxruntime as in-memory initializers (never serialized again).

A tensor of an If/Loop/Scan body is read through :func:`onnxopt.passes.quantize.bodies.expose`: in a
Loop or Scan body its values of every iteration come stacked on a new first axis, in an If
branch the branch not taken gives an empty tensor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnx

from onnxopt.data import Feeds
from onnxopt.errors import ModelError, first_line
from onnxopt.model import light_model
from onnxopt.runner import build_session, split_weights

logger = logging.getLogger(__name__)

#: the size assumed for a tensor whose shape shape inference could not settle
UNKNOWN_BYTES = 4 << 20


class Probe:
    """Runs a model's chosen intermediate tensors on calibration runs, a chunk at a time.

    Args:
        model: the float32 model (not modified).
        feeds: the calibration runs.
        runs: at most this many of them.
        budget: bytes of probed tensors per run held at once (one chunk).
    """

    def __init__(self, model: onnx.ModelProto, feeds: Feeds, runs: int, budget: int) -> None:
        self.runs = feeds.runs[: max(runs, 1)]
        self.budget = budget
        structure, self._names, self._arrays = split_weights(model)
        self._shell = onnx.load_model_from_string(structure)
        self.types, self.sizes = _types_and_sizes(model, self.runs[0] if self.runs else {})
        self._outputs = {o.name for o in model.graph.output}
        self._inputs = {i.name for i in model.graph.input}
        g = model.graph
        self._main = self._inputs | {t.name for t in g.initializer}
        self._main |= {o for n in g.node for o in n.output}
        self.sessions = 0

    def chunks(self, names: Sequence[str], extra: dict[str, int] | None = None) -> list[list[str]]:
        """``names`` in consecutive chunks of at most ``budget`` estimated bytes (one at least);
        ``extra``: bytes a caller keeps per tensor besides its value (a Hessian)."""
        out: list[list[str]] = []
        cur: list[str] = []
        size = 0
        for n in names:
            b = self.sizes.get(n, UNKNOWN_BYTES) + (extra or {}).get(n, 0)
            if cur and size + b > self.budget:
                out.append(cur)
                cur, size = [], 0
            cur.append(n)
            size += b
        if cur:
            out.append(cur)
        return out

    def stream(self, names: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """For each calibration run, the values of ``names`` (one session for all of them)."""
        import onnxruntime as ort

        shell = onnx.ModelProto()
        shell.CopyFrom(self._shell)
        given = [n for n in names if n in self._inputs]
        wanted = [n for n in names if n not in self._inputs]
        inner = [n for n in wanted if n not in self._main]
        carrier = _expose(shell, inner) if inner else {}
        wanted = [n for n in wanted if n in self._main or n in carrier]
        for n in wanted:
            if n not in self._outputs and n not in carrier:
                shell.graph.output.append(
                    onnx.helper.make_tensor_value_info(n, self.types.get(n, 1), None)
                )
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        so.add_session_config_entry("session.disable_prepacking", "1")
        sess = build_session(shell.SerializeToString(), self._names, self._arrays, so)
        self.sessions += 1
        for run in self.runs:
            try:
                values = sess.run([carrier.get(n, n) for n in wanted], run) if wanted else []
            except Exception as e:
                raise ModelError(f"onnxruntime failed to run the probe: {first_line(e)}") from e
            out = dict(zip(wanted, values))
            out.update({n: run[n] for n in given})
            yield out

    def reduce(
        self, names: Sequence[str], fn: Callable[[str, np.ndarray], None], progress=None
    ) -> None:
        """Call ``fn(name, value)`` for every probed tensor of every run, chunk by chunk;
        ``progress(done, total)`` after each chunk."""
        chunks = self.chunks(list(names))
        for i, chunk in enumerate(chunks):
            for values in self.stream(chunk):
                for name, value in values.items():
                    fn(name, value)
                del values
            if progress is not None:
                progress(i + 1, len(chunks))


def _expose(shell: onnx.ModelProto, names: list[str]) -> dict[str, str]:
    """Body tensors of ``shell`` (edited) made readable: {tensor: the graph output carrying it}."""
    from onnxopt.passes.quantize.bodies import expose

    return expose(shell, names)


def _types_and_sizes(
    model: onnx.ModelProto, run: dict[str, np.ndarray]
) -> tuple[dict[str, int], dict[str, int]]:
    """Element type and estimated bytes of every main-graph tensor, with the inputs' dims set
    to those of ``run`` (so dynamic dims resolve)."""
    light = light_model(model)
    for v in light.graph.input:
        if v.name in run:
            dims = v.type.tensor_type.shape.dim
            shape = np.shape(run[v.name])
            if len(dims) == len(shape):
                for d, s in zip(dims, shape):
                    d.Clear()
                    d.dim_value = int(s)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception as e:  # noqa: BLE001
        logger.info("probe sizes unknown: %s", first_line(e))
        inferred = light
    types: dict[str, int] = {}
    sizes: dict[str, int] = {}
    g = inferred.graph
    for v in [*g.input, *g.value_info, *g.output]:
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            continue
        types[v.name] = t.elem_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if t.HasField("shape") and all(d >= 0 for d in dims) and t.elem_type:
            item = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
            sizes[v.name] = int(np.prod(dims, dtype=np.int64)) * item
    return types, sizes
