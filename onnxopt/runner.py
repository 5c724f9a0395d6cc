"""onnxruntime CPU sessions for verification: :class:`Runner` builds them (graph optimizations
off by default, so a reference is the literal graph), caches them by model, and runs a
:class:`~onnxopt.data.Feeds`. Large weights go to onnxruntime as in-memory initializers, shared between sessions (see
:mod:`onnxopt.sessions`)."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import onnx

from onnxopt import phases, sessions
from onnxopt.data import Feeds
from onnxopt.errors import ModelError, OnnxoptError, first_line

logger = logging.getLogger(__name__)

#: one {output name: array} per run
Runs = list[dict[str, np.ndarray]]


class Runner:
    """onnxruntime CPU sessions with a small LRU cache keyed by the model's bytes."""

    def __init__(self, *, threads: int = 0, cache_size: int = 2, quiet: bool = False) -> None:
        self.threads = threads
        self.cache_size = cache_size
        #: onnxruntime logs nothing (for probing runs that are expected to fail)
        self.quiet = quiet
        self._sessions: OrderedDict[tuple[str, bool], Any] = OrderedDict()
        #: models with more weights than this run block by block (onnxopt.blocks); None: never
        self.block_bytes: int | None = None

    @phases.timed(phases.CHECKING)
    def session(self, model: onnx.ModelProto, *, optimized: bool = False) -> Any:
        """A cached CPU session of ``model`` (large weights shared, not copied, when graph
        optimizations are off; see :mod:`onnxopt.sessions`)."""
        from onnxopt import blocks, memory, weights

        if self.block_bytes is not None and weights.weight_bytes(model) > self.block_bytes:
            return blocks.Chained(model, self.block_bytes, lambda: self._options(optimized))
        split = sessions.Split(model, sessions.PLACEHOLDER)
        key = (hashlib.sha1(split.identity()).hexdigest(), optimized)
        arrays = split.inproto_arrays()
        for cached_key, cached in self._sessions.items():
            # in-memory weights are compared only when the rest matches a cached session
            if cached_key == key and _same_weights(cached._onnxopt_split.inproto_arrays(), arrays):
                self._sessions.move_to_end(cached_key)
                return cached
        memory.check_session(model, optimized=optimized)

        def options() -> Any:
            return self._options(optimized)

        # under --max-memory (block_bytes set) the float copies are not worth the risk
        folds = not optimized and self.block_bytes is None
        built = weights_dequantized(model) if folds else model
        sess = sessions.build(
            built, options, copy_weights=optimized, split=split if built is model else None
        )
        sess._onnxopt_split = split  # what the cache compares: the model as given
        # onnxruntime reports an output's inferred shape when it contradicts the declared one
        sess._onnxopt_declared = [_declared_dims(o) for o in model.graph.output]
        self._sessions.pop(key, None)
        self._sessions[key] = sess
        while len(self._sessions) > self.cache_size:
            self._sessions.popitem(last=False)
        return sess

    def _options(self, optimized: bool) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimized
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        so.log_severity_level = 4 if self.quiet else 3
        # a verification session runs a handful of times: packing every GEMM weight up front
        # costs more (0.3 s and a copy of the weights on BERT-base) than it saves over the runs
        so.add_session_config_entry("session.disable_prepacking", "1")
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def run(self, model: onnx.ModelProto, feeds: Feeds, *, optimized: bool = False) -> Runs:
        """Run every feed; returns one {output_name: array} per run."""
        return self.run_session(self.session(model, optimized=optimized), feeds)

    @phases.timed(phases.CHECKING)
    def run_session(self, sess: Any, feeds: Feeds) -> Runs:
        """Run every feed through a session from :meth:`session`.

        Raises:
            ModelError: onnxruntime fails, or an output's shape contradicts the model's
                declaration of it (onnxruntime only warns; the shapes passes read would lie).
        """
        import onnxruntime as ort

        from onnxopt.blocks import Chained

        if isinstance(sess, Chained):
            try:
                return sess.run_all(feeds.runs)
            except OnnxoptError:
                raise
            except Exception as e:
                raise ModelError(f"onnxruntime failed to run the model: {first_line(e)}") from e
        names = [o.name for o in sess.get_outputs()]
        declared = getattr(sess, "_onnxopt_declared", None) or [None] * len(names)
        opts = ort.RunOptions()
        opts.log_severity_level = 4 if self.quiet else 3
        halves = _half_inputs(sess)
        out: Runs = []
        for run in feeds.runs:
            if halves:  # a model converted to float16 inputs is verified on the same data
                run = {k: v.astype(halves[k]) if k in halves else v for k, v in run.items()}
            try:
                values = sess.run(names, run, opts)
            except Exception as e:
                msg = first_line(e)
                raise ModelError(f"onnxruntime failed to run the model: {msg}") from e
            for name, shape, value in zip(names, declared, values, strict=True):
                why = shape_disagrees(shape, value)
                if why:
                    raise ModelError(f"output '{name}' {why}; the model's declaration is wrong")
            out.append(dict(zip(names, values)))
        return out

    def clear(self) -> None:
        self._sessions.clear()

    def forget_model(self, model: onnx.ModelProto) -> None:
        """Drop the cached sessions of ``model`` (any optimization level)."""
        ident = hashlib.sha1(sessions.Split(model, sessions.PLACEHOLDER).identity()).hexdigest()
        for key in [k for k in self._sessions if k[0] == ident]:
            del self._sessions[key]

    def forget(self, session: Any) -> None:
        """Drop ``session`` from the cache (and with it the weights it holds)."""
        for key, cached in list(self._sessions.items()):
            if cached is session:
                del self._sessions[key]


def _half_inputs(sess: Any) -> dict[str, np.dtype]:
    """Inputs declared float16 (fed float32 data, which is cast)."""
    return {i.name: np.dtype(np.float16) for i in sess.get_inputs() if i.type == "tensor(float16)"}


#: weights :func:`weights_dequantized` turns to float32 at most (bytes, after the conversion;
#: BERT-base's 417 MB: its literal runs took 9.3 s on 32 runs dequantizing, where its float
#: model took 4.6 s), and only when they fit in the memory available with a GiB to spare
DEQUANTIZE_MAX_BYTES = 1 << 30
#: the integer weight types whose DequantizeLinear is folded (4-bit and float8 are left alone)
_DEQUANTIZED = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32)


def dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None) -> np.ndarray:
    """``(q - zero) * scale`` in float32, as onnxruntime's DequantizeLinear computes it (bit
    for bit); ``scale`` and ``zero`` already shaped to broadcast against ``q``."""
    diff = q.astype(np.int64) - (0 if zero is None else zero.astype(np.int64))
    return (diff.astype(np.float32) * scale).astype(np.float32)


def fold_fits(float_bytes: int) -> bool:
    """Whether weights dequantized ahead of time, ``float_bytes`` of them, may be held: at most
    :data:`DEQUANTIZE_MAX_BYTES`, and with a GiB of the memory available to spare."""
    from onnxopt import memory

    return float_bytes <= DEQUANTIZE_MAX_BYTES and float_bytes + memory.GiB <= memory.available()


def weights_dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every main-graph DequantizeLinear of a constant int8/uint8/int32 weight
    replaced by its float32 result, computed as onnxruntime does (``(q - zero) * scale`` in
    float32: the outputs are bit-identical), or ``model`` itself when there is none, or the
    float weights would pass :data:`DEQUANTIZE_MAX_BYTES` or not fit in the memory available.

    Written here because a session with graph optimizations off, the literal reference a
    quantized candidate is verified on, dequantizes every weight on every run: on
    all-MiniLM-L6-v2 with 41 int8 layers, 64 runs took 2.0-2.5 s, and 0.8 s folded.
    """
    from onnxopt import weights
    from onnxopt.graph import unused_initializers

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    overridable = {i.name for i in g.input}  # an initializer a caller may feed is no constant
    folded: dict[int, np.ndarray] = {}
    total = 0
    for i, n in enumerate(g.node):
        if n.op_type != "DequantizeLinear" or n.domain not in ("", "ai.onnx"):
            continue
        args = [a for a in n.input if a]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if (
            not all(a in inits and a not in overridable for a in args)
            or n.output[0] in outputs
            or attrs.get("block_size", 0)
            or inits[n.input[0]].data_type not in _DEQUANTIZED
        ):
            continue
        q = weights.array(inits[n.input[0]])
        scale = weights.array(inits[n.input[1]])
        zero = weights.array(inits[n.input[2]]) if len(args) > 2 else np.zeros((), q.dtype)
        if scale.dtype != np.float32 or scale.ndim > 1 or zero.shape != scale.shape:
            continue
        if scale.ndim == 1 and scale.size > 1:  # per axis
            axis = attrs.get("axis", 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        total += q.size * 4
        if total > DEQUANTIZE_MAX_BYTES:
            return model
        folded[i] = dequantized(q, scale, zero)
    if not folded or not fold_fits(total):  # the float copies must fit with room to spare
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)  # a mapped model's weights stay stubs over the same mapping
    nodes = [n for i, n in enumerate(out.graph.node) if i not in folded]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    # the integer weights, scales and zero points nothing reads now do not go to onnxruntime
    read_by_folded = {a for i in folded for a in g.node[i].input}
    gone = set(unused_initializers(out.graph)) & read_by_folded
    kept = [t for t in out.graph.initializer if t.name not in gone]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    for i, w in folded.items():
        out.graph.initializer.append(onnx.numpy_helper.from_array(w, g.node[i].output[0]))
    return out


def _declared_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """A graph output's declared dims (None for symbolic or unknown ones), or None when its
    shape is not declared."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim]


def shape_disagrees(declared: Any, value: Any) -> str:
    """Why an output ``value`` contradicts its ``declared`` shape ("" when it does not): a
    rank, or a positive static dimension, that differs (symbolic, unknown and 0 dimensions
    match anything: old exporters wrote 0 for "unknown")."""
    if not isinstance(value, np.ndarray) or not isinstance(declared, (list, tuple)):
        return ""
    dims = [d if isinstance(d, int) and d > 0 else None for d in declared]
    if len(dims) != value.ndim or any(d is not None and d != n for d, n in zip(dims, value.shape)):
        shown = ["?" if d is None else d for d in dims]
        return f"is declared {shown} but the model computes {list(value.shape)}"
    return ""


def build_session(structure: bytes, names: list[str], arrays: list[np.ndarray], so: Any) -> Any:
    """A CPU session of ``structure`` (a serialized model whose large weights are external
    stubs, from :func:`split_weights`) with those weights given as in-memory initializers.

    On a 400 MB model this skips a full SerializeToString (and onnxruntime's parse of it), and
    models above protobuf's 2 GB limit need no temporary file.
    """
    import onnxruntime as ort

    values = [sessions.ort_value(ort, a) for a in arrays]
    if names:
        so.add_external_initializers(names, values)
    try:
        sess = ort.InferenceSession(
            structure, sessions.cap_threads(so), providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load the model: {first_line(e)}") from e
    sess._onnxopt_weights = (arrays, values)  # onnxruntime uses this memory; keep it alive
    return sess


def _same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b)
    )


def split_weights(model: onnx.ModelProto) -> tuple[bytes, list[str], list[np.ndarray]]:
    """(serialized model whose large initializers are external stubs, their names, arrays),
    for :func:`build_session`."""
    split = sessions.Split(model, "onnxopt-in-memory")
    return split.shell.SerializeToString(), split.names, split.arrays
