"""Deterministic synthetic test images that look like photographs to a resampler.

Pure noise or flat colour make weak test inputs: noise hides interpolation differences in
its own variance, flat colour hides them entirely. These images mix smooth gradients (low
frequencies), filled shapes with hard edges (ringing of bicubic kernels, crop offsets) and a
little grain (every pixel value differs), like a real photo. Same arguments, same pixels.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# (width, height): square, landscape, portrait, extreme aspect ratios, odd and tiny sizes,
# and sizes a few pixels off 224 so that the rounding of crop offsets matters (a margin of
# 3 or 7 pixels is where round-half-to-even and floor disagree).
SIZES = [
    (224, 224), (640, 480), (480, 640), (333, 500), (1000, 100), (100, 1000),
    (37, 53), (225, 224), (224, 225), (227, 224), (224, 231), (301, 199), (17, 17),
]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image ``width x height`` of gradients, shapes and grain, fixed by ``seed``."""
    rng = np.random.RandomState(seed)
    img = Image.fromarray(_gradient(width, height, rng), "RGB")
    _draw_shapes(ImageDraw.Draw(img), width, height, rng)
    grain = rng.randint(-6, 7, size=(height, width, 3))
    pixels = np.asarray(img).astype(np.int16) + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def photo_rgba(width: int, height: int, seed: int = 0) -> Image.Image:
    """``photo`` with an alpha channel: a radial fade with a fully transparent corner."""
    img = photo(width, height, seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = np.hypot(x / max(width - 1, 1) - 0.4, y / max(height - 1, 1) - 0.6)
    alpha = np.clip(255 * (1.2 - 1.5 * r), 0, 255).astype(np.uint8)
    alpha[: height // 4, : width // 4] = 0
    img.putalpha(Image.fromarray(alpha, "L"))
    return img


def gradient16(width: int = 300, height: int = 40, mode: str = "I;16") -> Image.Image:
    """A 16-bit horizontal ramp over the full range, 0 at the left, 65535 at the right."""
    ramp = np.linspace(0, 65535, width).round()
    return _from16(np.tile(ramp, (height, 1)), mode)


def in_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` (RGB or RGBA) as a PIL image of ``mode``, with content that uses the mode's range.

    ``I`` holds values -5000 .. 20500 and ``F`` values 0 .. 1, so neither is 8-bit data in
    disguise; ``P+transparency`` is a palette image whose index 0 is transparent.
    """
    gray = np.asarray(img.convert("L"))
    if mode.startswith("I;16"):
        return _from16(gray.astype(np.float64) * 257, mode)
    if mode == "I":
        return Image.fromarray(gray.astype(np.int32) * 100 - 5000)
    if mode == "F":
        return Image.fromarray(gray.astype(np.float32) / 255.0)
    if mode == "P+transparency":
        pal = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        pal.info["transparency"] = 0
        return pal
    return img.convert(mode)


def _from16(values: np.ndarray, mode: str) -> Image.Image:
    order = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
    height, width = values.shape
    return Image.frombytes(mode, (width, height), values.astype(order).tobytes())


def _gradient(width, height, rng):
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    channels = [
        0.5 + 0.35 * np.sin(2.0 * np.pi * (u * (1 + c) + 0.6 * v) + phase[c]) + 0.15 * (v - 0.5)
        for c in range(3)
    ]
    return (255 * np.clip(np.stack(channels, -1), 0, 1)).astype(np.uint8)


def _draw_shapes(draw, width, height, rng):
    for _ in range(6):
        x0, x1 = sorted(rng.randint(0, width, size=2))
        y0, y1 = sorted(rng.randint(0, height, size=2))
        colour = tuple(int(c) for c in rng.randint(0, 256, size=3))
        kind = rng.randint(3)
        if kind == 0:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        else:
            points = [(int(px), int(py)) for px, py in zip(rng.randint(0, width, 3), rng.randint(0, height, 3))]
            draw.polygon(points, fill=colour)
    for _ in range(3):  # thin lines: the highest frequencies a downscale must anti-alias
        points = [(int(rng.randint(width)), int(rng.randint(height))) for _ in range(2)]
        draw.line(points, fill=tuple(int(c) for c in rng.randint(0, 256, size=3)), width=1)
