"""Drawing a synthetic scene: shape geometry, textured backgrounds, anti-aliased pixels and the label map.

Everything is drawn at ``supersample`` times the target resolution and box-filtered down, so
edges are anti-aliased at any size. The object map comes from the same high-resolution
raster: each target pixel takes the object (or background) that covers most of it, so the
label mask and the picture agree by construction.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

Polygon = np.ndarray  # [K, 2] vertices (x, y), y pointing down
OUTLINE_SCALE = 1.12  # an outlined object is a darker copy this much larger, with the body on top


def _regular(n: int, radius: float, phase: float) -> Polygon:
    t = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, outer: float = 1.3, inner: float = 0.55) -> Polygon:
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    return radii[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1)


def _cross(arm: float = 0.38, reach: float = 1.15) -> Polygon:
    a, r = arm, reach
    return np.array([(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a),
                     (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)], dtype=float)


def _heart() -> Polygon:
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts * (1.2 / 16)


# Unit-radius geometry (area close to a unit disc) as (polygon, add) steps: add=False cuts a hole.
UNIT_SHAPES: Dict[str, List[Tuple[Polygon, bool]]] = {
    "circle": [(_regular(48, 1.0, 0.0), True)],
    "square": [(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=float) * 0.886, True)],
    "triangle": [(_regular(3, 1.35, -math.pi / 2), True)],
    "star": [(_star(), True)],
    "hexagon": [(_regular(6, 1.1, 0.0), True)],
    "cross": [(_cross(), True)],
    "heart": [(_heart(), True)],
    "crescent": [(_regular(48, 1.05, 0.0), True), (_regular(48, 0.9, 0.0) + [0.55, 0.0], False)],
}


def place(points: Polygon, centre: Tuple[float, float], radius: float, stretch: Tuple[float, float],
          rotation: float) -> Polygon:
    """Unit polygon -> pixel polygon: stretch, scale by ``radius``, rotate ``rotation`` degrees, move to ``centre``."""
    a = math.radians(rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (points * np.asarray(stretch) * radius) @ rot.T + np.asarray(centre)


def shape_mask(shape: str, centre, radius: float, stretch, rotation: float, height: int, width: int) -> np.ndarray:
    """Boolean ``[H, W]`` mask of one placed shape (PIL's polygon rasteriser, no anti-aliasing)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points, add in UNIT_SHAPES[shape]:
        xy = place(points, centre, radius, stretch, rotation)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255 if add else 0)
    return np.asarray(canvas) > 0


# --- backgrounds -----------------------------------------------------------------------------------


SMOOTH_BACKGROUNDS = ("plain", "gradient", "clouds", "blotches")


def background(kind: str, params: dict, height: int, width: int, factor: int = 1) -> np.ndarray:
    """A textured background ``float32 [factor * H, factor * W, 3]`` in 0..255; patterns scale with the shorter side.

    Smooth kinds are computed at ``H x W`` and repeated (no edges to anti-alias; several times
    cheaper), stripes and checkers at the full resolution.
    """
    if kind in SMOOTH_BACKGROUNDS and factor > 1:
        return background(kind, params, height, width).repeat(factor, axis=0).repeat(factor, axis=1)
    height, width = height * factor, width * factor
    short = min(height, width)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = (x + 0.5) / short, (y + 0.5) / short
    c1, c2 = (np.asarray(params[k], dtype=np.float32) for k in ("c1", "c2"))
    if kind == "plain":
        return np.broadcast_to(c1, (height, width, 3)).astype(np.float32)
    if kind == "clouds":
        grid = Image.fromarray(np.asarray(params["grid"], dtype=np.uint8), "RGB")
        return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    if kind == "blotches":
        return _blotches(params, x, y, c1)
    a = math.radians(params["angle"])
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    if kind == "gradient":
        t = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    elif kind == "stripes":
        wave = np.sin(2 * math.pi * u / params["period"] + params["phase"])
        t = (wave > 0).astype(np.float32) if params["hard"] else (wave + 1) / 2
    elif kind == "checker":
        t = ((np.floor(u / params["cell"]) + np.floor(v / params["cell"])) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def _blotches(params: dict, x: np.ndarray, y: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Soft round blotches of several colours over ``base``: ``[H, W, 3]``."""
    out = np.broadcast_to(base, x.shape + (3,)).astype(np.float32)
    for bx, by, sigma, colour in params["blobs"]:
        w = np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * sigma ** 2))[..., None]
        out = out * (1 - w) + np.asarray(colour, dtype=np.float32) * w
    return out


# --- objects and the final image -------------------------------------------------------------------


def paint_object(img: np.ndarray, objmap: np.ndarray, index: int, obj, scale: float) -> None:
    """Draw ``obj`` (a ``scene.Obj``) onto ``img [H, W, 3]`` and mark it ``index`` in ``objmap [H, W]``, in place.

    ``scale`` converts the object's geometry (in units of the image's shorter side) to pixels.
    An outlined object's mask is its outer (``OUTLINE_SCALE``) copy.
    """
    h, w = objmap.shape
    centre = (obj.centre[0] * scale, obj.centre[1] * scale)
    radius = obj.radius * scale
    body = shape_mask(obj.shape, centre, radius, obj.stretch, obj.rotation, h, w)
    outer = body
    if obj.outline:
        outer = shape_mask(obj.shape, centre, radius * OUTLINE_SCALE, obj.stretch, obj.rotation, h, w)
    rows, cols = np.nonzero(outer)
    if rows.size == 0:
        return
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    yy, xx = np.mgrid[top:bottom, left:right].astype(np.float32)
    amp, angle = obj.shade
    a = math.radians(angle)
    light = 1 + amp * ((xx + 0.5 - centre[0]) * math.cos(a) + (yy + 0.5 - centre[1]) * math.sin(a)) / radius
    colour = np.clip(np.asarray(obj.rgb, dtype=np.float32) * light[..., None], 0, 255)
    region, body_r, outer_r = img[top:bottom, left:right], body[top:bottom, left:right], outer[top:bottom, left:right]
    if obj.outline:
        region[outer_r & ~body_r] = np.asarray(obj.rgb, dtype=np.float32) * 0.45
    region[body_r] = colour[body_r]
    objmap[outer] = index


def downsample(img: np.ndarray, objmap: np.ndarray, factor: int, n_objects: int) -> Tuple[np.ndarray, np.ndarray]:
    """Box-filter ``img [fH, fW, 3]`` and take the majority of ``objmap [fH, fW]`` per ``factor x factor`` block.

    -> (``float32 [H, W, 3]``, ``uint8 [H, W]``). The pixels are rounded to 8 bits before PIL's box
    filter (``Image.reduce``, several times faster than a float mean). Ties in the majority go to
    the lower value (background before objects, earlier objects before later ones).
    """
    fh, fw = objmap.shape
    h, w = fh // factor, fw // factor
    pixels = Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB").reduce(factor)
    block = (np.arange(fh) // factor)[:, None] * w + (np.arange(fw) // factor)[None, :]
    votes = np.bincount((block * (n_objects + 1) + objmap).ravel(), minlength=h * w * (n_objects + 1))
    return np.asarray(pixels, dtype=np.float32), votes.reshape(h, w, n_objects + 1).argmax(axis=-1).astype(np.uint8)


def supersample_factor(height: int, width: int) -> int:
    """Drawing resolution multiplier: 4 for small images down to 2 for large ones."""
    return max(2, min(4, -(-256 // min(height, width))))


def render_scene(scene, height: int, width: int) -> Tuple[Image.Image, np.ndarray]:
    """A ``scene.Scene`` at ``height x width`` -> (RGB image, object map ``uint8 [H, W]``).

    The object map holds 0 for background and ``k + 1`` where object ``k`` (drawing order) is
    visible. Sensor noise is drawn at the target size from the scene's own seed.
    """
    factor = supersample_factor(height, width)
    fh, fw = height * factor, width * factor
    img = np.array(background(scene.background, scene.background_params, height, width, factor), dtype=np.float32)
    objmap = np.zeros((fh, fw), dtype=np.uint8)
    for k, obj in enumerate(scene.objects):
        paint_object(img, objmap, k + 1, obj, scale=min(fh, fw))
    small, small_map = downsample(img, objmap, factor, len(scene.objects))
    noise = np.random.default_rng(scene.noise_seed).normal(0, scene.noise, small.shape)
    pixels = np.clip(np.rint(small + noise), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB"), small_map
