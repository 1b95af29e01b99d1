"""Decoding images: a file or encoded bytes -> a PIL image, hardened; any PIL mode -> RGB.

The one decoder behind inference (``maskclip.transforms.load_image``, paths given to the
model), training and evaluation data (``maskclip.datasets``), so that a file gives the same
pixels wherever it is read. Decoding refuses images over ``PIL.Image.MAX_IMAGE_PIXELS`` from
the header, before any pixel is decoded, and always closes the file. ``rgb`` maps 16/32-bit
images to 8 bits by value instead of clipping them as ``convert("RGB")`` does.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .errors import ImageNotFoundError, ImageReadError, InputError, InputTypeError, MaskCLIPError

HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
Source = Union[str, os.PathLike, bytes, bytearray]


def decode(source: Source, name: Optional[str] = None) -> Image.Image:
    """A path or encoded bytes (PNG, JPEG, WebP, ...) -> PIL image in mode RGB (``open_image``, then ``rgb``)."""
    return rgb(open_image(source, name))


def open_image(source: Source, name: Optional[str] = None) -> Image.Image:
    """A path or encoded bytes -> the decoded PIL image in its own mode (RGBA, P, I;16, ...).

    ``name`` labels bytes in error messages (default: their length). Raises
    ``ImageNotFoundError`` for a missing path and ``ImageReadError`` for a directory, undecodable
    or truncated data, or an image larger than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible
    decompression bomb, refused from the header). A file is closed on return.
    """
    if isinstance(source, (bytes, bytearray)):
        return _decode(io.BytesIO(source), name or f"<{len(source)} bytes>")
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(f"expected a path (str or os.PathLike) or encoded image bytes; "
                             f"got {type(source).__name__}")
    path = Path(os.fspath(source))
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:  # e.g. a file name longer than the file system allows
        raise ImageReadError(f"cannot read image {_preview(str(path))!r}: {describe_error(e)}") from None
    if not exists:
        raise ImageNotFoundError(f"image file not found: {_preview(str(path))!r}")
    if is_dir:
        raise ImageReadError(f"cannot read image {str(path)!r}: it is a directory, not an image file")
    return _decode(path, str(path))


def _decode(fp, name: str) -> Image.Image:
    try:
        with Image.open(fp) as im:
            # PIL itself only warns between 1x and 2x its limit; checking the header size turns
            # that band into an error without touching global warning filters or PIL settings.
            if over_pixel_limit(im.height, im.width):
                raise ImageReadError(f"cannot read image {name!r}: {pixel_limit_message(im.height, im.width)}")
            im.load()
            # Leaving the block closes the file (load() alone leaves multi-frame files open);
            # the loaded pixels stay usable.
            return im
    except MaskCLIPError:
        raise
    except Exception as e:  # PIL plugins raise OSError, SyntaxError, ValueError, struct.error, ... on bad data
        raise ImageReadError(f"cannot read image {name!r}: {describe_error(e)}") from e


def rgb(img: Image.Image) -> Image.Image:
    """A loaded PIL image of any mode -> the same picture in mode RGB (``img`` itself if already RGB).

    8-bit modes (1, L, LA, P with or without transparency, RGBA, CMYK, YCbCr, ...) use
    ``img.convert("RGB")``, exactly as OpenAI CLIP and open_clip do: alpha is dropped, not
    composited. High-bit-depth modes deliberately differ from ``convert("RGB")``, which
    clips them at 255 (a 16-bit photo becomes almost white); instead they are mapped to
    8-bit gray, rounded to the nearest integer:

    - ``I;16`` / ``I;16L`` / ``I;16B`` / ``I;16N``: ``value / 257`` (65535 -> 255).
    - ``I``: values within 0..255 are kept (as ``convert`` does); within 0..65535 they are
      taken as 16-bit (``/ 257``); any other range is stretched linearly min..max -> 0..255.
    - ``F``: values within 0..1 are scaled by 255; within 0..255 kept; otherwise stretched
      min..max -> 0..255. NaN or infinite values raise ``InputError``.

    A stretched image with a single value maps to 0. The image is not validated here
    (``maskclip.transforms.to_rgb`` validates, then calls this).
    """
    if img.mode == "RGB":
        return img
    if img.mode in HIGH_BIT_MODES:
        gray = _to_uint8(np.asarray(img), img.mode)
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")
    if img.mode == "La":  # premultiplied; PIL converts it to RGB only through LA
        img = img.convert("LA")
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise InputError(f"cannot convert a mode {img.mode!r} image to RGB ({e}); convert it yourself first") from e


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth pixels ``[H, W]`` -> ``uint8 [H, W]`` by the rules in ``rgb``."""
    if mode.startswith("I;16"):
        return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257); 257 is odd: no ties
    # Checked before the cast: casting a signalling NaN would also emit a numpy RuntimeWarning.
    if not np.isfinite(values).all():
        raise InputError(f"a mode {mode!r} image contains NaN or infinite values; cannot map it to 8 bits")
    values = values.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if mode == "F" and lo >= 0 and hi <= 1:
        scaled = values * 255
    elif lo >= 0 and hi <= 255:
        scaled = values
    elif mode == "I" and lo >= 0 and hi <= 65535:
        scaled = values / 257
    else:
        scaled = (values - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.floor(scaled + 0.5).astype(np.uint8)


# --- the pixel limit and error messages, shared with the validation in transforms -----------------


def over_pixel_limit(h: int, w: int) -> bool:
    """Whether ``h x w`` exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` (PIL's warning level; ``None``: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return limit is not None and h * w > limit


def pixel_limit_message(h: int, w: int) -> str:
    return (f"{w}x{h} = {w * h} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} (possible "
            "decompression bomb); raise that limit if you trust this input")


def describe_error(e: Exception) -> str:
    """A decoding error -> the reason to show a user."""
    if isinstance(e, Image.UnidentifiedImageError):
        return "not a recognised image format (or the file is corrupt)"
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too large to decode safely ({e})"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"{type(e).__name__}: {e}"


def _preview(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[:n] + "..."
