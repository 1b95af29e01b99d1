"""Training augmentations with PIL and torch (no torchvision), each driven by an explicit ``random.Random``.

The contrastive view is a RandomResizedCrop (scale 0.5-1 in SLIP's CLIP recipe); SLIP's SimCLR
views add colour jitter, grayscale, Gaussian blur and flips. Randomness comes from the ``rng``
argument, seeded per sample by the data stream, so a resumed run sees the same pixels.
"""
from __future__ import annotations

import math
import random
from typing import Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from ..config import PreprocessConfig

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def crop_box(width: int, height: int, scale: Tuple[float, float], rng: random.Random,
             ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> Tuple[int, int, int, int]:
    """RandomResizedCrop's box ``(left, top, w, h)``: area fraction in ``scale``, aspect in ``ratio``.

    Ten tries at a random box; then the largest centred box whose aspect ratio is in range.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, scale: Tuple[float, float], rng: random.Random,
                        interpolation: str = "bicubic") -> Image.Image:
    left, top, w, h = crop_box(img.width, img.height, scale, rng)
    return img.resize((size, size), _RESAMPLE[interpolation], box=(left, top, left + w, top + h))


def color_jitter(img: Image.Image, rng: random.Random, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, hue: float = 0.1) -> Image.Image:
    """Brightness, contrast, saturation and hue changes, applied in a random order (as torchvision)."""
    ops = [
        lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(1 - brightness, 1 + brightness)),
        lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(1 - contrast, 1 + contrast)),
        lambda im: ImageEnhance.Color(im).enhance(rng.uniform(1 - saturation, 1 + saturation)),
        lambda im: shift_hue(im, rng.uniform(-hue, hue)),
    ]
    rng.shuffle(ops)
    for op in ops:
        img = op(img)
    return img


def shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotate the hue by ``shift`` turns (``[-0.5, 0.5]``)."""
    h, s, v = img.convert("HSV").split()
    h = Image.fromarray((np.asarray(h).astype(np.int16) + int(round(shift * 255))).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB PIL image -> normalised ``FloatTensor[3, H, W]``."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


class ContrastiveView:
    """RandomResizedCrop to the model's size, then CLIP normalisation: ``PIL -> [3, S, S]``."""

    def __init__(self, pp: PreprocessConfig, scale: Tuple[float, float] = (0.5, 1.0)):
        self.pp, self.scale = pp, tuple(scale)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        crop = random_resized_crop(img, self.pp.image_size, self.scale, rng, self.pp.interpolation)
        return to_tensor(crop, self.pp.mean, self.pp.std)


class SimCLRView:
    """SLIP's strong view: crop (scale 0.08-1), jitter p=0.8, grayscale p=0.2, blur p=0.5, flip p=0.5."""

    def __init__(self, pp: PreprocessConfig, scale: Tuple[float, float] = (0.08, 1.0)):
        self.pp, self.scale = pp, tuple(scale)

    def __call__(self, img: Image.Image, rng: random.Random) -> torch.Tensor:
        img = random_resized_crop(img, self.pp.image_size, self.scale, rng, self.pp.interpolation)
        if rng.random() < 0.8:
            img = color_jitter(img, rng)
        if rng.random() < 0.2:
            img = img.convert("L").convert("RGB")
        if rng.random() < 0.5:
            img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img, self.pp.mean, self.pp.std)
