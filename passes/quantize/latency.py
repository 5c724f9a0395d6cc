"""Where int8 pays on this CPU: per-layer time of the float and the int8 model, measured.

Both models run in onnxruntime as they will be used (``ORT_ENABLE_ALL``, 2 threads) with its
profiler on. Each kernel the optimized graph runs is charged to a node of the float model we
planned on (an *owner*):

- the optimized graph is saved next to the profile; its node order is the order the sequential
  executor runs, so the kernels of one run line up with it (names alone fail on the nodes
  onnxruntime creates without one);
- a kernel named after a node (``Conv_token_3`` -> ``Conv``) or a tensor (``Relu_output_0_nchwc``
  -> its producer, through a fused activation to the layer) is that node's;
- a ``QuantizeLinear`` of tensor ``t`` is charged to the quantized layers that read ``t``
  (through data-movement ops; shared equally), a ``DequantizeLinear`` to the layer that made it:
  a Q/DQ pair costs the site that needs it;
- anything else (layout reorders, transposes, nodes onnxruntime made up) to its nearest owned
  neighbour in the optimized graph.

The gain of a site is ``t_float - t_int8`` (median over runs of the per-run sums). A site
whose int8 form is slower than its float form (beyond ``max(SLACK_US, SLACK * t_float)``) is
left in float, and the notes say so; the plan is then re-measured, since a float neighbour
changes where Q/DQ pairs go.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt import phases
from onnxopt.timing import Race, race

from .placement import PASS_THROUGH

logger = logging.getLogger(__name__)

#: activations onnxruntime fuses into the layer before them (their renamed kernel is the layer's)
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid", "Tanh")
#: a site is slower in int8 when t_int8 > t_float + max(SLACK_US, SLACK * t_float)
SLACK_US = 1.0
SLACK = 0.03
#: a site measured slower in int8 by at most this fraction of the float model's time is only
#: slightly slower: left float between int8 neighbours, it costs a DequantizeLinear and a
#: QuantizeLinear of its own, and onnxruntime may quantize its weights anyway, per tensor and
#: with a slower kernel (on a MobileNetV2 at batch 32: residual Adds measured 21-62 µs slower
#: as QLinearAdd cost ~100 µs each as DQ + Add + Q, and two depthwise Convs measured 17 µs
#: slower ran 336 µs instead of 97 once "left float")
SMALL_SLOWDOWN = 0.01
#: that race's length: past its minimum 10 rounds, a race of two models within 10 % of each
#: other otherwise runs its full 2 s (on a MobileNetV2 at batch 32, 2.2 s of 9.8)
WHOLE_MODEL_SECONDS = 1.0
#: a layer int8 makes slower stays int8 all the same when its weights hold at least this share
#: of the model's weight bytes and its slowdowns (with those already kept) stay within
#: :data:`SMALL_SLOWDOWN` of the float model's time: a 4x smaller model for a slowdown within
#: noise (all-MiniLM-L6-v2's word embeddings: 47 of its 90 MB, 35 µs of its 9 ms)
SIZE_SHARE = 0.05
#: what onnxruntime appends to the names of the nodes it rewrites, tried in turn
_SUFFIXES = (r"/duplicated$", r"_token_\d+$", r"_nchwc$", r"/\w*Fusion\w*$", r"_\d+$", r"/[^/]*$")


@dataclass
class Timing:
    """Median time per run of each owner (µs), and of the whole model."""

    owners: dict[str, float] = field(default_factory=dict)
    total_us: float = 0.0
    runs: int = 0


class Attribution:
    """Charges the kernels of an optimized graph to nodes of the planned float graph."""

    def __init__(self, model: onnx.ModelProto, sites: set[str]) -> None:
        g = model.graph
        self.sites = set(sites)
        self.nodes = {n.name: n for n in g.node}
        self.producer = {o: n.name for n in g.node for o in n.output}
        self.consumers: dict[str, list[str]] = defaultdict(list)
        for n in g.node:
            for i in n.input:
                self.consumers[i].append(n.name)
        self.graph_inputs = {i.name for i in g.input}
        self.graph_outputs = {o.name for o in g.output}
        self.constants = {i.name for i in g.initializer} | {
            o for n in g.node if n.op_type == "Constant" for o in n.output
        }

    def weightless(self, site: str) -> bool:
        """Whether ``site`` is a MatMul or Gemm of two activations (attention's), which int8
        makes no smaller, only faster or not. An input computed from constants alone (a
        weight behind a Cast, an Expand or a DequantizeLinear) is a weight; a Conv always has
        one. An elementwise site (Add, Sigmoid) is no such layer: float between int8 layers
        costs it a DequantizeLinear and a QuantizeLinear (see :func:`back_to_int8`)."""
        n = self.nodes[site]
        return n.op_type in ("MatMul", "Gemm") and not any(
            self._from_constants(i) for i in n.input if i
        )

    def _from_constants(self, tensor: str, depth: int = 4) -> bool:
        """Whether ``tensor`` is a constant or computed from constants alone."""
        if tensor in self.constants:
            return True
        p = self.producer.get(tensor)
        if p is None or depth == 0:
            return False
        ins = [i for i in self.nodes[p].input if i]
        return bool(ins) and all(self._from_constants(i, depth - 1) for i in ins)

    def _up(self, name: str) -> str:
        """A fused activation's kernel is its layer's."""
        seen = 0
        while name not in self.sites and seen < 4:
            n = self.nodes.get(name)
            if n is None or n.op_type not in FUSED_ACTIVATIONS or not n.input:
                break
            prev = self.producer.get(n.input[0])
            if prev is None:
                break
            name, seen = prev, seen + 1
        return name

    def down(
        self, tensor: str, through: tuple[str, ...] = PASS_THROUGH, boundaries: bool = False
    ) -> list[str | None]:
        """The sites that read ``tensor``, through ops of ``through`` (data movement); with
        ``boundaries``, also None for each graph output and each other op reached."""
        out: list[str | None] = []
        todo, seen = [tensor], set()
        while todo:
            t = todo.pop()
            if boundaries and t in self.graph_outputs:
                out.append(None)
            for c in self.consumers.get(t, []):
                if c in seen:
                    continue
                seen.add(c)
                if c in self.sites:
                    out.append(c)
                elif self.nodes[c].op_type in through:
                    todo.extend(self.nodes[c].output)
                elif boundaries:
                    out.append(None)
        return out

    def owners(self, name: str) -> list[str]:
        """Owners of an optimized node by its name ([] when the name says nothing)."""
        s = name[len("fused ") :] if name.startswith("fused ") else name
        for _ in range(4):
            if s in self.nodes:
                return [self._up(s)]
            for suffix in ("_W_DequantizeLinear", "_B_DequantizeLinear"):
                if s.endswith(suffix) and s[: -len(suffix)] in self.nodes:
                    return [s[: -len(suffix)]]
            for kind in ("_QuantizeLinear", "_DequantizeLinear"):
                if s.endswith(kind):
                    t = s[: -len(kind)]
                    if t in self.producer or t in self.consumers:
                        return self._qdq_owner(t, kind == "_QuantizeLinear")
            if s in self.producer:
                return [self._up(self.producer[s])]
            for pattern in _SUFFIXES:
                s2 = re.sub(pattern, "", s)
                if s2 != s:
                    s = s2
                    break
            else:
                return []
        return []

    def _qdq_owner(self, tensor: str, quantize: bool) -> list[str]:
        up = self._up(self.producer[tensor]) if tensor in self.producer else None
        down = self.down(tensor)
        if quantize and down:
            return down
        if up is not None and up in self.sites:
            return [up]
        return down or ([up] if up else [])


def _optimized_nodes(path: str) -> list[tuple[str, str, list[str], list[str]]]:
    m = onnx.load(path, load_external_data=False)
    return [(n.name, n.op_type, list(n.input), list(n.output)) for n in m.graph.node]


def _runs(events: list[dict]) -> list[list[dict]]:
    """Kernel events grouped by model run (in time order)."""
    runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e.get("name") == "model_run"
    )
    kernels = sorted(
        (e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")),
        key=lambda e: e["ts"],
    )
    out: list[list[dict]] = [[] for _ in runs]
    r = 0
    for e in kernels:
        while r < len(runs) and e["ts"] > runs[r][1]:
            r += 1
        if r == len(runs):
            break
        out[r].append(e)
    return [x for x in out if x]


def _charge(
    nodes: list[tuple[str, str, list[str], list[str]]], attribution: Attribution
) -> list[list[str]]:
    """Owners of every optimized node: by name, else the nearest owned neighbour."""
    owners = [attribution.owners(n[0]) if n[0] else [] for n in nodes]
    made_by = {o: i for i, n in enumerate(nodes) for o in n[3]}
    read_by: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for t in n[2]:
            read_by[t].append(i)
    sites = attribution.sites
    for _ in range(6):
        missing = [i for i, o in enumerate(owners) if not o]
        if not missing:
            break
        for i in missing:
            # producers, then consumers; a neighbour owned by a layer (site) before any other
            near = [made_by[t] for t in nodes[i][2] if t in made_by]
            near += [j for t in nodes[i][3] for j in read_by.get(t, [])]
            owned = [owners[j] for j in near if owners[j]]
            pick = next((o for o in owned if any(x in sites for x in o)), owned[0] if owned else [])
            owners[i] = pick
    return [o or ["~unowned"] for o in owners]


def _session(model: onnx.ModelProto, tmp: str, tag: str, threads: int) -> tuple:
    """A profiling session of ``model`` (ORT_ENABLE_ALL) saving its optimized graph in ``tmp``."""
    from onnxopt.runner import build_session, split_weights
    from onnxopt.timing import session_options

    so = session_options(threads, "all")
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, f"profile_{tag}")
    optimized = os.path.join(tmp, f"optimized_{tag}.onnx")
    so.optimized_model_filepath = optimized
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"optimized_{tag}.data"
    )
    so.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "64"
    )
    structure, names, arrays = split_weights(model)
    return build_session(structure, names, arrays, so), optimized


@phases.timed(phases.TIMING)
def measure(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    attribution: Attribution,
    *,
    threads: int = 2,
    seconds: float = 0.4,
    min_runs: int = 6,
) -> Timing:
    """Median time per run of every owner of ``model`` on ``feed`` (ORT_ENABLE_ALL)."""
    return measure_all(
        [model], feed, attribution, threads=threads, seconds=seconds, min_runs=min_runs
    )[0]


@phases.timed(phases.TIMING)
def measure_all(
    models: list[onnx.ModelProto],
    feed: dict[str, np.ndarray],
    attribution: Attribution,
    *,
    threads: int = 2,
    seconds: float = 0.4,
    min_runs: int = 6,
    max_runs: int = 100,
) -> list[Timing]:
    """:func:`measure` for several models, one after the other, each alone in the process:
    its session is made, run at least ``min_runs`` times and about ``seconds``, and closed
    before the next one's is made.

    Two profiling sessions alive at once disturb each other on two cores, whichever way they
    are run: in turns run by run, their spinning workers summed the PP-OCRv5 recognizer's
    float kernels to 21-25 ms a run (15-19 ms for its int8 placement, which then read slower
    than float in one run of two) where they take 14 ms alone (9.1 ms); with the workers
    stopped between runs, the pool's wake-up lands on a run's first parallel kernel (a 4-MAC
    test layer read 34 µs in float where it takes 12); in turns of several runs, a 37 M MAC
    convolution read 250 or 450 µs from one profile to the next. Alone, each model reads
    within 2 % from profile to profile."""
    out = []
    with tempfile.TemporaryDirectory(prefix="onnxopt_profile_") as tmp:
        for k, m in enumerate(models):
            sess, optimized = _session(m, tmp, str(k), threads)
            for _ in range(2):
                sess.run(None, feed)
            start, n = time.perf_counter(), 0
            while n < min_runs or (time.perf_counter() - start < seconds and n < max_runs):
                sess.run(None, feed)
                n += 1
            with open(sess.end_profiling()) as f:
                events = json.load(f)
            del sess
            out.append(_summarize(_runs(events)[-n:], _optimized_nodes(optimized), attribution))
        for f in glob.glob(os.path.join(tmp, "*")):
            os.remove(f)
    return out


def _summarize(
    runs: list[list[dict]],
    nodes: list[tuple[str, str, list[str], list[str]]],
    attribution: Attribution,
) -> Timing:
    owners = _charge(nodes, attribution)
    by_name = {n[0]: owners[i] for i, n in enumerate(nodes) if n[0]}
    per_run: list[dict[str, float]] = []
    for events in runs:
        aligned = len(events) == len(nodes) and all(
            e["args"].get("op_name") == n[1] for e, n in zip(events, nodes)
        )
        sums: dict[str, float] = defaultdict(float)
        for i, e in enumerate(events):
            own = owners[i] if aligned else by_name.get(e["name"][: -len("_kernel_time")])
            own = own or attribution.owners(e["name"][: -len("_kernel_time")]) or ["~unowned"]
            for o in own:
                sums[o] += e["dur"] / len(own)
        sums["~total"] = sum(e["dur"] for e in events)
        per_run.append(sums)
    keys = {k for r in per_run for k in r}
    med = {k: float(np.median([r.get(k, 0.0) for r in per_run])) for k in keys}
    total = med.pop("~total", 0.0)
    return Timing(med, total, len(per_run))


def slower_sites(
    float_t: Timing,
    int8_t: Timing,
    sites: list[str],
    weightless: set[str] | frozenset = frozenset(),
) -> tuple[list[str], dict[str, float]]:
    """(sites whose int8 form is slower than float beyond the slack, gain per site in µs).
    A site of ``weightless`` (:meth:`Attribution.weightless`) counts as slower unless it is
    faster beyond the slack: int8 can buy it speed only, and costs it accuracy (the whole-model
    race then decides, as for the others)."""
    gains, slower = {}, []
    for s in sites:
        tf, tq = float_t.owners.get(s, 0.0), int8_t.owners.get(s, 0.0)
        gains[s] = tf - tq
        slack = max(SLACK_US, SLACK * tf)
        if tq > tf + slack or (s in weightless and tq > tf - slack):
            slower.append(s)
    return slower, gains


#: the profile times the all-int8 model this much above the float model: the whole-model race
#: is not run. Per-node profiling inflates a small model's totals (the digits ResNet: 187 µs
#: int8 against 185 µs float profiled, 56 against 67 µs timed), so only a clear excess counts
#: (the PP-OCRv5 classifier: 1.2-1.5x profiled, 0.45-0.65x the speed for every peer's int8)
NO_RACE_ABOVE_FLOAT = 1.2


#: a float model whose kernels the profile sums to less (µs a run) is judged by whole-model
#: timings only: each profiled kernel adds ~1-2 µs, and int8 has more kernels (Q, DQ, layout
#: transposes). The digits ResNet profiles at 127 µs in float and 164 in int8, where whole
#: runs take 66 and 56 µs
PROFILE_TRUSTED_US = 2000.0


def profile_trusted(float_us: float) -> bool:
    """Whether the profile's totals may decide without a whole-model timing
    (:data:`PROFILE_TRUSTED_US`)."""
    return float_us >= PROFILE_TRUSTED_US


def may_beat_float(all_int8_us: float, float_t: Timing) -> bool:
    """Whether the all-int8 model may still be faster than float, its profile notwithstanding
    (:data:`NO_RACE_ABOVE_FLOAT`; always, on a model too short for its profile's totals)."""
    if not profile_trusted(float_t.total_us):
        return True
    return all_int8_us < float_t.total_us * NO_RACE_ABOVE_FLOAT


#: the layers with weights that the profile measured slower in int8 (and the elementwise
#: sites, which float would give a Q/DQ pair of their own) leave it only when the model with
#: them float races this much faster than all-int8 (and beyond noise): int8 keeps the weights
#: 4x smaller, and a smaller gain does not survive this CPU's change of regime. A MobileNetV2
#: at batch 32 with its 3 stem layers float raced 2.4-4.2 % ahead of all-int8 in one regime
#: (fp32 16 ms) and 19 % behind in the other (fp32 28 ms); it read 98.44 % against 98.67 %
#: all-int8
FLOAT_MARGIN = 0.05


#: the race of :func:`pays_as_a_whole` stops after six rounds (p = 0.016) when one placement
#: won every round and the ratio is this far or farther from 1: 3 points clear of
#: :data:`FLOAT_MARGIN`, more than four more rounds moved the ratio (the PP-OCRv5 detector's
#: placement read 0.83x and 0.88x after 6 rounds, 0.83x and 0.89x after 10). Its last four
#: rounds cost up to 1.3 s
RACE_CLEAR = 1.0 - FLOAT_MARGIN - 0.03


def pays_as_a_whole(
    all_int8: onnx.ModelProto, reduced: onnx.ModelProto, feed: dict[str, np.ndarray]
) -> Race:
    """The race of ``all_int8`` (b) against ``reduced`` (a: the layers measured slower left
    float). It runs the other way round, so that it goes on while ``reduced`` looks faster
    but the sign test is unsure; :func:`float_pays` reads whether the layers go float.

    The profile's layer times are the hypothesis, the whole model the proof: a layer's own
    kernel can grow in int8 while the model gains as a whole (leaving it float breaks an int8
    chain with Q/DQ pairs; on a MobileNetV2 at batch 32, 8 such layers left float cost 1.93x
    instead of 2.84x), and on an AMD EPYC whose speed moves between two regimes, the same
    MobileNetV2 placement with 3 layers float ran 2-6 % ahead of all-int8 in one and 16 %
    behind in the other."""
    return race(
        all_int8, reduced, feed, seconds=WHOLE_MODEL_SECONDS, early_decisive=RACE_CLEAR
    ).reversed()


def float_faster(r: Race) -> bool:
    """Whether the model with the slower layers float (``r.a``, as :func:`pays_as_a_whole`
    returns it) raced faster than all-int8 beyond noise."""
    return r.reversed().b_faster


def float_pays(r: Race) -> bool:
    """Whether the layers measured slower in int8 that have weights (or are elementwise) go
    float: the model with them float raced faster beyond noise, by :data:`FLOAT_MARGIN` or
    more. The MatMuls of two activations (:meth:`Attribution.weightless`) go float on any
    gain beyond noise."""
    return float_faster(r) and r.reversed().ratio <= 1.0 - FLOAT_MARGIN


def neighbours(att: Attribution, site: str) -> list[str | None]:
    """The sites ``site`` reads from and feeds, through data-movement ops and the activations
    an int8 range absorbs (Relu, Clip); None for each float boundary (a graph input or output,
    an op that is no site)."""
    through = (*PASS_THROUGH, "Relu", "Clip")
    out: list[str | None] = []
    for t in att.nodes[site].input:
        while True:
            p = att.producer.get(t)
            if p is None:
                out += [None] if t in att.graph_inputs else []  # else a weight
                break
            if p in att.sites:
                out.append(p)
                break
            n = att.nodes[p]
            if n.op_type not in through or not n.input:
                out.append(None)
                break
            t = n.input[0]
    for t in att.nodes[site].output:
        out += att.down(t, through, boundaries=True)
    return out


def between_int8(att: Attribution, site: str, floats: set[str]) -> bool:
    """Whether every neighbour of ``site`` (:func:`neighbours`) is a site not in ``floats``."""
    return all(n is not None and n not in floats for n in neighbours(att, site))


def kept_for_size(
    model: onnx.ModelProto,
    att: Attribution,
    slow: list[str],
    gains: dict[str, float],
    total_us: float,
    spent_us: float = 0.0,
) -> list[str]:
    """The sites of ``slow`` to keep in int8 for their size (:data:`SIZE_SHARE`): the least
    slower first, while their slowdowns add up (with ``spent_us`` already kept) to at most
    :data:`SMALL_SLOWDOWN` of the float model's time ``total_us``."""
    from onnxopt.weights import nbytes

    sizes = {t.name: nbytes(t) for t in model.graph.initializer}
    total = sum(sizes.values())
    budget = SMALL_SLOWDOWN * total_us
    out = []
    for s in sorted(slow, key=lambda s: (-gains.get(s, 0.0), s)):
        held = sum(sizes.get(i, 0) for i in set(att.nodes[s].input))
        cost = max(-gains.get(s, 0.0), 0.0)
        if not total or held < SIZE_SHARE * total:
            continue
        if spent_us + cost > budget:
            break
        out.append(s)
        spent_us += cost
    return out


def back_to_int8(
    att: Attribution,
    slow: list[str],
    gains: dict[str, float],
    total_us: float,
    floats: set[str],
    spent_us: float = 0.0,
) -> list[str]:
    """The sites of ``slow`` to keep in int8 all the same: each between sites only, none of
    them float (``floats``, or much slower than :data:`SMALL_SLOWDOWN` of the float model's
    time ``total_us``), where leaving it float would add a DequantizeLinear and a
    QuantizeLinear; the least slower first, while their slowdowns add up (with ``spent_us``
    already kept) to at most :data:`SMALL_SLOWDOWN` of ``total_us``."""
    budget = SMALL_SLOWDOWN * total_us
    big = floats | {s for s in slow if -gains.get(s, 0.0) > budget}
    out = []
    for s in sorted((s for s in slow if s not in big), key=lambda s: (-gains.get(s, 0.0), s)):
        cost = max(-gains.get(s, 0.0), 0.0)
        if spent_us + cost > budget:
            break
        if between_int8(att, s, big):
            out.append(s)
            spent_us += cost
    return out
