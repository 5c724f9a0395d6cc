"""Big models and control flow, measured (not in CI: tens of GB of disk, minutes to hours).

    python benchmarks/big_models.py [--only decoder,bert,roundtrip,stream,body]
        [--layers 7 --hidden 4096] [--cap-gb 14] [--work build/big_models]

Every tool runs in a fresh process under ``/usr/bin/time -v`` (peak RSS = its "Maximum
resident set size"); the peers run under an address-space cap (``--cap-gb``, default 60 % of
RAM) so that a peer that would need more fails with a row instead of pushing the machine into
the kernel's OOM killer.

- ``decoder``: a generated decoder-style model (``onnxopt.zoo.decoder``, fp32 random weights,
  external data; 7 layers of hidden 4096: 6.7 GB) through ``onnxopt optimize`` (cleanup +
  fusion, every pass verified) and ``onnxopt quantize --mode dynamic``, then onnxsim and
  onnxslim on the same file; the optimized model's outputs are compared with the original's.
  Goal: onnxopt's peak RSS at most 2x the model's size.
- ``bert``: the zoo's BERT-base-style encoder (417 MB) through ``onnxopt optimize``, onnxsim
  and onnxslim. Goal: onnxopt's peak at most 1.5x the model's size.
- ``roundtrip``: a 2.5 GB decoder through optimize, verify (original vs optimized: outputs
  equal), quantize (dynamic) and verify, prune --dry-run, bench and inspect.
- ``stream``: a streaming GRU whose state update is a ``torch.cond`` (dynamo export: an If
  with the GRU in both branches): nodes inside the bodies after onnxopt, onnxsim (with
  ``include_subgraph=True``) and onnxslim, outputs compared on both branches.
- ``body``: a recurrent cell in a Loop body (MatMuls on the loop-carried state) through
  static int8 and int4, calibrated on data: how many MatMuls of the body each rewrites.

Writes ``benchmarks/BIG_MODELS.md`` and ``build/big_models/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import big_models_extra as extra

PY = sys.executable
GB = 1e9


def timed(cmd: list[str], cap_bytes: int | None = None, timeout: float = 7200) -> dict:
    """Run ``cmd`` under /usr/bin/time -v (and an address-space cap): status, seconds, peak."""
    full = ["/usr/bin/time", "-v", *cmd]
    if cap_bytes:
        full = ["prlimit", f"--as={cap_bytes}", "--", *full]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s", "seconds": timeout}
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    out = {
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_gb": round(int(peak.group(1)) * 1024 / GB, 2) if peak else None,
        "rc": p.returncode,
        "status": "ok" if p.returncode == 0 else "failed",
    }
    if p.returncode != 0:
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
        tail = [ln for ln in lines if "\t" not in ln[:1]][-3:]
        out["status"] = "failed: " + " | ".join(t.strip()[:160] for t in tail)
        if cap_bytes and ("MemoryError" in p.stderr or "bad_alloc" in p.stderr):
            out["status"] = f"failed: needs more than the {cap_bytes / GB:.0f} GB cap"
    return out


def model_size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def onnxopt_cmd(*args: str) -> list[str]:
    return [PY, "-m", "onnxopt", *args]


def peer_cmd(tool: str, src: Path, dst: Path) -> list[str]:
    code = {
        "onnxsim": "import onnxsim,sys; m,ok=onnxsim.simplify(sys.argv[1]); assert ok",
        "onnxslim": "import onnxslim,sys; m=onnxslim.slim(sys.argv[1])",
    }[tool]
    save = (
        "; import onnx; onnx.save(m, sys.argv[2], save_as_external_data=True, "
        "location=sys.argv[2].split('/')[-1]+'.data')"
    )
    return [PY, "-c", code + save, str(src), str(dst)]


def tool_rows(src: Path, work: Path, cap: int, extra_runs: list[tuple[str, list[str]]]) -> list:
    """onnxopt's runs (``extra_runs``: label, command) then onnxsim and onnxslim on ``src``."""
    size = model_size(src)
    rows = []
    for label, cmd in extra_runs:
        r = timed(cmd)
        rows.append({"tool": label, **r, "ratio": _ratio(r, size)})
        print(f"  {label}: {r}", flush=True)
    for tool in ("onnxsim", "onnxslim"):
        dst = work / f"{tool}.onnx"
        r = timed(peer_cmd(tool, src, dst), cap)
        rows.append({"tool": tool, **r, "ratio": _ratio(r, size)})
        print(f"  {tool}: {r}", flush=True)
        for p in (dst, dst.with_name(dst.name + ".data")):
            p.unlink(missing_ok=True)
    return rows


def _ratio(r: dict, size: int) -> float | None:
    return round(r["peak_gb"] * GB / size, 2) if r.get("peak_gb") else None


def decoder(args: argparse.Namespace, work: Path) -> dict:
    from onnxopt.zoo.decoder import write_decoder

    src = work / f"decoder_{args.layers}x{args.hidden}.onnx"
    if not src.exists():
        write_decoder(src, layers=args.layers, hidden=args.hidden, heads=32, vocab=32000, seq=8)
    size = model_size(src)
    print(f"decoder: {src} ({size / GB:.2f} GB)", flush=True)
    out = work / "decoder_out"
    out.mkdir(exist_ok=True)
    opt, q = out / "optimized.onnx", out / "int8.onnx"
    rows = tool_rows(
        src,
        out,
        args.cap,
        [
            (
                "onnxopt optimize",
                onnxopt_cmd(
                    "optimize", str(src), "-o", str(opt), "--report", str(out / "optimize.json")
                ),
            ),
            (
                "onnxopt quantize --mode dynamic",
                onnxopt_cmd(
                    "quantize",
                    str(src),
                    "-o",
                    str(q),
                    "--mode",
                    "dynamic",
                    "--report",
                    str(out / "quantize.json"),
                ),
            ),
        ],
    )
    res = {"model": str(src), "size_gb": round(size / GB, 2), "rows": rows}
    res["optimized_vs_original"] = extra.compare_outputs(src, opt)
    res["int8_vs_original"] = extra.compare_outputs(src, q)
    res["reports"] = {k: extra.report_summary(out / f"{k}.json") for k in ("optimize", "quantize")}
    for p in out.iterdir():
        p.unlink()
    return res


def bert(args: argparse.Namespace, work: Path) -> dict:
    from onnxopt import zoo

    src = zoo.build("bert_base", "torchscript")
    out = work / "bert_out"
    out.mkdir(exist_ok=True)
    rows = tool_rows(
        src,
        out,
        args.cap,
        [("onnxopt optimize", onnxopt_cmd("optimize", str(src), "-o", str(out / "opt.onnx")))],
    )
    return {"model": str(src), "size_gb": round(model_size(src) / GB, 3), "rows": rows}


def roundtrip(args: argparse.Namespace, work: Path) -> dict:
    from onnxopt.zoo.decoder import write_decoder

    src = work / "decoder_2g5.onnx"
    if not src.exists():
        write_decoder(src, layers=10, hidden=2048, heads=16, vocab=32000, seq=8)
    out = work / "roundtrip_out"
    out.mkdir(exist_ok=True)
    opt, q = str(out / "opt.onnx"), str(out / "int8.onnx")
    steps = [
        ("optimize", onnxopt_cmd("optimize", str(src), "-o", opt)),
        ("verify original vs optimized", onnxopt_cmd("verify", str(src), opt)),
        (
            "quantize --mode dynamic",
            onnxopt_cmd("quantize", str(src), "-o", q, "--mode", "dynamic", "--allow-slower"),
        ),
        # int8 is lossy: judged against the lossy budget (cosine 0.99), not the exact tolerance
        ("verify original vs int8 --budget", onnxopt_cmd("verify", str(src), q, "--budget")),
        ("prune --dry-run", onnxopt_cmd("prune", str(src), "--dry-run", "--ratio", "0.3")),
        ("bench", onnxopt_cmd("bench", str(src), "--runs", "3", "--warmup", "1")),
        ("inspect", onnxopt_cmd("inspect", str(src))),
    ]
    rows = []
    size = model_size(src)
    for label, cmd in steps:
        r = timed(cmd)
        rows.append({"step": label, **r, "ratio": _ratio(r, size)})
        print(f"  {label}: {r}", flush=True)
    shutil.rmtree(out)
    return {"model": str(src), "size_gb": round(size / GB, 2), "rows": rows}


SECTIONS = {
    "decoder": decoder,
    "bert": bert,
    "roundtrip": roundtrip,
    "stream": extra.stream,
    "body": extra.body,
}


def main(argv: list[str] | None = None) -> int:
    import psutil

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--cap-gb", type=float, default=0.6 * psutil.virtual_memory().total / GB)
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "big_models")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "BIG_MODELS.md")
    args = ap.parse_args(argv)
    args.cap = int(args.cap_gb * GB)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        print(f"== {name}", flush=True)
        results[name] = SECTIONS[name](args, args.work)
        path.write_text(json.dumps(results, indent=1))
    args.out.write_text(extra.markdown(results, args.cap_gb))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
