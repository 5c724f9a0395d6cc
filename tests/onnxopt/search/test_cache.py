"""The search cache: chained content keys, atomic models, the journal a resume reads."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import Feeds
from onnxopt.errors import OptionError
from onnxopt.search.cache import Cache, digest, feeds_digest, step_key


def test_keys_chain_and_hash_content():
    assert digest("ab", "c") != digest("a", "bc")
    assert step_key("root", "s1") == step_key("root", "s1") != step_key("root2", "s1")
    f = Feeds([{"x": np.zeros((2, 3), np.float32)}], [np.array([1, 2])])
    g = Feeds([{"x": np.zeros((2, 3), np.float32)}], [np.array([1, 3])])
    assert feeds_digest(f) != feeds_digest(g)
    assert feeds_digest(f) == feeds_digest(
        Feeds([{"x": np.zeros((2, 3), np.float32)}], [np.array([1, 2])])
    )


def test_journal_survives_a_cut_line_and_resume_reads_it(tmp_path):
    c = Cache(tmp_path, resume=False)
    c.put_model("k1", b"model")
    c.put_step("k1", {"status": "kept", "digest": "d"})
    c.put_step("k2", {"status": "kept", "digest": "e"})  # its model was never written
    c.put_eval("e1", {"status": "ok", "quality": 1.0})
    c.close()
    with open(c.journal, "a") as f:
        f.write('{"kind": "step", "key": "k3", "rec')  # killed mid-line
    with pytest.raises(OptionError, match="--resume"):
        Cache(tmp_path, resume=False)
    r = Cache(tmp_path, resume=True)
    assert set(r.steps) == {"k1"} and r.evals["e1"]["quality"] == 1.0
    assert r.model_path("k1").read_bytes() == b"model"
    r.close()
