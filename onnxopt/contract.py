"""The pass contract: what every rewrite receives and returns.

A pass is a plain class with a ``name`` (its CLI name), ``exact`` (True: outputs must not change;
False: lossy, judged by the user's Budget) and ``run(graph, ctx) -> PassResult``. Passes never
verify themselves: :class:`onnxopt.pipeline.PassManager` does that for every pass alike.

Bisection contract: a pass that rewrites several independent *sites* names each one with a
stable key (for instance the name of the node it rewrites), asks ``ctx.allow(key)`` before
rewriting it, and lists the keys it rewrote in ``PassResult.sites``. When its output fails
verification the manager re-runs it on a fresh copy with a subset of keys allowed, keeping every
site that verifies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

    from onnxopt.data import Feeds

from onnxopt.errors import PassError

__all__ = ["Pass", "PassContext", "PassError", "PassResult"]

logger = logging.getLogger(__name__)


@dataclass
class PassResult:
    """What a pass did.

    Attributes:
        changed: whether the graph was modified.
        rewrites: how many sites were rewritten.
        notes: what a user should know (sites skipped, and why).
        sites: stable keys of the rewritten sites, for bisection; empty if not bisectable.
        details: free-form, JSON-serialisable extras for the report (e.g. per-group tables).
        model: a pass that works on the whole ModelProto (not the gs.Graph) returns it here.
    """

    changed: bool
    rewrites: int = 0
    notes: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    model: onnx.ModelProto | None = None

    @classmethod
    def unchanged(cls, *notes: str) -> PassResult:
        return cls(changed=False, rewrites=0, notes=list(notes))


@dataclass
class PassContext:
    """Everything a pass may use besides the graph.

    Attributes:
        feeds: calibration / verification inputs (may be synthesized; see ``feeds.synthesized``).
        options: this pass's options from the CLI or recipe.
        target: ``"onnx"`` (standard ops only) or ``"onnxruntime"`` (contrib ops allowed).
        original: the pipeline's original model (a teacher for distillation, a reference).
        site_filter: set by the manager during bisection; ``None`` allows every site.
        progress: optional callback ``(description, done, total)`` for long work.
        budget: the user's lossy Budget (for passes with their own accuracy-aware fallback,
            such as int8 quantization); the manager still judges the result independently.
        runner: a shared :class:`onnxopt.verify.Runner` (session cache), may be None.
    """

    feeds: Feeds | None = None
    options: dict[str, Any] = field(default_factory=dict)
    target: str = "onnx"
    original: onnx.ModelProto | None = None
    site_filter: set[str] | None = None
    progress: Callable[[str, int, int], None] | None = None
    budget: Any = None
    runner: Any = None

    def allow(self, key: str) -> bool:
        """Whether the site named ``key`` may be rewritten in this run."""
        return self.site_filter is None or key in self.site_filter

    def report_progress(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement ``run``.

    Configuration is constructor arguments; ``options`` from the CLI arrive in ``ctx.options``.
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    summary: ClassVar[str] = ""
    #: ordering tags: the name plus families such as "cleanup", "fusion", "quantize"
    tags: ClassVar[tuple[str, ...]] = ()
    #: works on the ModelProto instead of a gs.Graph (``run_model`` instead of ``run``)
    needs_model: ClassVar[bool] = False
    #: needs real (not synthesized) feeds to be meaningful
    needs_data: ClassVar[bool] = False
    #: a model below this opset is converted first (onnx's version converter), as onnxruntime's
    #: quantizer does; 0: never. Below ``opset_needed`` after that, the pass leaves it alone.
    opset_wanted: ClassVar[int] = 0
    opset_needed: ClassVar[int] = 0

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[PassResult, onnx.ModelProto]:
        """Run on ``model`` without modifying it: a copy for whole-model passes, a gs import
        otherwise, after converting an opset below ``opset_wanted``. Returns (result, the
        rewritten model, or ``model`` itself when unchanged)."""
        import onnx

        from onnxopt.graph import opset_version, to_graph, to_model
        from onnxopt.model import upgrade_opset

        notes: list[str] = []
        src = model
        if opset_version(model) < self.opset_wanted:
            src, note = upgrade_opset(model, self.opset_wanted)
            notes.append(note)
            if opset_version(src) < self.opset_needed:
                return PassResult.unchanged(*notes, f"{self.name} needs opset "
                                                    f"{self.opset_needed}"), model
        if self.needs_model:
            m = src
            if m is model:  # a converted model is already a copy
                m = onnx.ModelProto()
                m.CopyFrom(model)
            result = self.run_model(m, ctx)
            out = result.model if result.model is not None else m
        else:
            graph = to_graph(src)
            result = self.run(graph, ctx)
            out = to_model(graph, like=src) if result.changed else model
        result.notes[:0] = notes
        return result, (out if result.changed else model)

    def all_tags(self) -> set[str]:
        return {self.name, *self.tags}

    def __repr__(self) -> str:
        kind = "exact" if self.exact else "lossy"
        return f"<Pass {self.name} ({kind})>"
