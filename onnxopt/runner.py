"""onnxruntime CPU sessions for verification: :class:`Runner` builds them (graph optimizations
off by default, so a reference is the literal graph), caches them by model, and runs a
:class:`~onnxopt.data.Feeds`. Large weights go to onnxruntime as in-memory initializers, shared between sessions (see
:mod:`onnxopt.sessions`)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxopt import phases, sessions
from onnxopt.data import Feeds
from onnxopt.errors import ModelError, OnnxoptError, first_line

logger = logging.getLogger(__name__)

#: one {output name: array} per run
Runs = list[dict[str, np.ndarray]]

#: at most this many sessions of one model run a Feeds' runs side by side (:func:`side_by_side`)
MAX_SIDE = 4
#: a model with more weight bytes than this (those it computes at run time included:
#: :func:`materialized_bytes`) runs on one session with onnxruntime's threads: a session with
#: graph optimizations on copies its weights, and one copy per session would break the big
#: models' memory bounds; the sessions with them off share one copy of the stored weights, but
#: each holds its own buffers and computed weights (`optimize`'s peak: BERT-base, 417 MB, 0.59
#: GB side by side against 0.55 GB on one session; light_bvlc_alexnet, 233 MB computed at run
#: time, 861 against 542 MB), and a big model's verification is a few runs
SIDE_MAX_BYTES = {False: 128 << 20, True: 64 << 20}


def side_by_side() -> int:
    """How many sessions of one model a :class:`Runner` (``threads=0``) runs a Feeds' runs on
    at once, each on ``cores // n`` intra-op threads: one per CPU this process may use, at most
    :data:`MAX_SIDE`; 1 (one session on onnxruntime's threads) under ``$ONNXOPT_THREADS``.

    Verification runs many independent runs. On the 2-core AMD EPYC these figures come from,
    two one-thread sessions ran them 1.05-1.3x faster than one two-thread session where the
    machine was fast and 1.8x where it was in its slow regime, in which a two-thread session
    runs no faster than a one-thread one while two one-thread sessions side by side keep
    their speed (the PP-OCRv5 detector's 62 pages, graph optimizations off: 2.95 s on one
    session, 1.63 s on two, and 1.62 s on two in the fast regime)."""
    if os.environ.get(sessions.THREADS_ENV, ""):
        return 1
    return max(1, min(_cores(), MAX_SIDE))


def materialized_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the main graph's ``ConstantOfShape`` outputs whose shape is a constant: weights
    a model computes at run time (the onnx backend's light CNNs hold every weight that way:
    light_vgg19's 9 KB file makes 548 MB of them in each session)."""
    shapes = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.attribute and n.attribute[0].name == "value":
            shapes[n.output[0]] = n.attribute[0].t
    total = 0
    for n in model.graph.node:
        if n.op_type != "ConstantOfShape" or not n.input or n.input[0] not in shapes:
            continue
        try:
            dims = numpy_helper.to_array(shapes[n.input[0]]).reshape(-1)
        except Exception:  # noqa: BLE001 - an unreadable shape is not counted
            continue
        value = next((a.t for a in n.attribute if a.name == "value"), None)
        itemsize = (
            np.dtype(helper.tensor_dtype_to_np_dtype(value.data_type)).itemsize if value else 4
        )
        total += int(np.prod(np.maximum(dims, 0), dtype=np.int64)) * itemsize
    return total


def side_for(model: onnx.ModelProto | bytes | str, *, optimized: bool = False) -> int:
    """:func:`side_by_side` for ``model`` (a ModelProto, its bytes or its path): 1 above
    :data:`SIDE_MAX_BYTES` of weights, those it computes at run time included, where every
    session beside the first would hold its own buffers (or, ``optimized``, its own copy of
    the weights)."""
    from onnxopt import weights

    if isinstance(model, onnx.ModelProto):
        size = weights.weight_bytes(model) + materialized_bytes(model)
    elif isinstance(model, bytes | bytearray):
        size = len(model)
    else:
        size = os.path.getsize(model) if os.path.isfile(model) else 0
    return side_by_side() if size <= SIDE_MAX_BYTES[optimized] else 1


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
        #: sessions of one model that run a Feeds' runs side by side (1 with ``threads``)
        self.side = 1 if threads else side_by_side()

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

        side = min(self.side, side_for(model, optimized=optimized))
        if self.block_bytes is not None:
            side = 1  # under --max-memory: one session, as little memory as it takes

        def options() -> Any:
            so = self._options(optimized)
            if side > 1:
                so.intra_op_num_threads = side_threads(side)
            return so

        # under --max-memory (block_bytes set) the float copies are not worth the risk
        folds = not optimized and self.block_bytes is None
        built = weights_dequantized(model) if folds else model
        # one split for every session of the model: the sessions share its arrays
        shared = split if built is model else sessions.Split(built, sessions.PLACEHOLDER)

        def build() -> Any:
            return sessions.build(built, options, copy_weights=optimized, split=shared)

        sess = build()
        # the sessions that run beside it, built at the first run of several (same options,
        # the same weights where they are shared)
        sess._onnxopt_side = (side, build, [])
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

        def one(s: Any, run: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if halves:  # a model converted to float16 inputs is verified on the same data
                run = {k: v.astype(halves[k]) if k in halves else v for k, v in run.items()}
            try:
                values = s.run(names, run, opts)
            except Exception as e:
                msg = first_line(e)
                raise ModelError(f"onnxruntime failed to run the model: {msg}") from e
            for name, shape, value in zip(names, declared, values, strict=True):
                why = shape_disagrees(shape, value)
                if why:
                    raise ModelError(f"output '{name}' {why}; the model's declaration is wrong")
            return dict(zip(names, values))

        runs = feeds.runs
        pool = _side_sessions(sess, len(runs))
        if len(pool) < 2:
            return [one(sess, run) for run in runs]
        return _side_by_side(pool, runs, one)

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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def side_threads(side: int) -> int:
    """Intra-op threads of each of ``side`` sessions that run side by side."""
    return max(1, _cores() // max(side, 1))


def in_threads(
    fn: Callable[..., Any], parts: list[tuple], stop: threading.Event | None = None
) -> list[Any]:
    """``fn(*part)`` for every part, each in a thread of its own (for work that runs
    onnxruntime, which releases the GIL); the results in the parts' order, the first part's
    error raised. ``stop``, set when a part fails or the caller is interrupted (Ctrl-C), is
    for ``fn`` to read between its runs: the other parts then end at their next run, and the
    interruption is raised once they have."""
    if len(parts) <= 1:
        return [fn(*part) for part in parts]
    stop = stop if stop is not None else threading.Event()

    def guarded(*part: Any) -> Any:
        try:
            return fn(*part)
        except BaseException:
            stop.set()
            raise

    ex = ThreadPoolExecutor(len(parts), thread_name_prefix="onnxopt-part")
    try:
        futures = [ex.submit(guarded, *part) for part in parts]
        return [f.result() for f in futures]
    except BaseException:
        stop.set()
        raise
    finally:
        ex.shutdown(wait=True)


def contiguous(n: int, parts: int) -> list[tuple[int, int]]:
    """``range(n)`` cut into at most ``parts`` contiguous, non-empty (start, stop) slices."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _side_sessions(sess: Any, runs: int) -> list[Any]:
    """``sess`` and the sessions built to run beside it for ``runs`` runs (at most its side)."""
    side, build, more = getattr(sess, "_onnxopt_side", (1, None, []))
    want = min(side, runs) - 1
    while len(more) < want:
        more.append(build())
    return [sess, *more[: max(want, 0)]]


def _side_by_side(pool: list[Any], runs: list, one: Callable[[Any, Any], Any]) -> list:
    """``one(session, run)`` for every run, the sessions of ``pool`` each taking the next run
    in its own thread (onnxruntime releases the GIL while it runs); the results in the runs'
    order. Every session has the same options, so which one ran a run does not change its
    outputs. The first error (or a Ctrl-C) stops the others at their next run and is raised."""
    out: list[Any] = [None] * len(runs)
    lock = threading.Lock()
    taken = iter(range(len(runs)))
    stop = threading.Event()

    def work(s: Any) -> None:
        while not stop.is_set():
            with lock:
                i = next(taken, None)
            if i is None:
                return
            out[i] = one(s, runs[i])

    in_threads(work, [(s,) for s in pool], stop)
    return out


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
