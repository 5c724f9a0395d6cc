"""The scikit-learn builders: skl2onnx models whose onnxruntime outputs match scikit-learn.

Every kind of model in the corpus (linear, pipeline with a scaler, random forest, gradient
boosting, MLP; classifiers and regressors) is fitted on a small slice of a bundled data set and
converted exactly as ``build`` converts it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skl2onnx")

from onnxopt.timing import session
from onnxopt.zoo import ZooError, sklearn_models

CLASSIFIERS = [
    "digits_logreg",
    "digits_scaler_logreg",
    "breast_cancer_random_forest",
    "iris_gradient_boosting",
    "breast_cancer_scaler_mlp",
]
REGRESSORS = ["diabetes_scaler_ridge", "diabetes_gradient_boosting", "diabetes_scaler_mlp"]


def _tiny(dataset: str, n: int = 60) -> dict[str, np.ndarray]:
    d = sklearn_models.dataset(dataset)
    return {k: v[:n] for k, v in d.items()}


def _run(estimator, data) -> dict[str, np.ndarray]:
    onx = sklearn_models.convert(estimator, data["X_train"])
    sess = session(onx, threads=1, optimization="disable")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"X": data["X_test"]})))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_matches_sklearn(name):
    data = _tiny("iris")  # 3 classes, 4 features: any spec's estimator fits it
    est = sklearn_models.fit(name, data)
    out = _run(est, data)
    assert list(out) == ["label", "probabilities"]  # zipmap off: plain tensors
    assert out["label"].dtype == np.int64 and out["probabilities"].dtype == np.float32
    np.testing.assert_array_equal(out["label"], est.predict(data["X_test"]))
    np.testing.assert_allclose(
        out["probabilities"], est.predict_proba(data["X_test"]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", REGRESSORS)
def test_regressor_matches_sklearn(name):
    data = _tiny("diabetes")
    est = sklearn_models.fit(name, data)
    out = _run(est, data)
    assert list(out) == ["variable"] and out["variable"].shape == (len(data["X_test"]), 1)
    want = est.predict(data["X_test"])
    np.testing.assert_allclose(out["variable"][:, 0], want, rtol=1e-4, atol=1e-3)


def test_datasets_and_names():
    d = sklearn_models.dataset("digits")
    assert d["X_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    assert len(d["X_test"]) == 450  # 25 % of 1797, stratified
    assert sklearn_models.dataset("diabetes")["y_test"].dtype == np.float32
    assert set(CLASSIFIERS + REGRESSORS) <= set(sklearn_models.NAMES)
    with pytest.raises(ZooError, match="unknown scikit-learn model 'svm'"):
        sklearn_models.spec("svm")
    with pytest.raises(ZooError, match="unknown data set"):
        sklearn_models.dataset("mnist")
