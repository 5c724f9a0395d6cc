"""The search's cache on disk: every step's model and outcome, every evaluation, by content
hash, and the journal that ``--resume`` reads.

Keys are content hashes: the job's key hashes the original model, the data and the settings
that change what a pass does; a step's key is ``sha256(job key, the input model's sha256,
pass names, options)``. Trials that share a prefix of steps share its keys, and so do two
paths that reach the same model (a prune ratio that rounds to the same widths as another), so
a result is computed once and reused, in this search and in a resumed one. An evaluation's key
hashes the evaluated model's sha256, the rung and the evaluation settings.

Layout of ``DIR/cache``: ``models/<key>.onnx`` (written atomically before its journal line)
and ``journal.jsonl`` (one JSON record a line, appended and flushed as each result arrives, so
a search killed at any point loses at most the tasks that were running).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.data import Feeds
from onnxopt.errors import OptionError

logger = logging.getLogger(__name__)

JOURNAL = "journal.jsonl"


def digest(*parts: bytes | str) -> str:
    """sha256 of the parts (length-prefixed, so ("ab", "c") != ("a", "bc"))."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def feeds_digest(feeds: Feeds | None) -> str:
    """A hash of every array (names, dtypes, shapes, bytes) and label of ``feeds``."""
    h = hashlib.sha256()
    if feeds is None:
        return h.hexdigest()
    for run in feeds.runs:
        for name in sorted(run):
            a = np.ascontiguousarray(run[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
            h.update(a.tobytes())
    for lab in feeds.labels or []:
        a = np.ascontiguousarray(lab)
        h.update(f"labels|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def step_key(parent: str, canonical_step: str) -> str:
    return digest("step", parent, canonical_step)


class Cache:
    """Step models, step outcomes and evaluations of one search folder.

    Args:
        folder: the search's ``--out``; the cache is ``folder/cache``.
        resume: read what an earlier search left; without it a folder that holds a journal is
            refused (one line), so results are never mixed up by accident.
    """

    def __init__(self, folder: Path, *, resume: bool) -> None:
        self.root = Path(folder) / "cache"
        self.models = self.root / "models"
        self.journal = self.root / JOURNAL
        if self.journal.exists() and not resume:
            raise OptionError(
                f"{folder} already holds a search ({self.journal}); pass --resume to continue "
                "it, or choose another --out"
            )
        self.models.mkdir(parents=True, exist_ok=True)
        self.steps: dict[str, dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        if resume and self.journal.exists():
            self._load()
        self._fh = open(self.journal, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _load(self) -> None:
        bad = 0
        for line in self.journal.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # a line cut by a kill: its task simply runs again
                continue
            if rec.get("kind") == "step" and (
                rec["record"].get("status") != "kept" or self.model_path(rec["key"]).exists()
            ):  # a kept step needs its model; an unchanged or failed one needs none
                self.steps[rec["key"]] = rec["record"]
            elif rec.get("kind") == "eval":
                self.evals[rec["key"]] = rec["record"]
        if bad:
            logger.warning("%d unreadable journal lines skipped", bad)

    def model_path(self, key: str) -> Path:
        return self.models / f"{key}.onnx"

    def put_model(self, key: str, data: bytes) -> Path:
        """Write a model atomically (before the journal line that names it)."""
        path = self.model_path(key)
        if path.exists():
            return path
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:12]}.", dir=self.models)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def put_step(self, key: str, record: dict[str, Any]) -> None:
        self.steps[key] = record
        self._append({"kind": "step", "key": key, "record": record})

    def put_eval(self, key: str, record: dict[str, Any]) -> None:
        self.evals[key] = record
        self._append({"kind": "eval", "key": key, "record": record})

    def _append(self, rec: dict[str, Any]) -> None:
        self._fh.write(json.dumps(rec, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
