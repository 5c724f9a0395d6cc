"""The bundled example: ``digits_cnn.onnx`` (a small residual CNN trained on scikit-learn's
digits) with its calibration and labeled test data; ``make_example.py`` re-creates them."""

from pathlib import Path

#: the folder holding the example files (package data: works from a wheel too)
FOLDER = Path(__file__).resolve().parent
