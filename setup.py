"""Package discovery, which pyproject.toml cannot express: the pass families live in the
top-level ``passes/`` folder and install as ``onnxopt.passes``. Packages are found, never listed
by hand (a hand-written list once missed one and broke every non-editable install)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["onnxopt", "onnxopt.*"])
    + ["onnxopt.passes"]
    + [f"onnxopt.passes.{p}" for p in find_packages("passes")],
    package_dir={"onnxopt.passes": "passes"},
)
