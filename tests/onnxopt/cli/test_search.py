"""``onnxopt search`` as a user runs it (a subprocess): a small search on the packaged digits
example with the local process pool, a trial that crashes and is recorded while the search
goes on, a resume that redoes nothing, and one-line errors (exit 2) for bad recipes and an
unreachable Ray address. The Ray cluster tests are in tests/onnxopt/search/test_ray.py."""

from __future__ import annotations

import json
import socket
import time

import onnx
import pytest

from onnxopt.examples import FOLDER as EXAMPLES
from tests.onnxopt.cli.test_app import EXAMPLE, TEST_DATA, assert_one_line_error, cli

CALIB = EXAMPLES / "digits_calib.npz"

#: four trials: the baseline, pruning, and pruning + a distillation whose feature names a
#: tensor the teacher does not have (it fails when it runs, not when the recipe is read)
CRASH_RECIPE = """
[search]
precision = ["fp32"]
min_full = 4
[prune]
ratio = [0, 0.3]
[distill]
epochs = [0, 1]
features = ["no_such_tensor:no_such_tensor"]
"""


def _search(tmp_path, recipe: str, *extra):
    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    out = tmp_path / "out"
    args = ["search", EXAMPLE, "--data", TEST_DATA, "--calib-data", CALIB, "--batch", "40"]
    args += ["--recipe", path, "--max-accuracy-drop", "5", "--out", out, "--workers", "1"]
    return cli(*args, *extra), out


@pytest.mark.slow
def test_search_records_a_crashing_trial_goes_on_and_resumes_without_redoing(tmp_path):
    r, out = _search(tmp_path, CRASH_RECIPE)
    assert r.returncode == 0, r.stderr
    trials = {t["label"]: t for t in json.loads((out / "trials.json").read_text())}
    assert len(trials) == 4
    crashed = trials[next(k for k in trials if "distill" in k and "prune" in k)]
    assert crashed["status"] == "error"
    assert "the teacher has no tensor" in crashed["error"]
    assert trials["exact only"]["status"] == "done"
    assert trials["prune(ratio=0.3)"]["status"] == "done"
    front = json.loads((out / "front.json").read_text())
    assert front["chosen"] in {t["id"] for t in trials.values() if t["status"] == "done"}
    chosen = next(p for p in front["front"] if p["id"] == front["chosen"])
    assert chosen["feasible"] and chosen["accuracy_original"] - chosen["accuracy"] <= 5
    onnx.checker.check_model(onnx.load(out / "best.onnx"))
    assert (out / "reports" / f"{front['chosen']}.json").is_file()
    page = (out / "front.html").read_text()
    assert "<svg" in page and "<circle" in page and front["chosen"] in page
    assert not any(ref in page for ref in ("src=", "<link", "<script"))  # self-contained
    assert "failed" in r.stdout and "the teacher has no tensor" in r.stdout
    done = front["computed"]
    assert done["steps"] >= 3 and done["evals"] >= 3

    r2 = cli(*_args_again(tmp_path, out), "--resume")
    assert r2.returncode == 0, r2.stderr
    again = json.loads((out / "front.json").read_text())
    assert again["computed"]["steps"] == 0 and again["computed"]["evals"] == 0
    assert again["computed"]["steps_cached"] == done["steps"]
    assert [(p["id"], p["quality"], p["size_mb"]) for p in again["front"]] == [
        (p["id"], p["quality"], p["size_mb"]) for p in front["front"]
    ]

    r3 = cli(*_args_again(tmp_path, out))  # the same folder without --resume
    assert_one_line_error(r3, "already holds a search", "--resume")


def _args_again(tmp_path, out):
    return [
        "search", EXAMPLE, "--data", TEST_DATA, "--calib-data", CALIB, "--batch", "40",
        "--recipe", tmp_path / "recipe.toml", "--max-accuracy-drop", "5", "--out", out,
        "--workers", "1",
    ]  # fmt: skip


def _main(capsys, tmp_path, recipe: str, *extra):
    """The CLI in this process (main: one-line errors, exit codes)."""
    from onnxopt.cli.app import main

    path = tmp_path / "recipe.toml"
    path.write_text(recipe)
    out = tmp_path / "out"
    args = ["search", EXAMPLE, "--data", TEST_DATA, "--batch", "40", "--recipe", path]
    code = main([str(a) for a in [*args, "--max-accuracy-drop", "5", "--out", out, *extra]])
    captured = capsys.readouterr()
    return code, captured.err.strip(), out


def _one_line(code, err, *words):
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) <= 2, (code, err)
    for w in words:
        assert w in err.replace("\n", " "), err


@pytest.mark.parametrize(
    ("recipe", "words"),
    [
        ("[prunning]\nratio = [0.3]\n", ["unknown pass 'prunning'"]),
        ("[prune]\nratios = [0.3]\n", ["prune: unknown option 'ratios'", "known:"]),
        ("[prune]\nratio = []\n", ["prune.ratio: empty range"]),
        ('[search]\npipeline = ["quantize", "prune"]\n', ["cannot run before 'prune'"]),
    ],
)
def test_bad_recipes_refused_before_any_trial(capsys, tmp_path, recipe, words):
    code, err, out = _main(capsys, tmp_path, recipe)
    _one_line(code, err, *words)
    assert not out.exists()  # nothing ran, nothing written


def test_unreachable_ray_address_is_one_line_within_30s(capsys, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    t0 = time.perf_counter()
    code, err, out = _main(
        capsys,
        tmp_path,
        "[prune]\nratio = [0]\n",
        "--executor",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
    )
    assert time.perf_counter() - t0 < 30
    _one_line(code, err, f"--ray-address 127.0.0.1:{port}", "no Ray cluster answers")


def test_bad_executor_and_address_without_ray(capsys, tmp_path):
    code, err, _ = _main(capsys, tmp_path, "[prune]\nratio = [0]\n", "--executor", "dask")
    _one_line(code, err, "--executor must be one of local, ray")
    code, err, _ = _main(capsys, tmp_path, "[prune]\nratio = [0]\n", "--ray-address", "auto")
    _one_line(code, err, "--ray-address needs --executor ray")
