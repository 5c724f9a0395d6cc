"""scikit-learn classifiers and regressors converted with skl2onnx, on scikit-learn's bundled
data sets (digits, iris, breast cancer, diabetes; nothing is downloaded).

Every data set is split once: 25 % test, ``random_state=0``, stratified for classifiers; ``X`` is
float32 (skl2onnx infers the input ``X float32[?, n_features]`` from it). Classifiers are
converted with ``zipmap`` off, so their outputs are ``label`` (int64 ``[N]``) and
``probabilities`` (float32 ``[N, classes]``); regressors have one output ``variable`` (float32
``[N, 1]``). skl2onnx picks each model's default opsets itself (ai.onnx 14 to 22, ai.onnx.ml 1),
as a user converting with its defaults gets them.

    build(name) -> Path                # cached under zoo_dir()/sklearn-<hash>/
    dataset(name) -> {"X_train", "X_test", "y_train", "y_test"}
    fit(name, data) -> estimator       # the spec's estimator fitted on data
    convert(estimator, X) -> ModelProto
    score(name, path) -> {"accuracy": %} or {"r2": ...}   # onnxruntime on the test split

scikit-learn and skl2onnx are imported inside the functions that use them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.zoo import ZooError
from onnxopt.zoo.store import cached, group_dir

SEED = 0
BUILDER = 1
PACKAGES = ("scikit-learn", "skl2onnx", "onnx", "numpy")
DATASETS = {"digits": True, "iris": True, "breast_cancer": True, "diabetes": False}


@dataclass(frozen=True)
class SkSpec:
    """One model: its name, data set and a maker of the unfitted estimator."""

    name: str
    dataset: str
    make: Callable[[], Any]

    @property
    def classifier(self) -> bool:
        return DATASETS[self.dataset]


def _forest(kind: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn import ensemble

        return getattr(ensemble, kind)(random_state=SEED, **kw)

    return make


def _linear(kind: str, scaler: bool, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn import linear_model
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        est = getattr(linear_model, kind)(**kw)
        return make_pipeline(StandardScaler(), est) if scaler else est

    return make


def _mlp(kind: str, scaler: bool, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        from sklearn import neural_network
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        est = getattr(neural_network, kind)(random_state=SEED, **kw)
        return make_pipeline(StandardScaler(), est) if scaler else est

    return make


SPECS = {
    s.name: s
    for s in [
        SkSpec("digits_logreg", "digits", _linear("LogisticRegression", False, max_iter=5000)),
        SkSpec(
            "digits_random_forest",
            "digits",
            _forest("RandomForestClassifier", n_estimators=100, max_depth=12),
        ),
        SkSpec(
            "digits_gradient_boosting",
            "digits",
            _forest("GradientBoostingClassifier", n_estimators=50, max_depth=3),
        ),
        SkSpec("digits_mlp", "digits", _mlp("MLPClassifier", False, hidden_layer_sizes=(128, 64))),
        SkSpec(
            "digits_scaler_logreg", "digits", _linear("LogisticRegression", True, max_iter=5000)
        ),
        SkSpec(
            "iris_gradient_boosting", "iris", _forest("GradientBoostingClassifier", n_estimators=50)
        ),
        SkSpec(
            "breast_cancer_scaler_mlp",
            "breast_cancer",
            _mlp("MLPClassifier", True, hidden_layer_sizes=(64,), max_iter=1000),
        ),
        SkSpec(
            "breast_cancer_random_forest",
            "breast_cancer",
            _forest("RandomForestClassifier", n_estimators=50),
        ),
        SkSpec("diabetes_scaler_ridge", "diabetes", _linear("Ridge", True, alpha=1.0)),
        SkSpec(
            "diabetes_gradient_boosting",
            "diabetes",
            _forest("GradientBoostingRegressor", n_estimators=100, max_depth=3),
        ),
        SkSpec(
            "diabetes_random_forest",
            "diabetes",
            _forest("RandomForestRegressor", n_estimators=50, max_depth=8),
        ),
        SkSpec(
            "diabetes_scaler_mlp",
            "diabetes",
            _mlp(
                "MLPRegressor",
                True,
                hidden_layer_sizes=(64, 32),
                learning_rate_init=0.01,
                alpha=0.1,
                early_stopping=True,
                max_iter=2000,
            ),
        ),
    ]
}
NAMES = tuple(SPECS)


def spec(name: str) -> SkSpec:
    if name not in SPECS:
        raise ZooError(f"unknown scikit-learn model {name!r}; known: {', '.join(NAMES)}")
    return SPECS[name]


def dataset(name: str) -> dict[str, np.ndarray]:
    """The fixed split of one bundled data set: float32 X, int64 (classes) or float32 y."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name not in DATASETS:
        raise ZooError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    y = y.astype(np.int64) if DATASETS[name] else y.astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(
        x.astype(np.float32),
        y,
        test_size=0.25,
        random_state=SEED,
        stratify=y if DATASETS[name] else None,
    )
    return {"X_train": xtr, "X_test": xte, "y_train": ytr, "y_test": yte}


def fit(name: str, data: dict[str, np.ndarray]) -> Any:
    """The estimator of ``name``, fitted on ``data["X_train"], data["y_train"]``."""
    est = spec(name).make()
    with warnings.catch_warnings():  # ConvergenceWarning on small data
        warnings.simplefilter("ignore")
        est.fit(data["X_train"], data["y_train"])
    return est


def convert(estimator: Any, x: np.ndarray) -> Any:
    """skl2onnx's ``to_onnx`` with its default opsets; classifiers with zipmap off."""
    from skl2onnx import to_onnx
    from sklearn.base import is_classifier

    opts = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    return to_onnx(estimator, x[:1].astype(np.float32), options=opts)


def build(name: str) -> Path:
    """Fit ``name`` on its data set's training split and convert it (cached)."""
    s = spec(name)
    path = group_dir("sklearn", BUILDER, PACKAGES) / f"{name}.onnx"

    def write(tmp: Path) -> None:
        data = dataset(s.dataset)
        tmp.write_bytes(convert(fit(name, data), data["X_train"]).SerializeToString())

    return cached(path, write)


def score(name: str, path: str | Path) -> dict[str, float]:
    """Test-split accuracy in percent (classifiers, from ``label``) or R² (regressors)."""
    from onnxopt.timing import session

    s = spec(name)
    data = dataset(s.dataset)
    sess = session(path, threads=1)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"X": data["X_test"]})))
    if s.classifier:
        return {"accuracy": float((outs["label"] == data["y_test"]).mean() * 100.0)}
    pred = outs["variable"].reshape(-1).astype(np.float64)
    y = data["y_test"].astype(np.float64)
    return {"r2": float(1.0 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())}
