"""The markdown of ``benchmarks/precision.py``: its tables and the issue's goals, each checked
against the rows measured (never written by hand)."""

from __future__ import annotations

import platform
from pathlib import Path

import onnxruntime

COSINE_GOAL, HALF_SIZE_GOAL, INT4_SIZE_GOAL = 0.999, 0.52, 0.3
#: int4 rows whose model holds (almost) only MatMul and embedding weights
MATMUL_DOMINATED = ("decoder",)


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def half_table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | onnx checker | loads & runs | finite | cosine | rel. L2 error | worst output | "
        "size vs fp32 | latency ms | fp32 nodes | pipeline | time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = r.get("runs", r.get("error", "?"))
        fin = "" if "finite" not in r else ("yes" if r["finite"] else "**NaN/inf**")
        lines.append(
            f"| {r['model']} | {r['variant']} | {r.get('valid', '')} | {runs} | {fin} | {_f(r.get('cosine'), '.6f')} | "
            f"{_f(r.get('rel_l2'), '.2e')} | {r.get('worst', '')} | {_f(r.get('size'), '.3f')} | "
            f"{_f(r.get('latency_ms'), '.2f')} | {r.get('float32_nodes', '')} | "
            f"{r.get('status', '')} | {_f(r.get('seconds'), '.2f')} |"
        )
    return "\n".join(lines)


def int4_table(rows: list[dict]) -> str:
    lines = [
        "| model | variant | block | onnx checker | loads & runs | rel. L2 error | cosine | accuracy | "
        "size vs fp32 | latency ms | quantize s | peak RSS MB | 8-bit layers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = r.get("runs", r.get("error", "?"))
        lines.append(
            f"| {r['model']} | {r['variant']} | {r.get('block', '')} | {r.get('valid', '')} | "
            f"{runs} | "
            f"{_f(r.get('rel_l2'), '.4f')} | {_f(r.get('cosine'), '.5f')} | "
            f"{_f(r.get('accuracy'), '.3f')} | {_f(r.get('size'), '.3f')} | "
            f"{_f(r.get('latency_ms'), '.2f')} | {_f(r.get('seconds'), '.2f')} | "
            f"{_f(r.get('peak_rss_mb'), '.0f')} | {r.get('sensitive', '')} |"
        )
    return "\n".join(lines)


def kept_float32(rows: list[dict]) -> list[str]:
    """Per onnxopt half-precision row: what stayed float32 and why (from the pass's report)."""
    out = []
    for r in rows:
        if r.get("float32_why"):
            out.append(f"- **{r['model']}**, {r['variant']}:")
            out += [f"  - {line}" for line in r["float32_why"]]
    return out or ["- none"]


def half_goals(rows: list[dict]) -> list[str]:
    ours = [r for r in rows if r["variant"].startswith("onnxopt")]
    fp16 = [r for r in ours if r["variant"].startswith("onnxopt fp16")]
    bad_runs = [f"{r['model']}/{r['variant']}" for r in ours
                if r.get("runs") != "yes" or r.get("valid") != "yes"]  # fmt: skip
    low = [f"{r['model']}/{r['variant']} ({r.get('cosine', 0):.5f})" for r in ours
           if r.get("runs") == "yes" and r.get("cosine", 0) < COSINE_GOAL]  # fmt: skip
    big = [f"{r['model']} ({r['size']:.3f})" for r in fp16 if r.get("size", 1) > HALF_SIZE_GOAL
           and not r["model"].startswith("trap")]  # fmt: skip
    peer_trap = [
        f"  - {r['model']}, {r['variant']}: "
        + ("" if r.get("valid") == "yes" else f"onnx checker {r.get('valid')}; ")
        + ("runs" if r.get("runs") == "yes" else str(r.get("runs", r.get("error"))))
        + (", NaN/inf" if r.get("finite") is False else "")
        + (f", cosine {r['cosine']:.4f}, rel. L2 {r['rel_l2']:.3g}" if "cosine" in r else "")
        + (f" (worst output: {r['worst']})" if r.get("worst") else "")
        for r in rows
        if r["model"].startswith("trap") and r["variant"].startswith("onnxconverter")
    ]
    return [
        f"- every onnxopt output passes the onnx checker, loads and runs: **{'yes' if not bad_runs else 'no: ' + ', '.join(bad_runs)}**",
        f"- cosine against fp32 >= {COSINE_GOAL} for every onnxopt output: "
        f"**{'yes' if not low else 'no: ' + ', '.join(low)}**",
        f"- fp16 size <= {HALF_SIZE_GOAL}x of fp32 (trap model aside, it has almost no "
        f"weights): **{'yes' if not big else 'no: ' + ', '.join(big)}**",
        "- the peer on the trap models (NaN/inf or an invalid model expected):"
        + ("" if peer_trap else " not run"),
        *peer_trap,
    ]


def int4_goals(rows: list[dict]) -> list[str]:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ours = [r for r in mine if r["variant"].startswith("onnxopt") and "," not in r["variant"]]
        peers = [r for r in mine if r["variant"].startswith("onnxruntime")]
        ok = lambda rs: [r for r in rs if r.get("runs") == "yes"]  # noqa: E731
        if not ok(ours) or not ok(peers):
            out.append(f"- {model}: not comparable (a tool failed)")
            continue
        best = min(ok(ours), key=lambda r: r["rel_l2"])
        peer = min(ok(peers), key=lambda r: r["rel_l2"])
        verdict = "yes" if best["rel_l2"] <= peer["rel_l2"] else "no"
        out.append(
            f"- {model}: best onnxopt error {best['rel_l2']:.4f} ({best['variant']}) vs best "
            f"peer {peer['rel_l2']:.4f} ({peer['variant']}): no worse **{verdict}**; latency "
            f"{best.get('latency_ms', 0):.2f} vs {peer.get('latency_ms', 0):.2f} ms"
        )
        smallest = min(ok([r for r in mine if r["variant"].startswith("onnxopt")]),
                       key=lambda r: r["size"])  # fmt: skip
        if model in MATMUL_DOMINATED or model.startswith("bert"):
            verdict = "yes" if smallest["size"] <= INT4_SIZE_GOAL else "no"
            out.append(
                f"  size {smallest['size']:.3f}x of fp32 ({smallest['variant']}): <= "
                f"{INT4_SIZE_GOAL}x **{verdict}**"
            )
    return out


def write_markdown(
    path: Path, cmd: str, half: list[dict], int4: list[dict], pending: list[str] = ()
) -> None:
    """Write the results page; ``pending``: the models of the run not measured yet."""
    parts = [
        "# Half precision and 4-bit weights",
        "",
        *([f"**Partial: not measured yet: {', '.join(pending)}.**", ""] if pending else []),
        f"Generated by `{cmd}` (onnxruntime {onnxruntime.__version__}, "
        f"{platform.machine()}, CPU). Latency: onnxruntime CPU, all optimizations, 2 threads, "
        "median of 30 runs; the machine is shared, so latencies are noisy (compare within a "
        "table only). Errors are against float32 on held-out inputs, worst output.",
        "",
    ]
    if half:
        parts += [
            "## fp16 / bf16",
            "",
            "onnxopt runs `cleanup,fusion` and then the conversion through the PassManager "
            f"(verified in onnxruntime, as written and with its optimizations on, budget cosine "
            f"{COSINE_GOAL}, bisection on failure); `fp32 nodes` counts the nodes it kept in "
            "float32 (block list, overflow on the calibration data, constants, bisection). "
            "onnxconverter-common 1.16 runs with its defaults. bf16 stores the weights in "
            "bfloat16 (onnxruntime's CPU provider has no bfloat16 arithmetic).",
            "",
            half_table(half),
            "",
            "Nodes kept in float32, by reason (the pass's report; `pipeline` above says whether "
            "the bisection dropped sites):",
            "",
            *kept_float32(half),
            "",
            "Goals:",
            "",
            *half_goals(half),
            "",
        ]
    if int4:
        parts += [
            "## int4 (MatMulNBits)",
            "",
            "Asymmetric 4-bit blocks along K. onnxopt's rows are the pass alone (no "
            "verification) on the MatMul weights only, like the peer's, except the last row of "
            "each model: the pass's defaults, with 8-bit GatherBlockQuantized embeddings "
            "and 8-bit MatMulNBits for the layers its sensitivity analysis marks. onnxruntime's "
            "GPTQ in 1.32 returns RTN's weights (its bundled GPTQ (neural_compressor's weight_only.gptq) propagates the rounding error through column slices of the upper Cholesky factor of H^-1, which are zero below the diagonal, so nothing is propagated). "
            "Peak RSS is the quantizing process's, imports included (onnxruntime's HQQ and "
            "GPTQ import torch).",
            "",
            int4_table(int4),
            "",
            *[f"- {r['model']}, {r['variant']}: {r['note']}" for r in int4 if r.get("note")],
            "",
            "Goals:",
            "",
            *int4_goals(int4),
            "",
        ]
    path.write_text("\n".join(parts))
