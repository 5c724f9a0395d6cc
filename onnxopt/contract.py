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
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

    from onnxopt.data import Feeds

from onnxopt.errors import OptionError, PassError

__all__ = ["Pass", "PassConfig", "PassContext", "PassError", "PassResult"]

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="PassConfig")


@dataclass(frozen=True)
class PassConfig:
    """Base of a pass's typed options: a frozen dataclass whose field defaults are the pass's
    defaults (defined there and nowhere else) and whose ``__post_init__`` validates them,
    raising :class:`OptionError` with a message that names the option.

    Frozen (lists become tuples), so a configuration can key a cache.
    """

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any] | None, *, where: str = "") -> C:
        """Build from string-keyed options (CLI, recipes, the Python API); an unknown key is an
        :class:`OptionError` that lists the known ones."""
        known = {f.name for f in fields(cls)}
        values = dict(options or {})
        unknown = sorted(set(values) - known)
        prefix = f"{where}: " if where else ""
        if unknown:
            raise OptionError(
                f"{prefix}unknown option '{unknown[0]}'; known: {', '.join(sorted(known))}"
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**values)
        except OptionError as e:
            raise OptionError(f"{prefix}{e}") from e

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (and validated)."""
        return type(self).from_options({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The fields by name (values as they are: nested objects are not converted)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each option's default (for help texts and reports)."""
        return {
            f.name: (f.default if f.default is not MISSING else f.default_factory())
            for f in fields(cls)
            if f.default is not MISSING or f.default_factory is not MISSING
        }


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
        fallbacks: a searching lossy pass's next candidates, each a subset of ``sites``, in
            the order it would choose them (each rewrites less): when its candidate fails
            the manager's check, the manager verifies these before it bisects.
        verified_fallbacks: the indices of ``fallbacks`` whose models met the budget on the
            verification runs already (:attr:`PassContext.precheck`): one the manager passes
            over for bisection (a small one) it still tries once the rest keeps nothing.
        timed_rounds: a speed pass that timed its result's graph against its input, on
            :meth:`PassContext.feeds`'s ``timing_feed()``, in interleaved turns: each turn's
            time ratio (result / input). The manager's race starts from them
            (:func:`onnxopt.timing.race`'s ``prior``).
    """

    changed: bool
    rewrites: int = 0
    notes: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    model: onnx.ModelProto | None = None
    fallbacks: list[list[str]] = field(default_factory=list)
    verified_fallbacks: list[int] = field(default_factory=list)
    timed_rounds: list[float] = field(default_factory=list)

    @classmethod
    def unchanged(cls, *notes: str) -> PassResult:
        return cls(changed=False, rewrites=0, notes=list(notes))


def grouped_notes(lines: list[str], what: str = "left float") -> list[str]:
    """``"node: why"`` lines as one note per reason, with the count and the first nodes:
    ``"24 left float (why): a, b, c …"``."""
    by: dict[str, list[str]] = {}
    for line in lines:
        node, _, why = line.partition(": ")
        by.setdefault(why, []).append(node)
    out = []
    for why, nodes in by.items():
        more = " …" if len(nodes) > 3 else ""
        out.append(f"{len(nodes)} {what} ({why}): {', '.join(nodes[:3])}{more}")
    return out


@dataclass
class PassContext:
    """Everything a pass may use besides the graph.

    Attributes:
        feeds: calibration / verification inputs (may be synthesized; see ``feeds.synthesized``).
        target: ``"onnx"`` (standard ops only) or ``"onnxruntime"`` (contrib ops allowed).
        original: the pipeline's original model (a teacher for distillation, a reference).
        site_filter: set by the manager during bisection; ``None`` allows every site.
        progress: optional callback ``(description, done, total)`` for long work.
        budget: the user's lossy Budget (for passes with their own accuracy-aware fallback,
            such as int8 quantization); the manager still judges the result independently.
        runner: a shared :class:`onnxopt.verify.Runner` (session cache), may be None.
        measure_candidates: a pass that tries several candidates (int8 fallback steps) times
            each one for the report's trade-off plot (``PassResult.details["candidates"]``).
        parallel: where independent chunks of a pass's work may run (``parallel(fn, [args,
            ...]) -> [fn(*args), ...]`` with a ``workers`` count: processes or Ray tasks, set
            by ``onnxopt search``); None: in this process. Results must not depend on it.
        allow_slower: the user keeps a speed pass's model even when it is not faster (a pass
            that chooses sites by their measured speed then need not).
        memo: scratch that a pass's first run and its bisection trials on the same input
            share (the manager gives one per pass run; None elsewhere): what a trial may
            reuse instead of redoing, such as int8 calibration.
        precheck: the manager's verdict on a candidate model, on the verification runs the
            pass never learns from ("" within the budget, else why not), for a lossy pass's
            first run (None in bisection trials and outside a manager). A pass may use it
            only to give up early, never to choose among models that pass: the model it
            returns is verified as any other.
    """

    feeds: Feeds | None = None
    target: str = "onnx"
    original: onnx.ModelProto | None = None
    site_filter: set[str] | None = None
    progress: Callable[[str, int, int], None] | None = None
    budget: Any = None
    runner: Any = None
    measure_candidates: bool = False
    parallel: Any = None
    allow_slower: bool = False
    memo: dict[str, Any] | None = None
    precheck: Callable[[onnx.ModelProto], str] | None = None

    def allow(self, key: str) -> bool:
        """Whether the site named ``key`` may be rewritten in this run."""
        return self.site_filter is None or key in self.site_filter

    def report_progress(self, what: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(what, done, total)


class Pass:
    """Base class of every pass. Subclasses set the class attributes and implement ``run``.

    Configuration is a constructor argument: a pass with options names its
    :class:`PassConfig` subclass in ``config_class`` and reads ``self.config``;
    :func:`onnxopt.passes.registry.resolve` builds it from string-keyed options.
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
    #: a graph pass that also runs inside If/Loop/Scan bodies (onnxopt.subgraphs)
    subgraphs: ClassVar[bool] = False
    #: the pass's typed options (None: it has none)
    config_class: ClassVar[type[PassConfig] | None] = None
    #: what a lossy pass is for: "speed" (its model must be faster than its input, or it is
    #: rolled back unless the user allows slower models), "size", or "" (no such promise)
    goal: ClassVar[str] = ""
    #: the runtime whose contrib ops the pass writes ("onnxruntime"), "" for standard ONNX: the
    #: PassManager refuses the pass under another ``--target`` before anything runs
    target_needed: ClassVar[str] = ""
    #: a lossy pass whose candidates must also meet the budget as onnxruntime runs them
    #: (graph optimizations on), not only as written: its kernels and fusions can lose more
    #: precision than the literal graph does (half precision)
    verify_deployed: ClassVar[bool] = False

    def __init__(self, config: PassConfig | None = None) -> None:
        if self.config_class is None:
            if config is not None:
                raise TypeError(f"{self.name} takes no configuration")
        elif config is None:
            config = self.config_class()
        elif not isinstance(config, self.config_class):
            raise TypeError(
                f"{self.name} takes a {self.config_class.__name__}, not {type(config).__name__}"
            )
        self.config = config

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> Pass:
        """An instance configured from string-keyed options (one-line OptionError on a bad
        key or value)."""
        if cls.config_class is None:
            if options:
                raise OptionError(f"{cls.name}: takes no options (got {', '.join(options)})")
            return cls()
        return cls(cls.config_class.from_options(options, where=cls.name))

    @classmethod
    def target_error(cls, target: str) -> str:
        """Why the pass cannot run under ``--target target`` ("" when it can): it writes
        another runtime's contrib ops (:attr:`target_needed`)."""
        need = cls.target_needed
        if not need or need == target:
            return ""
        return f"{cls.name} writes {need} contrib ops: add --target {need}"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[PassResult, onnx.ModelProto]:
        """Run on ``model`` without modifying it. Returns (result, the rewritten model, or
        ``model`` itself when unchanged)."""
        work = Working(model)
        result = self.rewrite(work, ctx)
        return result, (work.model() if result.changed else model)

    def rewrite(self, work: Working, ctx: PassContext) -> PassResult:
        """Run on a working copy: the one way a pass runs (:meth:`apply`, and the manager's
        batches of exact passes, which share one working copy). A model below
        ``opset_wanted`` is converted first (onnx's version converter)."""
        from onnxopt import provenance
        from onnxopt.graph import opset_version
        from onnxopt.model import upgrade_opset

        before = provenance.snapshot(work.current())
        notes: list[str] = []
        if self.opset_wanted and opset_version(work.model()) < self.opset_wanted:
            converted, note = upgrade_opset(work.model(), self.opset_wanted)
            notes.append(note)
            if opset_version(converted) < self.opset_needed:
                return PassResult.unchanged(*notes, f"{self.name} needs opset {self.opset_needed}")
            work.set_model(converted)  # the pass's result is judged against the input
        if self.needs_model:
            m = work.editable_model()
            result = self.run_model(m, ctx)
            if result.changed:
                work.set_model(result.model if result.model is not None else m)
        else:
            from onnxopt.subgraphs import run_everywhere

            graph = work.graph()
            result = (
                run_everywhere(self.run, graph, ctx) if self.subgraphs else self.run(graph, ctx)
            )
            if result.changed:
                work.graph_changed()
        if result.changed:  # which original nodes each new node came from
            provenance.record(before, work.current())
        result.notes[:0] = notes
        return result

    def all_tags(self) -> set[str]:
        return {self.name, *self.tags}

    def __repr__(self) -> str:
        kind = "exact" if self.exact else "lossy"
        config = getattr(self, "config", None)
        return f"<Pass {self.name} ({kind}){f' {config}' if config is not None else ''}>"


class Working:
    """A model being rewritten by one pass, or by a batch of passes in turn: an ONNX proto or
    an onnx-graphsurgeon graph, converted only when the next pass needs the other form. The
    model it starts from is never modified.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.like = model  # metadata, opsets and IR version for exports
        self._proto: onnx.ModelProto | None = model
        self._owned = False  # whether _proto is a private copy that passes may edit
        self._graph: gs.Graph | None = None

    def graph(self) -> gs.Graph:
        """The graph form (imported from the proto on first use)."""
        from onnxopt.graph import to_graph

        if self._graph is None:
            self._graph = to_graph(self._proto)
        return self._graph

    def current(self) -> gs.Graph | onnx.ModelProto:
        """The form the last pass left (the graph if it is current, else the proto), without
        converting."""
        return self._graph if self._graph is not None else self._proto

    def graph_changed(self) -> None:
        """A pass edited the graph: the proto form is stale."""
        self._proto, self._owned = None, False

    def model(self) -> onnx.ModelProto:
        """The proto form (exported from the graph when a pass changed it)."""
        from onnxopt.graph import to_model

        if self._proto is None:
            self._proto, self._owned = to_model(self._graph, like=self.like), True
        return self._proto

    def editable_model(self) -> onnx.ModelProto:
        """The proto form as a private copy that a whole-model pass may edit in place."""
        import onnx

        m = self.model()
        if not self._owned:
            copy = onnx.ModelProto()
            copy.CopyFrom(m)
            self._proto, self._owned = copy, True
        return self._proto

    def set_model(self, model: onnx.ModelProto) -> None:
        """A whole-model pass produced ``model``: the graph form is stale. On a model held over
        mapped files, large weights the pass wrote in the proto are spilled once."""
        from onnxopt import weights

        if weights.is_mapped_model(self.like):
            model = weights.externalize(model, in_place=True)
        self._proto, self._owned, self._graph = model, True, None
        self.like = model
