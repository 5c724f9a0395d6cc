"""Quantization time, onnxopt against NNCF, in interleaved repeats.

    python benchmarks/quant_times.py [--models ocr_det,ocr_rec] [--tools onnxopt,nncf]
                                     [--repeats 3] [--out benchmarks/QUANT_TIMES.md]

The int8 benchmark (``benchmarks/quantization.py``) times each tool's job once. On a machine
whose speed moves between regimes seconds apart (this 2-core AMD EPYC: the PP-OCRv5
recognizer's job took 23 s in one and 33 s in the other), one reading of each tool compares a
regime with a regime as much as a tool with a tool. This reruns the job files that benchmark
wrote (``build/quant_bench/<model>/<tool>.job.json``), each in a fresh process as there, in
rounds: every tool once a round, the order alternating from round to round, so that a change of
regime falls on both tools alike. Each rerun writes its model and result into a scratch folder;
the benchmark's own files are left alone. It prints and writes, per model and tool, the median
``seconds`` (the quantization call, as the benchmark's table reads it) with the range, and each
tool's median over NNCF's, as well as the median of the rounds' own ratios.

Needs ``NNCF_PYTHON`` (and ``AIMET_PYTHON`` for AIMET's tools) as the benchmark does, and its
job files (run ``python benchmarks/quantization.py --models ...`` first).

``--base REV`` times a change against an earlier commit in the same rounds: each onnxopt tool
also runs as ``TOOL@REV``, the same job file with the code of ``REV`` (a git worktree and a
virtual environment of its own under ``build/quant_times_base/``, made once, onnxopt installed
there in editable mode without dependencies: the rest comes from this interpreter's
packages). On this machine a job's time moves by 2x with the regime, and only such interleaved
pairs tell a change from the regime (session 33: eight pairs of the PP-OCRv5 recognizer's
2-point job, medians 36.1 s against 35.0 s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.quantization import WORK, run_job, time_breakdown  # noqa: E402


def rerun(job_path: Path, tool: str, scratch: Path, base: Base | None = None) -> dict:
    """Run one job file again (:func:`benchmarks.quantization.run_job`: a fresh process, the
    tool's interpreter), its model and result written into ``scratch``; its result. With
    ``base``, the job runs with that checkout's code instead (:class:`Base`)."""
    job = json.loads(job_path.read_text())
    name = file_name(tool)
    job["out"] = str(scratch / f"{name}.onnx")
    job["result"] = str(scratch / f"{name}.json")
    jpath = scratch / f"{name}.job.json"
    jpath.write_text(json.dumps(job))
    if base is not None:
        return base.run(jpath, scratch)
    return run_job(jpath, tool, scratch)


def file_name(tool: str) -> str:
    """The stem of a reading's files in the scratch folder (``TOOL@REV``: ``TOOL_at_REV``)."""
    return tool.replace("@", "_at_")


class Base:
    """An earlier commit's onnxopt, to time against this checkout's: a detached git worktree
    of ``rev`` and a virtual environment that sees this interpreter's packages, with that
    worktree installed in editable mode, without dependencies. Both are made once and reused
    (``build/quant_times_base/<sha>``; ``git worktree remove`` deletes the worktree)."""

    def __init__(self, rev: str, folder: Path = ROOT / "build" / "quant_times_base") -> None:
        self.sha = sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
        self.tree = folder / sha[:12]
        self.venv = folder / f"venv-{sha[:12]}"
        self.python = self.venv / "bin" / "python"
        if not (self.tree / "pyproject.toml").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _git("worktree", "add", "--detach", "--force", str(self.tree), sha)
        done = self.venv / ".onnxopt-installed"  # a failed install is made again next time
        if not done.is_file():
            for cmd in (
                [sys.executable, "-m", "venv", "--system-site-packages", str(self.venv)],
                [str(self.python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(self.tree)],
            ):
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    last = ((r.stderr or r.stdout).strip().splitlines() or ["failed"])[-1]
                    print(f"error: {' '.join(cmd[:4])} ...: {last}", file=sys.stderr)
                    raise SystemExit(2)
            done.touch()

    @property
    def label(self) -> str:
        return self.sha[:7]

    def run(self, jpath: Path, cwd: Path) -> dict:
        """The job file ``jpath`` run by this commit's ``benchmarks/quant_peers.py``, its code
        first on the path (this checkout's editable install is on it too, behind)."""
        return run_job(jpath, "onnxopt", cwd, python=str(self.python), root=self.tree)


def _git(*args: str) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"error: git {' '.join(args)}: {last}", file=sys.stderr)
        raise SystemExit(2)
    return r.stdout.strip()


def rounds_order(tools: list[str], k: int) -> list[str]:
    """The tools' order in round ``k``: as given in even rounds, reversed in odd ones."""
    return list(tools) if k % 2 == 0 else list(reversed(tools))


def summarize(
    seconds: dict[str, list[float | None]],
    base: str = "nncf",
    outcomes: dict[str, list[str]] | None = None,
    phases: dict[str, list[dict[str, float]]] | None = None,
) -> dict[str, dict]:
    """Per tool: median, min and max of its readings (None: a failed run, left out), its
    median over ``base``'s, and the median of the per-round ratios to ``base`` (the rounds
    where both ran); ``outcomes``: each reading's outcome as the job reported it (onnxopt: its
    int8 pass's status, which tells the paths apart: kept, unchanged, rolled back);
    ``phases``: each reading's seconds per phase (onnxopt's report ``time_breakdown``), summed
    up as each phase's median over the readings."""
    out: dict[str, dict] = {}
    ref = [s for s in seconds.get(base, []) if s is not None]
    ref_med = statistics.median(ref) if ref else None
    for tool, vals in seconds.items():
        ok = [s for s in vals if s is not None]
        row: dict = {"runs": len(ok), "seconds": vals}
        if outcomes and outcomes.get(tool):
            row["outcomes"] = outcomes[tool]
        if phases and phases.get(tool):
            names = dict.fromkeys(k for p in phases[tool] for k in p)
            row["phases"] = {
                k: statistics.median(p.get(k, 0.0) for p in phases[tool]) for k in names
            }
            # each reading's seconds outside its timing phase, then their median
            rest = [sum(v for k, v in p.items() if k != "timing") for p in phases[tool]]
            row["untimed_readings"] = rest
            row["untimed"] = statistics.median(rest)
        if ok:
            row.update(median=statistics.median(ok), min=min(ok), max=max(ok))
        if ok and ref_med and tool != base:
            row["ratio_of_medians"] = row["median"] / ref_med
            pairs = [a / b for a, b in zip(vals, seconds[base]) if a is not None and b]
            if pairs:
                row["median_round_ratio"] = statistics.median(pairs)
        out[tool] = row
    return out


def render(
    results: dict[str, dict[str, dict]], repeats: int, command: str, base: str = "nncf"
) -> str:
    """The tables (markdown); ``base``: the tool the ratios are to (NNCF, or with ``--base``
    and no NNCF, the first tool)."""
    who = "NNCF" if base == "nncf" else f"`{base}`"
    title = "onnxopt against NNCF" if base == "nncf" else f"each tool against {who}"
    lines = [
        f"# Quantization time in interleaved repeats ({title})",
        "",
        f"`{command}`: each job of the int8 benchmark run {repeats} times in rounds, every tool "
        "once a round, the order alternating; seconds = the quantization call "
        "(`benchmarks/quant_peers.py`'s `seconds`); beside an onnxopt reading, its int8 "
        "pass's outcome.",
        "",
        f"| model | tool | median s | range s | readings | median / {who}'s median "
        f"| median of the rounds' ratios to {who} |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for model, rows in results.items():
        for tool, r in rows.items():
            if "median" not in r:
                lines.append(f"| {model} | {tool} | – | – | failed | – | – |")
                continue
            outs = r.get("outcomes") or [""] * len(r["seconds"])
            reads = ", ".join(
                ("–" if s is None else f"{s:.1f}") + (f" ({o})" if o else "")
                for s, o in zip(r["seconds"], outs)
            )
            ratio = f"{r['ratio_of_medians']:.2f}" if "ratio_of_medians" in r else "–"
            per = f"{r['median_round_ratio']:.2f}" if "median_round_ratio" in r else "–"
            lines.append(
                f"| {model} | {tool} | {r['median']:.1f} | {r['min']:.1f}–{r['max']:.1f} | "
                f"{reads} | {ratio} | {per} |"
            )
    if any("phases" in r for rows in results.values() for r in rows.values()):
        lines += [
            "",
            "Where onnxopt's time went: each phase's median over the readings (the report's "
            "`time_breakdown`), and the median (and range) of each reading's seconds outside its "
            "timing phase (the latency profile, the races, the probes), against NNCF's median: the "
            "model runs, checks and metric calls the run's decisions read, which timing "
            "nothing at all would leave:",
            "",
            "| model | tool | " + " | ".join(PHASES) + " | without timing | NNCF |",
            "|---|---|" + "---:|" * (len(PHASES) + 2),
        ]
        for model, rows in results.items():
            base = rows.get("nncf", {}).get("median")
            for tool, r in rows.items():
                ph = r.get("phases")
                if not ph:
                    continue
                rest, each = r["untimed"], r["untimed_readings"]
                cells = [f"{ph.get(k, 0.0):.1f}" for k in PHASES]
                vs = f"{rest:.1f}" + (f" ({rest / base:.2f}x)" if base else "")
                if len(each) > 1:
                    vs += f"; readings {min(each):.1f}–{max(each):.1f}"
                nncf = f"{base:.1f}" if base else "–"
                lines.append(f"| {model} | {tool} | " + " | ".join(cells) + f" | {vs} | {nncf} |")
    return "\n".join(lines) + "\n"


#: the phases of onnxopt's report (``time_breakdown``) the second table shows, in its order
PHASES = (
    "timing",
    "checking outputs",
    "task metric",
    "comparing outputs",
    "calibration",
    "sensitivity",
    "training",
    "other",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ocr_det,ocr_rec,ocr_cls")
    ap.add_argument("--tools", default="onnxopt,nncf")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=WORK, help="the int8 benchmark's folder")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "QUANT_TIMES.md")
    ap.add_argument(
        "--base", help="a git revision: each onnxopt tool also runs with its code (TOOL@REV)"
    )
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    tools = [t for t in args.tools.split(",") if t]
    if args.repeats < 1:
        print("error: --repeats must be 1 or more", file=sys.stderr)
        raise SystemExit(2)
    base = Base(args.base) if args.base else None
    runs = {t: t for t in tools}  # tool shown -> job file's tool
    if base is not None:
        for t in tools:
            if t.startswith("onnxopt"):
                runs[f"{t}@{base.label}"] = t
    tools = list(runs)
    ratio_to = "nncf" if "nncf" in tools else tools[0]
    missing = [
        str(args.work / m / f"{t}.job.json")
        for m in models
        for t in dict.fromkeys(runs.values())
        if not (args.work / m / f"{t}.job.json").is_file()
    ]
    if missing:
        print(
            f"error: no job file {missing[0]} (run benchmarks/quantization.py on that model first)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    results: dict[str, dict[str, dict]] = {}
    for model in models:
        seconds: dict[str, list[float | None]] = {t: [] for t in tools}
        outcomes: dict[str, list[str]] = {t: [] for t in tools}
        split: dict[str, list[dict[str, float]]] = {t: [] for t in tools}
        with tempfile.TemporaryDirectory(prefix=f"quant_times_{model}_") as tmp:
            for k in range(args.repeats):
                for tool in rounds_order(tools, k):
                    job = args.work / model / f"{runs[tool]}.job.json"
                    res = rerun(job, tool, Path(tmp), base if "@" in tool else None)
                    s = res.get("seconds") if res.get("status") == "ok" else None
                    seconds[tool].append(s)
                    first = (res.get("notes") or [""])[0] if tool.startswith("onnxopt") else ""
                    outcomes[tool].append(str(first).split(":")[0][:40])
                    # onnxopt's seconds per phase, from the report its job wrote beside the result
                    result = Path(tmp) / f"{file_name(tool)}.json"
                    ph = time_breakdown(result) if s is not None else {}
                    if ph.get("time_breakdown"):
                        split[tool].append(ph["time_breakdown"])
                    shown = f"{s:.1f} s" if s is not None else res.get("status")
                    why = f" ({outcomes[tool][-1]})" if outcomes[tool][-1] else ""
                    print(f"[{model}] round {k + 1}: {tool} {shown}{why}", flush=True)
        results[model] = summarize(seconds, ratio_to, outcomes, split)
    command = "python benchmarks/quant_times.py " + " ".join(sys.argv[1:])
    text = render(results, args.repeats, command.strip(), ratio_to)
    print(text)
    for path, body in ((args.out, text), (args.out.with_suffix(".json"), json.dumps(results))):
        part = path.with_name(path.name + ".part")
        part.write_text(body)
        part.replace(path)  # written whole or not at all


if __name__ == "__main__":
    main()
