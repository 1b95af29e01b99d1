"""What a synthetic image contains: the vocabulary, and random scenes drawn from it.

A scene is resolution-free: positions and radii are in units of the image's shorter side,
and occlusion is judged on a fixed reference raster (``REFERENCE`` px on the shorter side),
so the same seed gives the same scene, captions and label at every image size.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Tuple

import numpy as np

from .. import resources
from .render import OUTLINE_SCALE, shape_mask

REFERENCE = 128
MIN_VISIBLE = 0.45  # every object keeps at least this fraction of its area visible
OBJECT_COUNTS = (1, 2, 3)
OBJECT_COUNT_PROBS = (0.3, 0.4, 0.3)  # version 1's, of every split
PLACEMENT_TRIES = 20
FRONT = 0.15  # occluding this fraction of another object makes "in front of" the relation


@lru_cache(maxsize=None)
def vocabulary() -> dict:
    """The benchmark's words and parameters (``synthetic.json``)."""
    return resources.read_json("synthetic.json")


@dataclass(frozen=True)
class Obj:
    """One object; lengths in units of the image's shorter side, ``centre`` = (x, y) from the top left."""

    shape: str
    colour: str
    size: str
    radius: float
    centre: Tuple[float, float]
    rotation: float
    stretch: Tuple[float, float]
    rgb: Tuple[float, float, float]
    shade: Tuple[float, float]  # (amplitude, light direction in degrees)
    outline: bool


@dataclass(frozen=True)
class Scene:
    """A background and 1-3 objects in drawing order (later ones on top), with what the reference raster saw."""

    aspect: float  # width / height
    background: str
    background_params: dict
    objects: Tuple[Obj, ...]
    visible: Tuple[float, ...]  # visible area of each object, as a fraction of the image area
    overlaps: Dict[Tuple[int, int], float]  # (top, under) -> fraction of `under` hidden by `top`
    noise: float  # sensor noise standard deviation, in 0..255 levels
    noise_seed: int


def sample_scene(rng: np.random.Generator, aspect: float = 1.0, counts=OBJECT_COUNT_PROBS,
                 size_scale: float = 1.0) -> Scene:
    """A random scene for an image of ``width / height == aspect``.

    ``counts``: probabilities of 1, 2 and 3 objects; ``size_scale`` multiplies every radius
    (the defaults are version 1's; ``synthetic.json``'s ``settings`` hold each version's).
    """
    v = vocabulary()
    extent = (aspect, 1.0) if aspect >= 1 else (1.0, 1 / aspect)
    kind = str(rng.choice(list(v["backgrounds"])))
    params = _background_params(rng, kind, extent)
    n = int(rng.choice(OBJECT_COUNTS, p=counts))
    ref_h, ref_w = round(REFERENCE * extent[1]), round(REFERENCE * extent[0])
    objects, masks = [], []
    for _ in range(n):
        placed = _place(rng, masks, extent, ref_h, ref_w, size_scale)
        if placed is None:
            break
        objects.append(placed[0])
        masks.append(placed[1])
    visible, overlaps = _occlusion(masks)
    return Scene(aspect=aspect, background=kind, background_params=params, objects=tuple(objects),
                 visible=tuple(float(x) / (ref_h * ref_w) for x in visible), overlaps=overlaps,
                 noise=float(rng.uniform(0, 8)), noise_seed=int(rng.integers(2 ** 31)))


def _place(rng, masks, extent, ref_h, ref_w, size_scale: float = 1.0):
    """Draw one object and a position where every object stays ``MIN_VISIBLE`` visible; ``None`` if none found."""
    v = vocabulary()
    shape = str(rng.choice(v["shapes"]))
    colour = str(rng.choice(list(v["colours"])))
    size = str(rng.choice(list(v["sizes"])))
    radius = float(rng.uniform(*v["sizes"][size])) * size_scale
    rgb = _jitter(rng, v["colours"][colour])
    rotation = float(rng.uniform(-180, 180) if shape == "crescent" else rng.uniform(-25, 25))
    stretch = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
    shade = (float(rng.uniform(0, 0.3)), float(rng.uniform(0, 360)))
    outline = bool(rng.random() < 0.25)
    margin = 0.9 * radius
    for _ in range(PLACEMENT_TRIES):
        centre = (float(rng.uniform(margin, extent[0] - margin)), float(rng.uniform(margin, extent[1] - margin)))
        obj = Obj(shape, colour, size, radius, centre, rotation, stretch, rgb, shade, outline)
        r = radius * (OUTLINE_SCALE if outline else 1.0) * REFERENCE
        mask = shape_mask(shape, (centre[0] * REFERENCE, centre[1] * REFERENCE), r, stretch, rotation, ref_h, ref_w)
        stack = masks + [mask]
        if all(_visible(stack, i).sum() >= MIN_VISIBLE * m.sum() for i, m in enumerate(masks)):
            return obj, mask
    return None


def _visible(masks, i: int) -> np.ndarray:
    """The part of ``masks[i]`` not covered by the masks drawn after it."""
    covered = np.zeros_like(masks[i])
    for later in masks[i + 1:]:
        covered |= later
    return masks[i] & ~covered


def _occlusion(masks):
    """Visible pixels per object and ``{(top, under): hidden fraction of under}`` on the reference raster."""
    overlaps = {}
    for i, m in enumerate(masks):
        for j in range(i + 1, len(masks)):
            both = int((m & masks[j]).sum())
            if both:
                overlaps[(j, i)] = both / int(m.sum())
    return [int(_visible(masks, i).sum()) for i in range(len(masks))], overlaps


def _jitter(rng, rgb) -> Tuple[float, float, float]:
    """A named colour, varied a little in hue, saturation and brightness (still clearly that colour)."""
    h, s, val = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-0.02, 0.02)) % 1.0
    s = min(1.0, s * rng.uniform(0.8, 1.05))
    val = min(1.0, val * rng.uniform(0.85, 1.05))
    return tuple(float(255 * c) for c in colorsys.hsv_to_rgb(h, s, val))


def _muted(rng) -> Tuple[float, float, float]:
    """A background colour: any hue, low saturation, middle brightness (object colours stay nameable)."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.45), rng.uniform(0.3, 0.8))
    return tuple(float(255 * c) for c in rgb)


def _background_params(rng, kind: str, extent) -> dict:
    params = {"c1": _muted(rng), "c2": _muted(rng), "angle": float(rng.uniform(0, 180))}
    if kind == "stripes":
        params.update(period=float(rng.uniform(0.06, 0.25)), phase=float(rng.uniform(0, 2 * math.pi)),
                      hard=bool(rng.random() < 0.5))
    elif kind == "checker":
        params.update(cell=float(rng.uniform(0.05, 0.2)))
    elif kind == "clouds":
        g = int(rng.integers(3, 8))
        params.update(grid=[[list(_muted(rng)) for _ in range(g)] for _ in range(g)])
    elif kind == "blotches":
        params.update(blobs=[(float(rng.uniform(0, extent[0])), float(rng.uniform(0, extent[1])),
                              float(rng.uniform(0.05, 0.2)), _muted(rng)) for _ in range(int(rng.integers(3, 9)))])
    return params
