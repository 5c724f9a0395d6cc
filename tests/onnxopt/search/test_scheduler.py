"""A whole search in this process on the packaged digits example (local process pool, one
worker): the trial tree shares its prefix, the outputs are written, and a resume recomputes
nothing and starts no worker."""

from __future__ import annotations

import json

import onnx

from onnxopt.examples import FOLDER as EXAMPLES
from onnxopt.search import driver
from onnxopt.search.recipe import build_space
from onnxopt.synth import get_feeds
from onnxopt.verify import Budget


def _request(out, resume=False):
    model = onnx.load(EXAMPLES / "digits_cnn.onnx")
    # two exact choices that both change nothing on this model (a resume must reuse unchanged
    # steps too), so prune(0.3) gets the same input twice: its content key is the same
    search = {"pipeline": ["fold-shapes", "prune"], "precision": ["fp32"], "min_full": 2}
    recipe = {"search": search, "fold-shapes": {"max_bytes": [1024, 2048]}}
    space = build_space({**recipe, "prune": {"ratio": [0, 0.3]}})
    return driver.Request(
        model=model,
        feeds=get_feeds(model, EXAMPLES / "digits_test.npz", batch=40),
        calib=get_feeds(model, EXAMPLES / "digits_calib.npz", batch=40),
        space=space,
        budget=Budget(min_cosine=None, max_accuracy_drop=5.0),
        out=out,
        workers=1,
        resume=resume,
        name="digits_cnn",
    )


def test_search_then_resume_redoes_nothing(tmp_path):
    snaps = []
    result, paths, info = driver.run(_request(tmp_path), snaps.append)
    labels = [t.trial.label() for t in result.trials]
    assert labels == ["exact only", "prune(ratio=0.3)"] * 2
    assert result.trials[0].leaf.outcome["status"] == "unchanged"
    # two exact steps, one prune: the second prune(0.3) is the first's, from the cache
    assert result.computed["steps"] == 3 and result.computed["steps_cached"] == 1
    assert result.trials[1].leaf.digest == result.trials[3].leaf.digest
    assert result.computed["evals"] == 2 + 2  # two distinct models, cheap and full
    assert all(t.status == "done" for t in result.trials)
    assert info["metric"] == "accuracy" and info["data"].startswith("passes learn from")
    assert result.chosen is not None and result.chosen["feasible"]
    assert snaps and snaps[-1]["phase"] == "stopped"
    front = json.loads(paths["front"].read_text())
    assert front["chosen"] == result.chosen["id"]

    again, _, _ = driver.run(_request(tmp_path, resume=True))
    assert again.computed["steps"] == 0 and again.computed["evals"] == 0
    assert again.computed["steps_cached"] == 4
    assert [(t.cheap["quality"], t.cheap["size_mb"]) for t in again.trials] == [
        (t.cheap["quality"], t.cheap["size_mb"]) for t in result.trials
    ]
    assert again.chosen["id"] == result.chosen["id"]
