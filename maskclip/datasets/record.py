"""The one sample record every reader yields, and the decoding of its parts.

Readers keep what is expensive undecoded until a consumer asks: a CSV row carries the image's
path, the training stream decodes it after choosing the sample; evaluation hands paths to the
model, whose ``preprocess`` decodes them with the same decoder (``maskclip.images``).
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Union

import numpy as np
from PIL import Image

from ..errors import ImageNotFoundError, InputError
from ..images import decode, open_image
from ..transforms import load_image

# Mask value of pixels that no metric counts (mmsegmentation's convention, kept by every reader here).
IGNORE_INDEX = 255

ImageSource = Union[Image.Image, str, os.PathLike, bytes]
MaskSource = Union[np.ndarray, str, os.PathLike, bytes]


class Sample(NamedTuple):
    """One record: ``image``, ``captions``, ``mask``, ``meta``.

    - ``image``: a PIL image, or what decodes to one (a path, encoded bytes; ``read_image``).
    - ``captions``: a list of caption strings (possibly empty).
    - ``mask``: ``uint8 [H, W]`` class indices, the path of such a PNG (``read_mask``), or ``None``.
    - ``meta``: JSON-able; ``"key"`` names the sample; ``"label_name"`` is its class name and
      ``"label"`` its class index when the source has them.
    """

    image: ImageSource
    captions: List[str]
    mask: Optional[MaskSource]
    meta: dict


def read_image(image: ImageSource, name: Optional[str] = None) -> Image.Image:
    """A record's image -> RGB PIL image, decoded as inference decodes it (16-bit PNGs included).

    ``name`` labels encoded bytes in error messages (``ImageReadError``, a ``ValueError``).
    """
    return decode(image, name) if isinstance(image, (bytes, bytearray)) else load_image(image)


def read_mask(mask: MaskSource, name: Optional[str] = None) -> np.ndarray:
    """A label mask (an 8-bit PNG's path or bytes, or an array) -> ``uint8 [H, W]`` class indices.

    Raises ``InputError`` (a ``ValueError``) if it is missing, undecodable or not 8-bit (mode L or P).
    """
    if isinstance(mask, np.ndarray):
        return mask
    try:
        m = open_image(mask, name)
    except ImageNotFoundError:
        raise InputError(f"mask file not found: {str(mask)!r}") from None
    if m.mode not in ("L", "P"):
        raise InputError(f"mask {name or str(mask)!r} must be an 8-bit label image (mode L or P); got mode {m.mode}")
    return np.array(m, dtype=np.uint8)


def caption_list(value, what: str = "captions") -> List[str]:
    """A caption field -> its captions: each non-empty line of a string, or of each string of a list, stripped.

    One rule for every source (a ``.txt`` member, a ``.json``'s ``captions``, a CSV cell), so a
    multi-line caption such as YFCC's title and description offers each line. ``ValueError``
    if ``value`` is neither a string nor a list of strings.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(c, str) for c in items):
        raise ValueError(f"{what} must be a string or a list of strings; got {value!r:.80}")
    return [line.strip() for c in items for line in c.splitlines() if line.strip()]
