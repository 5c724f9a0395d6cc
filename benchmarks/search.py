"""``onnxopt search`` against the README's best hand-tuned pipeline, the Ray executor against
one worker, the same results on both executors, and a search killed halfway and resumed.

    python benchmarks/search.py                       # digits_resnet and mobilenetv2
    python benchmarks/search.py --models digits_resnet --no-ray --no-kill

For each model (built by ``onnxopt.zoo``, no downloads):

1. **Search vs hand-tuned.** ``onnxopt search MODEL --max-accuracy-drop 1`` with the default
   space, in a subprocess (timed; goal: within 15 minutes on 2 cores). The hand-tuned pipeline
   is the README's best (``cleanup,fusion,prune,distill,quantize-int8``, prune ratio 0.5), run
   as ``benchmarks/run_all.py`` runs it. Both learn from the same calibration data. The search
   judges its trials on held-out data (digits: 1,091 training images it did not learn from;
   MobileNetV2: 16 other random inputs); both models are then scored on the evaluation set
   neither saw (digits: the 450-image test split, accuracy; MobileNetV2: 16 more inputs,
   top-1 agreement with the original) and timed against each other in interleaved rounds
   (``onnxopt.timing.race``: onnxruntime, all optimizations, one thread, batch 1).
2. **Ray, 2 workers vs 1**: the same search on a local Ray cluster of two one-CPU worker
   nodes, then of one (``ray.cluster_utils.Cluster``, a head without CPUs), joined with
   ``--ray-address``: wall times and their ratio (goal: <= 0.6), ``RAY_ROUNDS`` runs of each
   interleaved (2, 1, 2, 1, ...), the median of the per-round ratios.
3. **Same results.** The trial tables of the local pool and Ray: every cheap result's quality
   and size must be equal; full results where both executors verified the trial in full.
4. **Killed and resumed.** A local search is interrupted (SIGINT, as Ctrl-C) once half of its
   steps are in the journal, then rerun with ``--resume``: no step computed before the kill is
   computed again.

Writes ``SEARCH.md`` and ``search.json`` (``--out``, default ``benchmarks/``); work files go to
``build/bench_search``. Latencies on a shared machine are noisy; accuracy and sizes are not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers
from onnxopt import zoo

logger = logging.getLogger("search_bench")

MODELS = ("digits_resnet", "mobilenetv2")
HAND = ["cleanup", "fusion", "prune", "distill", "quantize-int8"]
HAND_OPTIONS = {"prune": {"ratio": 0.5}}
HAND_BUDGET = {"digits": {"max_accuracy_drop": 1.0}, "image": {"min_cosine": 0.98}}
LIMIT_S = 15 * 60
#: Ray runs of each size, interleaved (2 workers, 1, 2, 1, ...); the ratio is their median
RAY_ROUNDS = 3
#: Ray on this machine only: loopback addresses, no token file shared with other clusters
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
ENV = {
    **os.environ,
    **RAY_ENV,
    "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


# --------------------------------------------------------------------------- data


def write_data(name: str, work: Path) -> dict[str, Any]:
    """calib.npz (learn), judge.npz (the search's trials), eval runs and labels (scoring)."""
    work.mkdir(parents=True, exist_ok=True)
    if zoo.spec(name).kind == "digits":
        d = zoo.digits_data()
        np.savez(work / "calib.npz", input=d["X_train"][:256].reshape(8, 32, 1, 8, 8))
        np.savez(work / "judge.npz", input=d["X_train"][256:], labels=d["y_train"][256:])
        hand = work / "hand_feeds.npz"  # as run_all: the same 256 images, with labels
        np.savez(
            hand,
            input=d["X_train"][:256].reshape(8, 32, 1, 8, 8),
            labels=d["y_train"][:256].reshape(8, 32),
        )
        return {"eval": [{"input": d["X_test"]}], "labels": d["y_test"], "hand": hand, "batch": 50}

    def runs(seed: int, n: int) -> list[dict[str, np.ndarray]]:
        return [zoo.example_inputs(name, 1, seed=seed + i) for i in range(n)]

    for file, seed, n in (("calib.npz", 100, 8), ("judge.npz", 2000, 16)):
        rs = runs(seed, n)
        np.savez(work / file, **{k: np.stack([r[k] for r in rs]) for k in rs[0]})
    return {"eval": runs(1000, 16), "labels": None, "hand": work / "calib.npz", "batch": None}


def score(path: Path, data: dict[str, Any], reference: Path) -> float:
    """Accuracy (%) with labels, else top-1 agreement (%) with ``reference``."""
    from onnxopt.timing import session

    def first(p: Path) -> list[np.ndarray]:
        s = session(str(p), threads=2)
        return [s.run(None, r)[0] for r in data["eval"]]

    out = first(path)
    if data["labels"] is not None:
        return 100.0 * float((out[0].argmax(-1) == data["labels"]).mean())
    ref = first(reference)
    return 100.0 * float(np.mean([(o.argmax(-1) == r.argmax(-1)).mean() for o, r in zip(out, ref)]))


# --------------------------------------------------------------------------- runs


def search(model: Path, work: Path, out: str, *extra: str, data: dict[str, Any]) -> dict[str, Any]:
    """One ``onnxopt search`` in a subprocess: its wall time and front.json."""
    args = [sys.executable, "-m", "onnxopt", "search", str(model)]
    args += ["--data", str(work / "judge.npz"), "--calib-data", str(work / "calib.npz")]
    if data["batch"]:
        args += ["--batch", str(data["batch"])]
    args += ["--max-accuracy-drop", "1", "--out", str(work / out), *extra]
    t0 = time.perf_counter()
    r = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=2 * LIMIT_S)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"search {out} failed: {r.stderr.strip()[-500:]}")
    front = json.loads((work / out / "front.json").read_text())
    return {"wall_s": wall, "front": front, "dir": work / out}


def hand_tuned(model: Path, work: Path, data: dict[str, Any], kind: str) -> dict[str, Any]:
    job = {
        "kind": "onnxopt",
        "input": str(model),
        "output": str(work / "hand.onnx"),
        "passes": HAND,
        "options": HAND_OPTIONS,
        "budget": HAND_BUDGET[kind],
        "feeds": str(data["hand"]),
    }
    res = peers.run_job(job, LIMIT_S)
    if res.get("status") != "ok":
        raise RuntimeError(f"hand-tuned pipeline: {res.get('status')}")
    return {"path": work / "hand.onnx", "seconds": res.get("seconds"), "passes": res.get("passes")}


def race(a: Path, b: Path, data: dict[str, Any]) -> dict[str, Any]:
    from onnxopt.model import load_model
    from onnxopt.search.driver import bench_feed
    from onnxopt.timing import race as _race

    ma, mb = load_model(a), load_model(b)
    feed = bench_feed(ma, data["eval"][0])
    r = _race(ma, mb, feed, threads=1, seconds=4.0, min_rounds=20, max_rounds=60)
    return {
        "a_ms": r.a_ms,
        "b_ms": r.b_ms,
        "ratio": r.ratio,
        "rounds": r.rounds,
        "b_wins": r.b_wins,
        "p_value": r.p_value,
    }


def same_results(a_dir: Path, b_dir: Path) -> dict[str, Any]:
    a = {t["id"]: t for t in json.loads((a_dir / "trials.json").read_text())}
    b = {t["id"]: t for t in json.loads((b_dir / "trials.json").read_text())}
    cols = ("quality", "size_mb", "feasible")
    cheap = [tid for tid in a if a[tid]["cheap"] and b.get(tid, {}).get("cheap")]
    cheap_diff = [
        t for t in cheap if [a[t]["cheap"][c] for c in cols] != [b[t]["cheap"][c] for c in cols]
    ]
    both = [t for t in a if a[t]["full"] and b.get(t, {}).get("full")]
    full_diff = [
        t for t in both if [a[t]["full"][c] for c in cols] != [b[t]["full"][c] for c in cols]
    ]
    fa = {p["id"] for p in json.loads((a_dir / "front.json").read_text())["front"]}
    fb = {p["id"] for p in json.loads((b_dir / "front.json").read_text())["front"]}
    return {
        "trials": len(a),
        "cheap_compared": len(cheap),
        "cheap_differ": cheap_diff,
        "full_compared": len(both),
        "full_differ": full_diff,
        "front_a": sorted(fa),
        "front_b": sorted(fb),
    }


@contextlib.contextmanager
def ray_cluster(workers: int) -> Iterator[str]:
    """A local Ray cluster: a head without CPUs and ``workers`` nodes of one CPU each (Ray's
    own multi-node test harness, all on the loopback interface); yields its address."""
    os.environ.update(RAY_ENV)  # read when Ray is imported
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(workers):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def kill_and_resume(model: Path, work: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Interrupt a local search (SIGINT) once half its steps are journaled; resume it."""
    out = work / "killed"
    args = [sys.executable, "-m", "onnxopt", "search", str(model)]
    args += ["--data", str(work / "judge.npz"), "--calib-data", str(work / "calib.npz")]
    args += ["--batch", str(data["batch"])] if data["batch"] else []
    args += ["--max-accuracy-drop", "1", "--out", str(out)]
    total = _total_steps(work)
    proc = subprocess.Popen(
        args,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts `... &` with SIGINT ignored, and the child would
        # inherit that (Python then installs no KeyboardInterrupt handler): the search would
        # run to its end and the benchmark would measure nothing
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    journal = out / "cache" / "journal.jsonl"
    while proc.poll() is None and _journaled_steps(journal) < total // 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    before = _journaled_steps(journal)
    t0 = time.perf_counter()
    r = subprocess.run(
        [*args, "--resume"], env=ENV, capture_output=True, text=True, timeout=2 * LIMIT_S
    )
    if r.returncode != 0:
        raise RuntimeError(f"resume failed: {r.stderr.strip()[-500:]}")
    front = json.loads((out / "front.json").read_text())
    keys = [
        json.loads(line)["key"] for line in journal.read_text().splitlines() if '"step"' in line
    ]
    return {
        "total_steps": total,
        "interrupt_exit_code": proc.returncode,
        # the repository's folder left out: the JSON is committed
        "interrupt_message": (err.strip().splitlines() or [""])[-1].replace(f"{ROOT}/", ""),
        "steps_before_kill": before,
        "resume_computed_steps": front["computed"]["steps"],
        "resume_cached_steps": front["computed"]["steps_cached"],
        "steps_computed_twice": len(keys) - len(set(keys)),
        "resume_s": time.perf_counter() - t0,
    }


def _total_steps(work: Path) -> int:
    journal = work / "local" / "cache" / "journal.jsonl"
    return _journaled_steps(journal)


def _journaled_steps(journal: Path) -> int:
    if not journal.exists():
        return 0
    return sum('"kind": "step"' in line for line in journal.read_text().splitlines())


# --------------------------------------------------------------------------- one model


def run_model(name: str, root: Path, *, ray: bool, kill: bool) -> dict[str, Any]:
    work = root / name
    model = zoo.build(name, "torchscript")
    kind = zoo.spec(name).kind
    data = write_data(name, work)
    logger.info("%s: hand-tuned pipeline", name)
    hand = hand_tuned(model, work, data, kind)
    logger.info("%s: search (local pool)", name)
    local = search(model, work, "local", data=data)
    chosen = local["front"]["chosen"]
    best = local["dir"] / "best.onnx"
    res: dict[str, Any] = {
        "model": name,
        "search_s": local["wall_s"],
        "within_15_min": local["wall_s"] <= LIMIT_S,
        "chosen": next((p for p in local["front"]["front"] if p["id"] == chosen), None),
        "trials": len(json.loads((local["dir"] / "trials.json").read_text())),
        "computed": local["front"]["computed"],
        "metric": "accuracy %" if data["labels"] is not None else "top-1 agreement %",
        "original_score": score(model, data, model),
        "hand_score": score(hand["path"], data, model),
        "search_score": score(best, data, model) if chosen else None,
        "hand_s": hand["seconds"],
    }
    if chosen:
        res["race"] = race(hand["path"], best, data)  # a: hand-tuned, b: the search's choice
    if ray:
        walls: dict[int, list[float]] = {2: [], 1: []}
        for k in range(RAY_ROUNDS):  # interleaved: a slow spell of the machine hits both
            for w in (2, 1):
                logger.info("%s: search on a local Ray cluster of %d worker node(s)", name, w)
                out = f"ray{w}" if k == 0 else f"ray{w}_{k}"
                with ray_cluster(w) as address:
                    r = search(
                        model, work, out, "--executor", "ray", "--ray-address", address, data=data
                    )
                walls[w].append(r["wall_s"])
                if k == 0 and w == 2:
                    two = r
        ratios = [a / b for a, b in zip(walls[2], walls[1])]
        res["ray"] = {
            "two_workers_s": float(np.median(walls[2])),
            "one_worker_s": float(np.median(walls[1])),
            "ratio": float(np.median(ratios)),
            "ratios": ratios,
            "same_as_local": same_results(local["dir"], two["dir"]),
        }
    if kill:
        logger.info("%s: killed and resumed", name)
        res["killed"] = kill_and_resume(model, work, data)
    return res


# --------------------------------------------------------------------------- report


def _each(ratios: list[float] | None) -> str:
    """`` (0.58, 0.63, 0.60)``: the per-round ratios, when there were several rounds."""
    return f" ({', '.join(f'{v:.2f}' for v in ratios)})" if ratios else ""


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        "# `onnxopt search` benchmark",
        "",
        "Produced by `python benchmarks/search.py`. The machine is a shared 2-core VM: latency "
        "figures carry noise (see the interleaved rounds); accuracies, sizes and step counts "
        "do not.",
        "",
        "## Search vs the README's best hand-tuned pipeline (prune 50 % + distill + int8)",
        "",
        "| model | metric | original | hand-tuned | search's choice | chosen pipeline | "
        "latency hand / search (ms, interleaved) | search faster in rounds | search time | trials |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in results:
        c, rc = r.get("chosen") or {}, r.get("race") or {}
        lat = f"{rc['a_ms']:.4g} / {rc['b_ms']:.4g} ({rc['ratio']:.2f}x)" if rc else "-"
        wins = f"{rc['b_wins']}/{rc['rounds']} (p={rc['p_value']:.2g})" if rc else "-"
        lines.append(
            f"| {r['model']} | {r['metric']} | {r['original_score']:.2f} | {r['hand_score']:.2f} | "
            f"{(r['search_score'] or 0):.2f} | {c.get('label', 'none')} | {lat} | {wins} | "
            f"{r['search_s']:.0f} s | {r['trials']} |"
        )
    ray = [r for r in results if "ray" in r]
    if ray:
        lines += [
            "",
            "## Ray executor: a local cluster of 2 one-CPU worker nodes vs 1",
            "",
            f"{RAY_ROUNDS} runs of each, interleaved; wall times and ratio are medians (the "
            "per-round ratios in brackets); the results compared are the first round's.",
            "",
            "| model | 2 workers | 1 worker | ratio | cheap results equal to the local pool | "
            "full results equal | front (local) | front (ray) |",
            "|---|---:|---:|---:|---|---|---|---|",
        ]
        for r in ray:
            x, s = r["ray"], r["ray"]["same_as_local"]
            lines.append(
                f"| {r['model']} | {x['two_workers_s']:.0f} s | {x['one_worker_s']:.0f} s | "
                f"{x['ratio']:.2f}{_each(x.get('ratios'))} | "
                f"{s['cheap_compared'] - len(s['cheap_differ'])}/"
                f"{s['cheap_compared']} | {s['full_compared'] - len(s['full_differ'])}/"
                f"{s['full_compared']} | {', '.join(s['front_a'])} | {', '.join(s['front_b'])} |"
            )
    killed = [r for r in results if "killed" in r]
    if killed:
        lines += [
            "",
            "## Killed halfway (SIGINT) and resumed",
            "",
            "| model | steps in all | journaled before the kill | computed after resume | "
            "cached on resume | computed twice | exit code of the interrupted run |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in killed:
            k = r["killed"]
            lines.append(
                f"| {r['model']} | {k['total_steps']} | {k['steps_before_kill']} | "
                f"{k['resume_computed_steps']} | {k['resume_cached_steps']} | "
                f"{k['steps_computed_twice']} | {k['interrupt_exit_code']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray runs")
    ap.add_argument("--no-kill", action="store_true", help="skip the killed-and-resumed run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "bench_search")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.work.exists():
        import shutil

        shutil.rmtree(args.work)
    results = [
        run_model(m, args.work, ray=not args.no_ray, kill=not args.no_kill)
        for m in args.models.split(",")
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "SEARCH.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
