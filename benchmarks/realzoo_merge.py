"""The scikit-learn part of ``realzoo_goals.py``: true accuracy and ensembles of classifiers.

For every skl2onnx classifier of the corpus: scikit-learn's own ``score`` on the test split, the
ONNX model's ``label`` accuracy, and the accuracy ``onnxopt optimize --data TEST.npz`` reports
(with the output it read). Then every trio of the digits classifiers, members cut to their
``probabilities`` output (``onnx.utils.extract_model``), merged by ``onnxopt merge`` in two
ways: ``--mode average --on outputs`` (the mean of the three probability vectors) and
``--mode weighted --on outputs --fit-weights TRAIN.npz`` (weights fitted on the training split,
never on the test split). Accuracy = argmax of the merged output against the test labels.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.realzoo_goals import onnxopt


def _split_files(work: Path, dataset: str) -> tuple[Path, Path]:
    from onnxopt.zoo import sklearn_models as sk

    d = sk.dataset(dataset)
    test, train = work / f"{dataset}_test.npz", work / f"{dataset}_train.npz"
    np.savez(test, X=d["X_test"], labels=d["y_test"])
    np.savez(train, X=d["X_train"], labels=d["y_train"])
    return test, train


def classifiers(work: Path) -> list[dict[str, Any]]:
    """Every classifier: scikit-learn's accuracy, the ONNX label's and onnxopt's report."""
    from onnxopt.zoo import sklearn_models as sk

    rows = []
    for name in sk.NAMES:
        s = sk.spec(name)
        if not s.classifier:
            continue
        data = sk.dataset(s.dataset)
        native = 100.0 * sk.fit(name, data).score(data["X_test"], data["y_test"])
        test, _ = _split_files(work, s.dataset)
        rep = work / f"{name}.optimize.json"
        rep.unlink(missing_ok=True)
        rc, last = onnxopt("optimize", str(sk.build(name)), "-o", str(work / f"{name}.opt.onnx"),
                           "--data", str(test), "--report", str(rep))  # fmt: skip
        r = json.loads(rep.read_text()) if rc == 0 else {}
        rows.append({
            "name": name, "dataset": s.dataset, "sklearn": native,
            "onnx_label": sk.score(name, sk.build(name))["accuracy"],
            "onnxopt": r.get("accuracy_original"), "metric_output": r.get("metric_output"),
            "status": "ok" if rc == 0 else f"exit {rc}: {last}",
        })  # fmt: skip
    return rows


def _probabilities(name: str, work: Path) -> Path:
    import onnx.utils

    from onnxopt.zoo import sklearn_models as sk

    out = work / f"{name}.probabilities.onnx"
    onnx.utils.extract_model(str(sk.build(name)), str(out), ["X"], ["probabilities"])
    return out


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from onnxopt.timing import session

    scores = session(path, threads=1).run(None, {"X": x})[0]
    return float(100.0 * (scores.argmax(-1) == y).mean())


def trios(work: Path) -> list[dict[str, Any]]:
    """Every trio of digits classifiers, averaged and weighted."""
    from onnxopt.zoo import sklearn_models as sk

    names = [n for n in sk.NAMES if sk.spec(n).classifier and sk.spec(n).dataset == "digits"]
    data = sk.dataset("digits")
    test, train = _split_files(work, "digits")
    member = {n: sk.score(n, sk.build(n))["accuracy"] for n in names}
    rows = []
    for trio in itertools.combinations(names, 3):
        paths = [str(_probabilities(n, work)) for n in trio]
        row: dict[str, Any] = {"members": list(trio), "member_acc": [member[n] for n in trio]}
        for mode, extra in (("average", []), ("weighted", ["--fit-weights", str(train)])):
            out = work / f"{'+'.join(trio)}.{mode}.onnx"
            rc, last = onnxopt("merge", *paths, "-o", str(out), "--mode", mode, "--on", "outputs",
                               "--data", str(test), *extra)  # fmt: skip
            row[mode] = (
                {"status": "verified", "accuracy": _accuracy(out, data["X_test"], data["y_test"])}
                if rc == 0
                else {"status": f"exit {rc}: {last}"}
            )
        rows.append(row)
    return rows


def run(work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    return {"classifiers": classifiers(work), "trios": trios(work)}
