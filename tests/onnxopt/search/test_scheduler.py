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
    # the exact stage changes nothing on this model: a resume must reuse unchanged steps too
    search = {"pipeline": ["remove-identity", "prune"], "precision": ["fp32"], "min_full": 2}
    space = build_space({"search": search, "prune": {"ratio": [0, 0.3]}})
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
    assert [t.trial.label() for t in result.trials] == ["exact only", "prune(ratio=0.3)"]
    assert result.computed["steps"] == 2  # the exact prefix once, then prune on its model
    assert result.trials[0].leaf.outcome["status"] == "unchanged"
    assert all(t.status == "done" for t in result.trials)
    assert info["metric"] == "accuracy" and info["data"].startswith("passes learn from")
    assert result.chosen is not None and result.chosen["feasible"]
    assert snaps and snaps[-1]["phase"] == "stopped"
    front = json.loads(paths["front"].read_text())
    assert front["chosen"] == result.chosen["id"]

    again, _, _ = driver.run(_request(tmp_path, resume=True))
    assert again.computed["steps"] == 0 and again.computed["evals"] == 0
    assert again.computed["steps_cached"] == 2
    assert [(t.cheap["quality"], t.cheap["size_mb"]) for t in again.trials] == [
        (t.cheap["quality"], t.cheap["size_mb"]) for t in result.trials
    ]
    assert again.chosen["id"] == result.chosen["id"]
