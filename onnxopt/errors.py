"""User-facing errors. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base of every error caused by the user's input (files, options, data)."""


class ModelError(OnnxoptError):
    """The model cannot be read, is not ONNX, or the checker rejects it."""


class DataError(OnnxoptError):
    """Feeds do not fit the model (names, dtypes, ranks, shapes) or cannot be synthesized."""


class OptionError(OnnxoptError):
    """An unknown pass, a bad order, or an invalid option value."""
