"""Where the time goes: onnxruntime's own profiler, aggregated by op type and by node.

The model runs in a CPU session as a user would run it (all graph optimizations, so the nodes
are onnxruntime's: fused kernels, layout reorders) with ``enable_profiling``. Every kernel's
``*_kernel_time`` event of the timed runs (the first, warm-up run is left out) is summed per op
type and per node; times are per run, and each one's share is of the kernels' total.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import onnx

from onnxopt.data import Feeds

logger = logging.getLogger(__name__)

#: rows kept per table
TOP = 20
_SUFFIX = "_kernel_time"


def profile_model(
    model: onnx.ModelProto,
    feeds: Feeds,
    *,
    threads: int = 1,
    runs: int = 20,
    seconds: float = 2.0,
    top: int = TOP,
) -> dict[str, Any]:
    """Profile ``model`` on ``feeds`` (cycled) for at least 3 and at most ``runs`` timed runs,
    stopping after about ``seconds``.

    Returns:
        ``{"runs", "threads", "total_ms" (kernels, per run), "by_op": [{"op", "ms", "share",
        "nodes"}], "by_node": [{"node", "op", "ms", "share"}]}``, each table the ``top``
        rows by time.
    """
    from onnxopt.runner import build_session, split_weights
    from onnxopt.timing import session_options

    with tempfile.TemporaryDirectory(prefix="onnxopt_profile_") as tmp:
        so = session_options(threads, "all")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "ort")
        structure, names, arrays = split_weights(model)
        sess = build_session(structure, names, arrays, so)
        ins = {i.name for i in sess.get_inputs()}
        data = [{k: v for k, v in r.items() if k in ins} for r in feeds.runs] or [{}]
        sess.run(None, data[0])  # warm-up: allocations, first-touch of the weights
        start_us = _now_us(sess)
        done, t0 = 0, time.perf_counter()
        while done < runs and (done < 3 or time.perf_counter() - t0 < seconds):
            sess.run(None, data[done % len(data)])
            done += 1
        path = sess.end_profiling()
        with open(path) as f:
            events = json.load(f)
    return aggregate(events, done, start_us, top=top) | {"threads": threads}


def _now_us(sess: Any) -> float:
    """The profiler's clock now (microseconds since the session's profiling started)."""
    start_ns = sess.get_profiling_start_time_ns()
    return (time.time_ns() - start_ns) / 1e3 if start_ns else 0.0


def aggregate(events: list[dict[str, Any]], runs: int, after_us: float = 0.0, top: int = TOP):
    """Sum the kernel events that start after ``after_us`` per op type and per node."""
    by_op: dict[str, float] = defaultdict(float)
    op_nodes: dict[str, set[str]] = defaultdict(set)
    by_node: dict[str, float] = defaultdict(float)
    node_op: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith(_SUFFIX) or e.get("ts", 0) < after_us:
            continue
        node = name[: -len(_SUFFIX)]
        op = e.get("args", {}).get("op_name", "?")
        dur = float(e.get("dur", 0)) / 1e3  # ms
        by_op[op] += dur
        op_nodes[op].add(node)
        by_node[node] += dur
        node_op[node] = op
    n = max(runs, 1)
    total = sum(by_op.values()) / n
    share = (lambda ms: ms / total) if total > 0 else (lambda ms: 0.0)
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])[:top]
    nodes = sorted(by_node.items(), key=lambda kv: -kv[1])[:top]
    return {
        "runs": runs,
        "total_ms": total,
        "by_op": [
            {"op": k, "ms": v / n, "share": share(v / n), "nodes": len(op_nodes[k])} for k, v in ops
        ],
        "by_node": [
            {"node": k, "op": node_op[k], "ms": v / n, "share": share(v / n)} for k, v in nodes
        ],
    }
