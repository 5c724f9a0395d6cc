"""What one merge carries from step to step: the report it fills and the context its steps
share (the configuration, the harmonized members, the CSE aliases, the onnxruntime runner)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from onnxopt.data import Feeds, load_feeds
from onnxopt.errors import OptionError
from onnxopt.passes.ensemble.config import MergeConfig
from onnxopt.passes.ensemble.harmonize import Member
from onnxopt.runner import Runner, Runs

#: the numpy combination of the members' runs the merged graph must reproduce:
#: ``reference(member_runs, feeds) -> runs`` (member runs are None in serial mode)
Reference = Callable[[list[Runs] | None, Feeds], Runs]


@dataclass
class MergeReport:
    """What ``merge`` did, for the CLI table and ``--json``."""

    mode: str
    members: list[dict[str, Any]] = field(default_factory=list)
    opset: int = 0
    ir_version: int = 0
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    cse: dict[str, int] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, int] = field(default_factory=dict)
    verified: bool | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float] = field(default_factory=dict)
    accuracy_split: str = ""
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=float)


@dataclass
class MergeContext:
    """The state the steps of one merge share.

    Attributes:
        config: the merge options.
        members: the harmonized members (one opset, prefixed names, shared inputs).
        alias: tensor name -> the tensor cross-model CSE kept in its place.
        runner: onnxruntime sessions for the members and the merged graph.
        stub: a model with only the merged graph's inputs (to load and synthesize feeds).
        report: the report being filled.
        eval_feeds: the feeds verification and accuracy use (None: synthesized).
        cheap_is_probs: ``cascade``: the cheap member's output already is a Softmax.
    """

    config: MergeConfig
    members: list[Member]
    alias: dict[str, str]
    runner: Runner
    stub: onnx.ModelProto
    report: MergeReport
    eval_feeds: Feeds | None = None
    cheap_is_probs: bool = False

    def member_runs(self, feeds: Feeds) -> list[Runs]:
        """Each member run separately on ``feeds`` (inputs mapped to its own names)."""
        out = []
        for m in self.members:
            fm = Feeds(
                [
                    {
                        k: run[v].reshape(m.reshapes[k]) if k in m.reshapes else run[v]
                        for k, v in m.inputs.items()
                    }
                    for run in feeds.runs
                ]
            )
            out.append(self.runner.run(m.model, fm))
        return out

    def load_feeds(self, source: Any, need_labels: bool, what: str) -> Feeds:
        """Feeds for the merged graph's inputs; fitting needs labels."""
        feeds = load_feeds(source, self.stub, batch=self.config.batch)
        if need_labels and feeds.labels is None:
            raise OptionError(f"{what}: the data has no 'labels' array; fitting needs labels")
        return feeds

    def batched(self, feeds: Feeds) -> Feeds:
        """Concatenate single-sample runs when every input's batch dim is dynamic (fast
        fitting)."""
        dyn = all(
            not (d.HasField("dim_value") and d.dim_value > 0)
            for v in self.stub.graph.input
            for d in v.type.tensor_type.shape.dim[:1]
        )
        return feeds.batched(256) if dyn and len(feeds.runs) > 1 else feeds
