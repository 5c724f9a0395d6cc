"""The OCR corpus' images: real scans and photos from scikit-image, and known text rendered on
real photos (nothing is downloaded).

- ``page``: ``skimage.data.page()``, a real scanned page (191x384, six lines of text);
- ``text``: ``skimage.data.text()``, a real photo of handwritten maths (PP-OCR reads nothing
  in it: a check that detection finds no false text);
- 60 rendered: 12 photos bundled in the scikit-image wheel (resized so the long side is at most
  512) x 5 variants (``plain`` text with a stroke, text on a translucent ``banner``,
  ``tilted`` by up to 5 degrees, ``upside_down`` (exercises the direction classifier),
  ``small`` 14-18 px), 1-3 lines of random words and numbers each, drawn with Pillow's bundled
  TrueType font, seeded. The ground truth of each is kept in its metadata.

Images are BGR uint8 HWC, the package's (OpenCV's) convention.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

SEED = 0
WORDS = (
    "the quick brown fox jumps over lazy dog coffee astronaut rocket launch orbit cat kitten "
    "photo market price total invoice number model optimizer graph tensor batch layer window "
    "river mountain station north south green yellow morning evening ticket platform garden "
    "museum library open closed daily special coffee espresso street avenue parking exit"
).split()
#: bundled in the scikit-image wheel (eagle, lily, kidney, ... need a download: not used)
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "camera",
    "brick",
    "coins",
    "retina",
    "hubble_deep_field",
    "moon",
    "motorcycle",
)
VARIANTS = ("plain", "banner", "tilted", "upside_down", "small")


def photo(name: str) -> np.ndarray:
    """One of :data:`PHOTOS` as RGB uint8, resized so its long side is at most 512."""
    import cv2
    from skimage import data

    a = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    a = np.ascontiguousarray(a[..., :3]).astype(np.uint8)
    s = 512 / max(a.shape[:2])
    if s < 1:
        size = (round(a.shape[1] * s), round(a.shape[0] * s))
        a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
    return a


def _sentence(r: random.Random) -> str:
    w = [r.choice(WORDS) for _ in range(r.randint(2, 4))]
    roll = r.random()
    if roll < 0.3:
        w.append(str(r.randint(10, 99999)))
    elif roll < 0.45:
        w.append(f"{r.randint(1, 99)}.{r.randint(0, 99):02d}")
    elif roll < 0.55:
        w.insert(0, f"No.{r.randint(1, 999)}")
    s = " ".join(w)
    return s.capitalize() if r.random() < 0.5 else s


def _layout(r: random.Random, variant: str, width: int) -> tuple[list[str], Any, int, float]:
    """Lines, font, font size and text width for one image ``width`` pixels wide."""
    from PIL import ImageFont

    n_lines = 1 if variant == "upside_down" and r.random() < 0.5 else r.randint(1, 3)
    if variant == "upside_down":
        n_lines = min(n_lines, 2)
    lines = [_sentence(r) for _ in range(n_lines)]
    size = r.choice([14, 16, 18]) if variant == "small" else r.choice([20, 24, 28, 32])
    while True:
        font = ImageFont.load_default(size=size)
        text_w = max(font.getlength(ln) for ln in lines)
        if text_w <= 0.92 * width or size <= 10:
            return lines, font, size, text_w
        size -= 2


def _render(photo: np.ndarray, r: random.Random, variant: str) -> tuple[np.ndarray, list[str]]:
    """Draw 1-3 lines of known text onto ``photo`` (RGB); returns (RGB image, lines)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(photo).convert("RGB")
    width, height = im.size
    lines, font, size, text_w = _layout(r, variant, width)
    step = int(size * 1.6)
    block_h = step * len(lines)
    x = r.randint(4, max(5, int(width - text_w - 4)))
    y = r.randint(4, max(5, height - block_h - 4))
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    stroke_w, stroke = 0, None
    if variant == "banner":
        fg = (255, 255, 255, 255) if r.random() < 0.5 else (0, 0, 0, 255)
        bg = (0, 0, 0, 150) if fg[0] == 255 else (255, 255, 255, 170)
        draw.rectangle([x - 6, y - 4, x + text_w + 6, y + block_h], fill=bg)
    else:
        light = r.random() < 0.5
        fg = (255, 255, 255, 255) if light else (0, 0, 0, 255)
        stroke = (0, 0, 0, 255) if light else (255, 255, 255, 255)
        stroke_w = max(1, size // 14)
    for i, line in enumerate(lines):
        draw.text(
            (x, y + i * step), line, font=font, fill=fg, stroke_width=stroke_w, stroke_fill=stroke
        )
    if variant == "upside_down":
        layer = layer.rotate(180)
        lines = lines[::-1]  # the reading order of the flipped block
    elif variant == "tilted":
        center = (x + text_w / 2, y + block_h / 2)
        layer = layer.rotate(r.uniform(-5, 5), resample=Image.BICUBIC, center=center)
    im.paste(layer, (0, 0), layer)
    return np.asarray(im), lines


def build_images(seed: int = SEED) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """(BGR uint8 images, metadata ``{"key", "source", "kind", "gt"}``); ``gt`` is the known
    text (lines joined by newlines) of a rendered image, None for the real ones."""
    import cv2
    from skimage import data

    imgs = [cv2.cvtColor(data.page(), cv2.COLOR_GRAY2BGR)]
    meta: list[dict[str, Any]] = [
        {"key": "page", "source": "skimage.data.page", "kind": "real scan", "gt": None}
    ]
    imgs.append(cv2.cvtColor(data.text(), cv2.COLOR_GRAY2BGR))
    meta.append({"key": "text", "source": "skimage.data.text", "kind": "real photo", "gt": None})
    r = random.Random(seed)
    for name in PHOTOS:
        img = photo(name)
        for v in VARIANTS:
            rgb, lines = _render(img, r, v)
            imgs.append(np.ascontiguousarray(rgb[..., ::-1]))
            meta.append(
                {
                    "key": f"{name}_{v}",
                    "source": f"skimage.data.{name} + rendered text",
                    "kind": f"rendered {v}",
                    "gt": "\n".join(lines),
                }
            )
    return imgs, meta


def jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A brightness/contrast variant of a uint8 image: ``clip(a·img + b)``, a in [0.8, 1.2],
    b in [-20, 20] (augmentation to reach a data size the real images alone do not)."""
    a, b = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    return np.clip(img.astype(np.float32) * a + b, 0, 255).astype(np.uint8)
