"""Issue #14's goals on the real-model corpus, one table per goal, in ``benchmarks/REALZOO.md``.

    python benchmarks/realzoo_goals.py [--goals cost,speed,ocr,prune,merge] [--only A,B]
                                       [--quantize A,B] [--n-lossy 64]

Goals (each section of REALZOO.md repeats the command that made it):

- ``cost`` (optimizer cost, zero rollbacks, drop-in): read from ``benchmarks/OPTIMIZER_COST.json``,
  written by ``python benchmarks/optimizer_cost.py --corpus`` (run that first).
- ``speed`` (never slower): every model that ``onnxopt optimize`` wrote in that run, and the
  models ``onnxopt quantize IN -o OUT --data DATA`` writes for ``--quantize`` entries, timed
  against their input with :func:`onnxopt.timing.race` (interleaved rounds, ORT_ENABLE_ALL, 2
  threads, one sample). "slower" = the input's median is lower and the input won the rounds
  beyond a one-sided sign test at 5 %.
- ``ocr``: PP-OCRv5 with the int8 det/rec/cls that ``speed`` wrote, the package's own pipeline on
  the 62 corpus images: exact whole-text agreement with the fp32 pipeline, and seconds per image
  (fp32 and int8 alternated, two rounds each, median; 2 threads).
- ``prune``: ``onnxopt prune IN -o OUT --target-flops 0.5 --data DATA`` (with
  ``--max-accuracy-drop 1`` for the trained digits model, whose data has labels) on the raw
  (``optimize=False``) dynamo exports of the zoo's CNNs and on their clean dynamo exports:
  MACs removed, digits accuracy (or top-1 agreement with the input, for the random-weight
  ImageNet-shaped CNNs), latency against the input.
- ``merge``: every skl2onnx classifier's accuracy as onnxopt reports it (``optimize --data`` on
  the test split with labels) against scikit-learn's own ``score``; then every trio of the digits
  classifiers merged with ``onnxopt merge --mode average --on outputs`` and with ``--mode weighted
  --fit-weights TRAIN.npz``, members cut to their ``probabilities`` output first (this clone's
  ``merge`` has no ``--member-output`` yet), accuracy of the merged model on the test split.

Lossy commands (quantize, prune) get ``--n-lossy`` samples of the corpus data (64 by default:
they verify and calibrate on all of them). Latency on a shared machine is noisy. Results are kept
in ``benchmarks/REALZOO.json``; a run over some goals or entries updates only those.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import realzoo
from benchmarks import realzoo_tables as tables

OUT_MD = ROOT / "benchmarks" / "REALZOO.md"
STORE = OUT_MD.with_suffix(".json")
COST = ROOT / "benchmarks" / "OPTIMIZER_COST.json"
WORK = ROOT / "build" / "realzoo_goals"
GOALS = ("cost", "speed", "ocr", "prune", "merge")
QUANTIZE = ("ppocrv5_det", "ppocrv5_rec", "ppocrv5_cls", "keras_cnn", "keras_mlp",
            "digits_cnn_wide_dynamo", "resnet18_dynamo", "mobilenetv2_dynamo_raw",
            "sk_digits_mlp", "bert_small_dynamo")  # fmt: skip
PRUNE = ("digits_resnet", "resnet18", "mobilenetv2")
#: --reuse: keep a quantized model and its report from an earlier run
REUSE = False


def onnxopt(*argv: str, timeout: float = 1800) -> tuple[int, str]:
    """``onnxopt ARGV`` in a fresh process: exit code and the last line of its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, (lines or [""])[-1][:300]


def race(src: Path, out: Path, data: Path) -> dict[str, Any]:
    """The written model against its input, interleaved, on one sample of ``data``."""
    import onnx

    from onnxopt.data import load_feeds
    from onnxopt.timing import race as _race
    from onnxopt.timing import sign_test

    a, b = onnx.load(str(src)), onnx.load(str(out))
    feed = load_feeds(data, a, limit=1).runs[0]
    r = _race(a, b, feed, threads=2, seconds=3.0)
    lost = r.rounds - r.b_wins
    p_slower = sign_test(lost, r.rounds)
    slower = r.ratio > 1.0 and p_slower < 0.05
    return {"in_ms": r.a_ms, "out_ms": r.b_ms, "ratio": r.ratio, "rounds": r.rounds,
            "out_wins": r.b_wins, "p_slower": p_slower, "slower": slower,
            "same_graph": same_graph(a, b)}  # fmt: skip


def same_graph(a: Any, b: Any) -> bool:
    """Whether two models hold the same computation: the same nodes (op, domain, inputs,
    outputs, attributes; names and doc strings aside) and the same initializers, byte for
    byte. A race between two such models can only measure noise: at a one-sided 5 % level the
    sign test flags about 1 in 20 of them as slower."""

    def nodes(m: Any) -> list[tuple]:
        return [
            (n.op_type, n.domain, tuple(n.input), tuple(n.output),
             tuple(x.SerializeToString() for x in n.attribute))
            for n in m.graph.node
        ]  # fmt: skip

    def inits(m: Any) -> dict[str, bytes]:
        from onnx import numpy_helper

        return {t.name: numpy_helper.to_array(t).tobytes() for t in m.graph.initializer}

    return nodes(a) == nodes(b) and inits(a) == inits(b)


def _report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _lossy(rep: dict[str, Any]) -> str:
    """What the report says about its lossy passes: kept, or why not."""
    out = []
    for p in rep.get("passes", []):
        if not p.get("exact") and p.get("status") not in (None, "nothing to do"):
            why = f" ({p['reason'][:140]})" if p.get("reason") and p["status"] != "kept" else ""
            out.append(f"{p['name']}: {p['status']}{why}")
    return "; ".join(out) or "no lossy pass ran"


# --------------------------------------------------------------------------- goals


def goal_speed(chosen: list[Any], quantize: set[str], n_lossy: int, races: bool) -> dict[str, Any]:
    """optimize's outputs from the cost run (``races``), and quantize's, each raced against its
    input."""
    rows = {}
    for e in chosen:
        src = e.build()
        opt = ROOT / "build" / "optimizer_cost" / "corpus" / e.name / "onnxopt.onnx"
        row: dict[str, Any] = {"name": e.name}
        if races and opt.exists():
            row["optimize"] = race(src, opt, e.data(8))
        if e.name in quantize:
            row["quantize"] = quantize_one(e, n_lossy)
        print(f"speed {e.name}: {row}", file=sys.stderr, flush=True)
        rows[e.name] = row
        _save({"speed": {e.name: row}}, n_lossy)  # a run cut short keeps what it measured
    return rows


def quantize_one(e: Any, n: int) -> dict[str, Any]:
    """``onnxopt quantize`` on one entry with ``n`` samples; the result raced against the input."""
    d = WORK / "quant"
    d.mkdir(parents=True, exist_ok=True)
    out, rep = d / f"{e.name}.onnx", d / f"{e.name}.report.json"
    if not (REUSE and out.exists() and rep.exists()):
        rep.unlink(missing_ok=True)
        rc, last = onnxopt("quantize", str(e.build()), "-o", str(out), "--data", str(e.data(n)),
                           "--report", str(rep))  # fmt: skip
        if rc != 0:
            return {"status": f"exit {rc}: {last}"}
    r = _report(rep)
    # the path as the repository sees it (the JSON is committed: no machine's folders in it)
    path = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    return {"status": "ok", "lossy": _lossy(r), "path": str(path), "n": n,
            "flops": [r.get("original", {}).get("flops"), r.get("final", {}).get("flops")],
            **race(e.build(), out, e.data(8))}  # fmt: skip


def goal_ocr(speed: dict[str, Any]) -> dict[str, Any]:
    """The int8 PP-OCRv5 pipeline against fp32: exact text and seconds per image."""
    from onnxopt.zoo import ocr

    int8 = {}
    for k in ocr.KINDS:
        q = speed.get(f"ppocrv5_{k}", {}).get("quantize", {})
        if q.get("status") != "ok":
            return {"status": f"no int8 ppocrv5_{k}: run --goals speed first ({q.get('status')})"}
        int8[k] = str(ROOT / q["path"])  # relative to the repository (absolute before)
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    res: dict[str, Any] = {}
    for _ in range(2):
        for label, models in (("fp32", {}), ("int8", int8)):
            r = ocr.evaluate(**models, threads=2)
            times[label].append(r["seconds_per_image"])
            res[label] = r
    return {
        "status": "ok",
        "agreement": res["int8"]["agreement"],
        "fp32_agreement": res["fp32"]["agreement"],
        "cer": res["int8"]["cer"],
        "images": res["int8"]["images"],
        "fp32_s": float(np.median(times["fp32"])),
        "int8_s": float(np.median(times["int8"])),
        "lossy": {k: speed[f"ppocrv5_{k}"]["quantize"]["lossy"] for k in ocr.KINDS},
        "ground_truth": ocr.ground_truth_agreement(),
    }


def goal_prune(n: int) -> dict[str, Any]:
    """``prune --target-flops 0.5`` on the raw and the clean dynamo export of each zoo CNN."""
    by_name = {e.name: e for e in realzoo.entries(("zoo", "raw"))}
    rows = {}
    for cnn in PRUNE:
        for kind in ("dynamo_raw", "dynamo"):
            e = by_name[f"{cnn}_{kind}"]
            rows[e.name] = prune_one(e, n)
            print(f"prune {e.name}: {rows[e.name]}", file=sys.stderr, flush=True)
    return rows


def prune_one(e: Any, n: int) -> dict[str, Any]:
    d = WORK / "prune"
    d.mkdir(parents=True, exist_ok=True)
    src, out, rep = e.build(), d / f"{e.name}.onnx", d / f"{e.name}.report.json"
    rep.unlink(missing_ok=True)
    # a trained classifier (labels in its data) is held to its accuracy, as its user would
    # ask; the random-weight CNNs to the default cosine budget
    budget = ["--max-accuracy-drop", "1"] if e.metric else []
    rc, last = onnxopt("prune", str(src), "-o", str(out), "--target-flops", "0.5",
                       "--data", str(e.data(n)), "--report", str(rep), *budget)  # fmt: skip
    if rc != 0:
        return {"status": f"exit {rc}: {last}"}
    r = _report(rep)
    macs = [_macs(src), _macs(out)]
    row = {"status": "ok", "macs": macs, "removed": 1 - macs[1] / macs[0] if macs[0] else 0.0,
           "lossy": _lossy(r), "top1": r.get("final_vs_original", {}).get("top1"),
           **race(src, out, e.data(8))}  # fmt: skip
    if e.metric:
        row["metric"] = [e.metric(src), e.metric(out)]
    return row


def _macs(path: Path) -> int:
    import onnx

    from onnxopt.summary import count_macs

    return count_macs(onnx.load(str(path)))[0]


def goal_merge() -> dict[str, Any]:
    """True accuracy of every skl2onnx classifier; every trio of digits classifiers merged."""
    from benchmarks import realzoo_merge

    return realzoo_merge.run(WORK / "merge")


# --------------------------------------------------------------------------- main


def _load() -> dict[str, Any]:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def _save(new: dict[str, Any], n_lossy: int) -> dict[str, Any]:
    """Merge this run's goals into the store as it is now (another run may have written it
    meanwhile); speed rows are merged per model (a quantize-only run keeps the races)."""
    store = _load()
    for goal, value in new.items():
        if goal == "speed":
            for name, row in value.items():
                store.setdefault("speed", {}).setdefault(name, {}).update(row)
        else:
            store[goal] = value
    if "prune" in new:
        store["n_lossy"] = n_lossy
    STORE.write_text(json.dumps(store, indent=1, default=str))
    return store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--goals", default=",".join(GOALS), help="comma-separated: " + ",".join(GOALS))
    ap.add_argument("--only", help="speed: comma-separated corpus entries (default: all)")
    ap.add_argument("--quantize", default=",".join(QUANTIZE), help="speed: entries to quantize")
    ap.add_argument("--no-races", dest="races", action="store_false",
                    help="speed: only quantize (do not race optimize's outputs)")  # fmt: skip
    ap.add_argument("--n-lossy", type=int, default=64, help="samples for quantize and prune")
    ap.add_argument("--reuse", action="store_true", help="speed: reuse earlier quantize outputs")
    args = ap.parse_args(argv)
    global REUSE
    REUSE = args.reuse
    goals = [g.strip() for g in args.goals.split(",") if g.strip()]
    new: dict[str, Any] = {}
    if "cost" in goals:
        new["cost"] = json.loads(COST.read_text()) if COST.exists() else []
    if "speed" in goals:
        chosen = realzoo.select(args.only)
        quant = {q for q in args.quantize.split(",") if q} & {e.name for e in chosen}
        new["speed"] = goal_speed(chosen, quant, args.n_lossy, args.races)
    if "ocr" in goals:
        new["ocr"] = goal_ocr({**_load().get("speed", {}), **new.get("speed", {})})
    if "prune" in goals:
        new["prune"] = goal_prune(args.n_lossy)
    if "merge" in goals:
        new["merge"] = goal_merge()
    store = _save(new, args.n_lossy)
    order = [e.name for e in realzoo.entries()]
    OUT_MD.write_text(tables.render(store, order))
    print(OUT_MD.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
