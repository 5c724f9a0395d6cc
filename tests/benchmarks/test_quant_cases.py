"""benchmarks/quant_cases.py, quant_minilm.py, quant_report.py: int8 layer share, the WordPiece
tokenizer and safetensors reader, the goal verdicts."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest

from benchmarks import quant_cases as qc
from benchmarks import quant_minilm as qm
from benchmarks import quant_report as qr
from tests.helpers import parse

QDQ = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 4] x) => (float[1, 4] y) {
  xq = QuantizeLinear (x, s, z)
  xd = DequantizeLinear (xq, s, z)
  wd = DequantizeLinear (wq, s, z)
  h = MatMul (xd, wd)
  y = MatMul (h, w)
}
"""


def test_int8_share_counts_layers_with_both_inputs_dequantized(tmp_path):
    m = parse(
        QDQ,
        {
            "s": np.array(0.1, np.float32),
            "z": np.array(0, np.int8),
            "wq": np.ones((4, 4), np.int8),
            "w": np.ones((4, 4), np.float32),
        },
    )
    onnx.save(m, tmp_path / "m.onnx")
    assert qc.int8_share(tmp_path / "m.onnx") == (1, 2)


def test_wordpiece_greedy_longest_match():
    vocab = {"[UNK]": 0, "un": 1, "##aff": 2, "##able": 3, "_": 4, "add": 5}
    assert qm._wordpiece("unaffable", vocab) == [1, 2, 3]
    assert qm._wordpiece("xyz", vocab) == [0]
    assert qm._words("Add_arg, Café!") == ["add", "_", "arg", ",", "cafe", "!"]


def test_safetensors_reader_round_trip():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})
    raw = struct.pack("<Q", len(header)) + header.encode() + a.tobytes()
    np.testing.assert_array_equal(qm._safetensors(raw)["a"], a)


def test_verdict_names_missed_goals():
    fp32 = {"tool": "fp32", "metric": 1.0}
    mine = {"tool": "onnxopt", "metric": 0.99, "latency_ms": 2.0, "speedup": 1.2, "seconds": 30}
    peers = [{"tool": "nncf", "metric": 0.998, "latency_ms": 1.5, "seconds": 10}]
    got = qr._verdict(mine, peers, fp32, "minilm")
    assert got == [
        "metric >= best peer: NOT met",
        "latency <= fastest peer at that metric: NOT met",
        "time <= 2x NNCF: NOT met",
        "cosine >= 0.995: NOT met",
        ">= 1.6x: NOT met",
    ]


def test_verdict_compares_time_with_nncf_accuracy_control_on_the_same_budget():
    """On the OCR models NNCF's accuracy control validates with onnxopt's own task metric:
    the verdict adds its time as a second bar; elsewhere (another validation) it does not."""
    fp32 = {"tool": "fp32", "metric": 100.0}
    mine = {"tool": "onnxopt", "metric": 100.0, "latency_ms": 25.0, "speedup": 1.5, "seconds": 60}
    peers = [
        {"tool": "nncf", "metric": 45.0, "latency_ms": 56.0, "seconds": 12.0},
        {"tool": "nncf_ac", "metric": 87.0, "latency_ms": 50.0, "seconds": 1900.0},
    ]
    got = qr._verdict(mine, peers, fp32, "ocr_rec")
    assert got[-2:] == [
        "time <= 2x NNCF: NOT met",
        "time <= 2x NNCF accuracy control (same budget): met",
    ]
    assert not any("accuracy control" in g for g in qr._verdict(mine, peers, fp32, "minilm"))


def test_nncf_task_validator_scores_all_runs_and_each_alone(tmp_path, monkeypatch):
    """The peers' runner imports the task metric by name and gives NNCF the metric of all
    runs (0..1) and of each run alone (its ranking), from the model's outputs."""
    from benchmarks import quant_peers

    mod = tmp_path / "my_task_metric.py"
    mod.write_text(
        "import numpy as np\n"
        "def positive(runs, labels):\n"
        "    return 100.0 * np.mean([float(r['y'].sum() > 0) for r in runs])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1, 2] x) => (float[1, 2] y) { y = Relu (x) }"
    )
    runs = [{"x": np.array([[v, 0.0]], np.float32)} for v in (1.0, -1.0, 2.0, -3.0)]
    items, validate = quant_peers._task_validator("my_task_metric:positive", runs, None)
    total, per = validate(model, items)
    assert total == pytest.approx(0.5) and per == [1.0, 0.0, 1.0, 0.0]


def test_pipeline_goal_reads_both_readings_and_borrowed_models():
    rows = [
        {"model": "ocr_det", "tool": "onnxopt", "int8_layers": [0, 64]},
        {"model": "ocr_rec", "tool": "onnxopt", "int8_layers": [0, 40]},
        {"model": "ocr_cls", "tool": "onnxopt", "int8_layers": [0, 9]},
        {"model": "ocr_det", "tool": "onnxopt_truth", "int8_layers": [19, 64]},
    ]
    fp32 = {
        "tool": "fp32",
        "agreement": 100.0,
        "ground_truth": 66.7,
        "speedup": 1.0,
        "held_out_agreement": 100.0,
        "held_out_ground_truth": 70.0,
    }
    truth = {
        "tool": "onnxopt_truth",
        "agreement": 85.5,
        "ground_truth": 71.7,
        "speedup": 1.5,
        "held_out_agreement": 80.0,
        "held_out_ground_truth": 60.0,
        "borrowed": ["cls", "rec"],
    }
    line = qr._pipeline_goal(rows, truth, fp32)
    checks = line.split("|")[-2]
    assert checks.count("NOT met") == 3  # same text twice, held-out truth once
    assert "; reads >= 98 % of fp32's and >= 1.3x: met; held out:" in checks
    # all three float: the exact passes' speed-up (timed in interleaved rounds) counts, and
    # the line says that no int8 layer gave it
    float_row = {"tool": "onnxopt", "agreement": 100.0, "ground_truth": 66.7, "speedup": 1.4}
    line = qr._pipeline_goal(rows, float_row, fp32)
    assert line.count("NOT met") == 0 and "1.40x, no int8 layer" in line
    line = qr._pipeline_goal(rows, {**float_row, "speedup": 1.2}, fp32)
    assert line.count("NOT met") == 2


def test_pipeline_goal_gives_the_paired_counts_and_their_sign_test():
    from benchmarks.quant_ocr import _discordant

    truth = ["a", "b", None, "c", "d"]
    fp32 = ["a", "x", "n", "c", "d"]
    cand = ["a", "b", "m", "y", "z"]
    assert _discordant(truth, fp32, cand) == (2, 1)  # c and d lost, b gained; no-text skipped
    assert qr._sign_p(2, 1) == 1.0 and qr._sign_p(0, 0) == 1.0
    assert qr._sign_p(0, 6) == pytest.approx(2 / 64)
    row = {
        "tool": "onnxopt_truth",
        "agreement": 85.0,
        "ground_truth": 63.3,
        "speedup": 1.5,
        "truth_lost": 3,
        "truth_gained": 2,
    }
    line = qr._pipeline_goal([], row, {"tool": "fp32", "ground_truth": 65.0})
    assert "[3 read right by fp32 only, 2 by it only: sign test p = 1.00]" in line


def test_a_model_timed_at_a_batch_shows_its_batch_1_speed_up_beside():
    rows = [
        {
            "model": "digits_resnet",
            "tool": "fp32",
            "status": "-",
            "metric": 98.7,
            "speedup": 1.0,
            "speedup_1": 1.0,
        },
        {
            "model": "digits_resnet",
            "tool": "onnxopt",
            "status": "ok",
            "metric": 98.7,
            "speedup": 2.2,
            "speedup_1": 1.2,
            "seconds": 2.0,
        },
    ]
    table = qr.model_table(rows, "digits_resnet").splitlines()
    assert "| speed-up | speed-up, batch 1 |" in table[2]
    assert table[3].count("|") == table[2].count("|")
    assert "| 2.20 | 1.20 |" in table[-1]
    assert "(2.20x, batch 1: 1.20x, 2 s)" in qr._goal_line(rows, "digits_resnet", rows[1])
    plain = [{k: v for k, v in r.items() if k != "speedup_1"} for r in rows]
    assert "batch 1" not in qr.model_table(plain, "digits_resnet")


def test_the_time_table_lists_onnxopt_phases_beside_nncf():
    rows = [
        {"model": "ocr_rec", "tool": "nncf", "seconds": 10.0},
        {
            "model": "ocr_rec",
            "tool": "onnxopt",
            "seconds": 30.0,
            "time_breakdown": {"checking outputs": 12.0, "timing": 9.0, "other": 9.0},
            "time_calls": {"checking outputs": 20, "timing": 8},
        },
        {"model": "ocr_rec", "tool": "ort", "seconds": 3.0},
    ]
    lines = qr.time_table(rows).splitlines()
    assert (
        lines[0]
        == "| model | tool | seconds | checking outputs | timing | other | NNCF `quantize` s |"
    )
    assert lines[2] == "| ocr_rec | onnxopt | 30.0 | 12.0 (20) | 9.0 (8) | 9.0 | 10.0 |"
    assert qr.time_table(rows[:1]) == ""


def test_latency_rows_take_short_turns_and_read_ratios_to_fp32(tmp_path, monkeypatch):
    """Every row is timed in each round, in an order that turns, and its speed-up is fp32's
    latency over its own (a model 64 MatMuls deep against one)."""
    from benchmarks import quantization as qz

    w = {"w": np.eye(64, dtype=np.float32)}
    one = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[64, 64] x) => (float[64, 64] y) { y = MatMul (x, w) }",
        w,
    )
    body = "\n".join(f"h{i + 1} = MatMul (h{i}, w)" for i in range(64))
    deep = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        f"g (float[64, 64] x) => (float[64, 64] y) {{\nh0 = Identity (x)\n{body}\ny = Identity (h64)\n}}",
        w,
    )
    onnx.save(deep, tmp_path / "fp32.onnx")
    onnx.save(one, tmp_path / "fast.onnx")
    rows = [
        {"tool": "fp32", "path": str(tmp_path / "fp32.onnx")},
        {"tool": "fast", "path": str(tmp_path / "fast.onnx")},
    ]
    monkeypatch.setattr(qz, "ROUNDS", 4)
    monkeypatch.setattr(qz, "ROUND_SECONDS", 0.02)
    qz._time_rows(rows, {"x": np.ones((64, 64), np.float32)}, "latency_ms", "speedup")
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] > 3  # 64 MatMuls against one
    assert all(r["latency_ms"] > 0 for r in rows)


def test_a_model_two_tools_wrote_byte_for_byte_is_timed_once(tmp_path, monkeypatch):
    """Two rows whose files hold the same bytes get one session and one latency, and the
    second says whose it shares; a different file is timed on its own."""
    from benchmarks import quantization as qz
    from onnxopt import timing

    w = {"w": np.eye(8, dtype=np.float32)}
    m = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[8, 8] x) => (float[8, 8] y) { y = MatMul (x, w) }",
        w,
    )
    for name in ("fp32", "a", "b"):
        onnx.save(m, tmp_path / f"{name}.onnx")
    m.graph.node[0].op_type = "Add"
    onnx.save(m, tmp_path / "c.onnx")
    rows = [{"tool": t, "path": str(tmp_path / f"{t}.onnx")} for t in ("fp32", "a", "b", "c")]
    opened = []
    real = timing.model_session
    monkeypatch.setattr(timing, "model_session", lambda *a, **k: opened.append(1) or real(*a, **k))
    monkeypatch.setattr(qz, "ROUNDS", 2)
    monkeypatch.setattr(qz, "ROUND_SECONDS", 0.01)
    qz._time_rows(rows, {"x": np.ones((8, 8), np.float32)}, "latency_ms", "speedup")
    assert len(opened) == 2  # fp32 (a and b are its bytes) and c
    assert rows[0]["latency_ms"] == rows[1]["latency_ms"] == rows[2]["latency_ms"]
    assert rows[1]["speedup"] == 1.0
    assert rows[2]["notes"] == ["the same model as fp32's, byte for byte: timed once"]
    assert "notes" not in rows[3] and "notes" not in rows[0]


def test_ocr_pipelines_take_turns_image_by_image(monkeypatch):
    from benchmarks import quant_ocr

    calls: list[tuple[str, int]] = []

    class Pipe:
        def __init__(self, tool: str) -> None:
            self.tool = tool

        def text(self, im: int) -> str:
            calls.append((self.tool, im))
            return ""

    monkeypatch.setattr(quant_ocr, "images", lambda: ([0, 1, 2], ["", "", ""]))
    got = quant_ocr.interleaved_seconds({t: Pipe(t) for t in ("a", "b", "c")}, rounds=1)
    assert calls == [
        ("a", 0), ("b", 0), ("c", 0),
        ("b", 1), ("c", 1), ("a", 1),
        ("c", 2), ("a", 2), ("b", 2),
    ]  # fmt: skip
    assert set(got) == {"a", "b", "c"} and all(v >= 0 for v in got.values())


def test_a_tool_error_in_the_table_names_files_without_this_machine_s_paths():
    rows = [
        {"model": "ocr_cls", "tool": "fp32", "status": "-", "metric": 100.0},
        {
            "model": "ocr_cls",
            "tool": "ort",
            "status": "invalid model",
            "notes": ["Load model from /work/main/build/quant_bench/ocr_cls/ort.onnx failed"],
        },
    ]
    table = qr.model_table(rows, "ocr_cls")
    assert "invalid model: Load model from ort.onnx failed" in table
    assert "/work" not in table


def test_regime_probe_times_each_session_in_turns_and_splits_its_turns(tmp_path):
    """benchmarks/regime_probe.py on a tiny model: every session of the model ran every turn,
    and each one's median is read over the fast turns (the slow ones: more than SLOW_TURN
    times the two-thread session's fastest turn, when there are any)."""
    from benchmarks import regime_probe as rp

    m = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[32, 32] x) => (float[32, 32] y) { y = MatMul (x, w) }",
        {"w": np.eye(32, dtype=np.float32)},
    )
    onnx.save(m, tmp_path / "m.onnx")
    got = rp.probe([str(tmp_path / "m.onnx")], {"x": np.ones((32, 32), np.float32)}, 0.2)
    r = got[str(tmp_path / "m.onnx")]
    assert r["turns"] >= 1 and 0 <= r["slow_turns"] < r["turns"]
    for name, _, _ in rp.SESSIONS:
        assert r[name]["fast_ms"] > 0
        assert (r[name]["slow_ms"] is None) == (r["slow_turns"] == 0)


def test_ocr_model_times_sorts_convolution_kernels_by_kind(tmp_path):
    """benchmarks/ocr_model_times.py --profile: a 1x1 Conv, a 3x3 depthwise Conv, a 1x1
    depthwise Conv (a per-channel affine) and a 3x3 Conv each land in their own kind."""
    from benchmarks import ocr_model_times as omt

    rng = np.random.default_rng(0)
    w = {
        "w1": rng.standard_normal((16, 16, 1, 1)).astype(np.float32),
        "wd": rng.standard_normal((16, 1, 3, 3)).astype(np.float32),
        "wa": rng.standard_normal((16, 1, 1, 1)).astype(np.float32),
        "w3": rng.standard_normal((16, 16, 3, 3)).astype(np.float32),
    }
    m = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1, 16, 24, 24] x) => (float[1, 16, 24, 24] y) {\n"
        "a = Conv (x, w1)\n"
        "b = Conv <group = 16, pads = [1, 1, 1, 1]> (a, wd)\n"
        "c = Conv <group = 16> (b, wa)\n"
        "y = Conv <pads = [1, 1, 1, 1]> (c, w3)\n}",
        w,
    )
    onnx.save(m, tmp_path / "m.onnx")
    feeds = [{"x": rng.standard_normal((1, 16, 24, 24)).astype(np.float32)}] * 2
    got = omt.kernel_kinds(str(tmp_path / "m.onnx"), feeds)
    for kind in ("Conv, 1x1", "Conv, depthwise", "Conv, 1x1 depthwise (affine)", "Conv, other"):
        assert got.get(kind, 0) > 0, (kind, got)


def test_verify_levels_times_every_level_on_the_calibration_runs(tmp_path, monkeypatch, capsys):
    """benchmarks/verify_levels.py on a tiny model: the labels are not fed, every level runs
    every round, and each level's outputs match the unoptimized session's."""
    import sys

    from benchmarks import verify_levels as vl

    m = parse(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2, 8] x) => (float[2, 8] y) { h = MatMul (x, w)\n y = Relu (h) }",
        {"w": np.eye(8, dtype=np.float32)},
    )
    onnx.save(m, tmp_path / "m.onnx")
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    y = np.ones(2, dtype=np.int64)
    np.savez(tmp_path / "c.npz", **{"0000/x": x, "0000/labels": y, "0001/x": -x, "0001/labels": y})
    argv = ["verify_levels.py", "--model", str(tmp_path / "m.onnx"), "--calib"]
    monkeypatch.setattr(sys, "argv", [*argv, str(tmp_path / "c.npz"), "--rounds", "2"])
    vl.main()
    out = capsys.readouterr().out
    assert "2 runs, 2 rounds" in out
    for level in ("off", "basic", "extended", "all"):
        line = next(ln for ln in out.splitlines() if ln.split()[0] == level)
        assert line.count("+") == 2 and line.endswith("max |diff| vs off: 0")


def test_a_log_line_puts_the_figures_before_the_notes() -> None:
    """An onnxopt result's notes run to thousands of characters: its log line, cut at 400,
    still carries its metric, latency and time, ahead of them."""
    from benchmarks import quantization as qz

    row = {
        "model": "minilm",
        "tool": "onnxopt",
        "status": "ok",
        "notes": ["a long note " * 50] * 10,
        "metric": 0.9983,
        "latency_ms": 7.652,
        "speedup": 1.55,
        "seconds": 18.2,
        "traceback": "never logged",
    }
    line = qz.log_line(row)
    assert len(line) == 400 and "never logged" not in line
    assert line.startswith(
        '{"model": "minilm", "tool": "onnxopt", "status": "ok", "metric": 0.9983'
    )
    assert '"latency_ms": 7.652, "speedup": 1.55, "seconds": 18.2' in line
