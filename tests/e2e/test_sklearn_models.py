"""scikit-learn classifiers converted by skl2onnx (outputs 'label' int64 and 'probabilities')
through optimize, quantize and merge: metrics read the scores and report true accuracy, a
label output is recomputed for the ensemble, bad options are one line and exit 2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

skl2onnx = pytest.importorskip("skl2onnx")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402

from onnxopt.cli.app import main  # noqa: E402
from onnxopt.data import load_feeds  # noqa: E402
from onnxopt.passes.registry import manager  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    out = tmp_path_factory.mktemp("skl")
    estimators = {
        "logreg": LogisticRegression(max_iter=500),
        "forest": RandomForestClassifier(n_estimators=30, max_depth=10, random_state=0),
        "mlp": MLPClassifier((64,), max_iter=300, random_state=0),
    }
    paths, scores = {}, {}
    for name, est in estimators.items():
        est.fit(xtr, ytr)
        scores[name] = est.score(xte, yte) * 100
        onx = skl2onnx.to_onnx(est, xtr[:1], options={id(est): {"zipmap": False}})
        paths[name] = out / f"{name}.onnx"
        onnx.save(onx, paths[name])
    data = out / "test.npz"
    np.savez(data, X=xte, labels=yte)
    return paths, scores, data


def test_optimize_reports_the_true_accuracy_from_the_scores(models):
    paths, scores, data = models
    for name, path in paths.items():
        model = onnx.load(path)
        feeds = load_feeds(data, model, batch=50)
        _, rep = manager(["cleanup", "fusion"]).run(model, feeds)
        assert rep.metric_output == "probabilities"
        assert rep.accuracy_original == pytest.approx(scores[name], abs=1e-6), name
        assert not rep.failed


def test_quantize_the_mlp(models, tmp_path):
    paths, scores, data = models
    out = tmp_path / "mlp_int8.onnx"
    args = [
        "quantize",
        str(paths["mlp"]),
        "-o",
        str(out),
        "--data",
        str(data),
        "--batch",
        "50",
        "--max-accuracy-drop",
        "1",
        "--allow-slower",
    ]
    assert main(args) == 0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(out).graph.node)


def test_merge_three_classifiers(models, tmp_path):
    paths, scores, data = models
    out = tmp_path / "ensemble.onnx"
    args = [
        "merge",
        *(str(paths[n]) for n in ("logreg", "forest", "mlp")),
        "-o",
        str(out),
        "--mode",
        "average",
        "--data",
        str(data),
    ]
    assert main(args) == 0
    model = onnx.load(out)
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]


def test_bad_output_names_are_one_line(models, tmp_path, capsys):
    paths, _, data = models
    args = [
        "merge",
        str(paths["logreg"]),
        str(paths["mlp"]),
        "-o",
        str(tmp_path / "m.onnx"),
        "--member-output",
        "logreg:nope",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "member 'logreg' has no output 'nope'" in err and len(err.strip().splitlines()) == 1
    args = [
        "optimize",
        str(paths["mlp"]),
        "-o",
        str(tmp_path / "o.onnx"),
        "--data",
        str(data),
        "--metric-output",
        "nope",
    ]
    assert main(args) == 2
    assert "--metric-output 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o.onnx").exists()
