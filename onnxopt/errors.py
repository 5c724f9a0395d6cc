"""User-facing errors. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base of every error caused by the user's input (files, options, data)."""


class ModelError(OnnxoptError):
    """The model cannot be read, is not ONNX, or the checker rejects it."""


class DataError(OnnxoptError):
    """Feeds do not fit the model (names, dtypes, ranks, shapes) or cannot be synthesized."""


class OptionError(OnnxoptError):
    """An unknown pass, a bad order, or an invalid option value.

    Raised with :meth:`invalid`, it keeps the ``option``, the ``value`` and ``why`` it is
    wrong, so that the CLI can name its own flag for the option.
    """

    option: str | None = None
    value: object = None
    why: str = ""

    @classmethod
    def invalid(cls, option: str, value: object, why: str) -> OptionError:
        """``"{option} {why}, not {value!r}"``, with the three kept as attributes."""
        e = cls(f"{option} {why}, not {value!r}")
        e.option, e.value, e.why = option, value, why
        return e


class PassError(OptionError):
    """A pass could not run with what it was given (bad options, missing data). The pass
    manager reports it as the pass's error and goes on from the last good model."""


class MetricError(OptionError):
    """The user's ``--metric`` callable raised or returned no number. Unlike a pass's own
    error it stops the run (one line naming the callable, exit 2): no model can be judged."""


class PipelineError(OnnxoptError):
    """A pass failed verification under ``strict``."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type
    name when the message is empty: how onnxopt quotes a library's error in one line."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
