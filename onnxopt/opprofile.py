"""Where the time goes: onnxruntime's own profiler, aggregated by op type and by node.

The model runs in a CPU session as a user would run it (all graph optimizations, so the nodes
are onnxruntime's: fused kernels, layout reorders) with ``enable_profiling``. Every kernel's
``*_kernel_time`` event of the timed runs (the warm-up runs are left out) is summed per node and
run; a node's time is its median over the runs (robust to a busy moment of the machine), an op
type's the sum of its nodes', and each one's share is of the kernels' total. Two models are
profiled with their runs interleaved (:func:`profile_models`).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import numpy as np
import onnx

from onnxopt.data import Feeds

logger = logging.getLogger(__name__)

#: rows kept per table
TOP = 20
_SUFFIX = "_kernel_time"


def profile_model(model: onnx.ModelProto, feeds: Feeds, **kw: Any) -> dict[str, Any]:
    """:func:`profile_models` of one model."""
    return profile_models([model], feeds, **kw)[0]


def profile_models(
    models: list[onnx.ModelProto],
    feeds: Feeds,
    *,
    threads: int = 1,
    runs: int = 20,
    seconds: float = 2.0,
    top: int = TOP,
) -> list[dict[str, Any]]:
    """Profile ``models`` on ``feeds`` (cycled), their runs interleaved so that a busy moment
    of the machine hits all of them alike: at least 3 and at most ``runs`` timed runs each,
    stopping after about ``seconds``.

    Returns, per model: ``{"runs", "threads", "total_ms" (kernels, per run), "by_op": [{"op",
    "ms", "share", "nodes"}], "by_node": [{"node", "op", "ms", "share"}]}``, each table the
    ``top`` rows by time; a node's time is its median over the runs.
    """
    with tempfile.TemporaryDirectory(prefix="onnxopt_profile_") as tmp:
        sessions = [
            _session(m, os.path.join(tmp, f"ort{i}"), threads) for i, m in enumerate(models)
        ]
        data = []
        for sess in sessions:
            ins = {i.name for i in sess.get_inputs()}
            data.append([{k: v for k, v in r.items() if k in ins} for r in feeds.runs] or [{}])
        for sess, d in zip(sessions, data):
            for _ in range(2):  # warm-up: allocations, first touch of the weights
                sess.run(None, d[0])
        starts = [_now_us(sess) for sess in sessions]
        done, t0 = 0, time.perf_counter()
        while done < runs and (done < 3 or time.perf_counter() - t0 < seconds):
            for sess, d in zip(sessions, data):
                sess.run(None, d[done % len(d)])
            done += 1
        out = []
        for sess, start in zip(sessions, starts):
            with open(sess.end_profiling()) as f:
                out.append(aggregate(json.load(f), done, start, top=top) | {"threads": threads})
    return out


def _session(model: onnx.ModelProto, prefix: str, threads: int) -> Any:
    from onnxopt.runner import build_session, split_weights
    from onnxopt.timing import RACE_IDLE_SPIN, session_options

    # run in turns with another session: idle workers stop spinning (see RACE_IDLE_SPIN)
    so = session_options(threads, "all", idle_spin=RACE_IDLE_SPIN)
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    structure, names, arrays = split_weights(model)
    return build_session(structure, names, arrays, so)


def _now_us(sess: Any) -> float:
    """The profiler's clock now (microseconds since the session's profiling started)."""
    start_ns = sess.get_profiling_start_time_ns()
    return (time.time_ns() - start_ns) / 1e3 if start_ns else 0.0


def aggregate(events: list[dict[str, Any]], runs: int, after_us: float = 0.0, top: int = TOP):
    """Per op type and per node: the median over the runs after ``after_us`` of the kernel time
    (a run is a ``model_run`` event; without them every event counts as one run's share)."""
    spans = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run" and e["ts"] >= after_us
    )
    per_node: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    node_op: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_SUFFIX) or e.get("ts", 0) < after_us:
            continue
        node = name[: -len(_SUFFIX)]
        k = bisect.bisect_right([s for s, _ in spans], e["ts"]) - 1 if spans else -1
        per_node[node][k] += float(e.get("dur", 0)) / 1e3  # ms
        node_op[node] = e.get("args", {}).get("op_name", "?")
    n = len(spans) if spans else max(runs, 1)
    node_ms = {
        node: float(np.median([by_run.get(k, 0.0) for k in range(n)]))
        if spans
        else sum(by_run.values()) / n
        for node, by_run in per_node.items()
    }
    by_op: dict[str, float] = defaultdict(float)
    op_nodes: dict[str, int] = defaultdict(int)
    for node, v in node_ms.items():
        by_op[node_op[node]] += v
        op_nodes[node_op[node]] += 1
    total = sum(by_op.values())
    share = (lambda ms: ms / total) if total > 0 else (lambda ms: 0.0)
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    nodes = sorted(node_ms.items(), key=lambda kv: -kv[1])[:top]
    return {
        "runs": n,
        "total_ms": total,
        "by_op": [{"op": k, "ms": v, "share": share(v), "nodes": op_nodes[k]} for k, v in ops],
        "by_node": [{"node": k, "op": node_op[k], "ms": v, "share": share(v)} for k, v in nodes],
    }
