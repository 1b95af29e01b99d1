"""Image loading and preprocessing with PIL and torch only (no torchvision).

The PIL path reproduces OpenAI CLIP's / open_clip's eval transform exactly (tested to
1e-6, in practice bit for bit): resize the shorter side to S (``Resize(S)``: the longer
side becomes ``int(S * long / short)``), center crop S x S with offsets
``round((size - S) / 2)``, convert to RGB, scale to [0, 1], normalise. Like those
implementations, the geometry runs in the image's own mode and the conversion to RGB comes
last; only 16/32-bit images are converted first (see ``to_rgb``).

Entry points: ``load_image`` (path -> RGB PIL image, by the decoder of ``maskclip.images``),
``preprocess`` / ``Preprocess`` (PIL image -> model input), ``to_batch`` (any accepted image
input -> ``[B, 3, H, W]``) and ``segmentation_input`` (one image, uncropped).
"""
from __future__ import annotations

import numbers
import os
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import PreprocessConfig
from .errors import ImageReadError, InputError, InputTypeError
from .images import HIGH_BIT_MODES, describe_error, open_image, over_pixel_limit, pixel_limit_message, rgb

_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_ACCEPTED = "a path, a PIL image, a uint8 or float torch tensor [3, H, W] / [B, 3, H, W], a uint8 numpy array [H, W, 3]"
# Preprocessed pixels are normally within about +-3 (OpenAI mean/std); far beyond that a float
# tensor is not a preprocessed image, and near float32's range the model's norms overflow to NaN.
MAX_FLOAT_PIXEL = 1e4


# --- loading -----------------------------------------------------------------------------------


def load_image(x) -> Image.Image:
    """A path (str / ``os.PathLike``) or a PIL image -> PIL image in mode RGB.

    Raises ``ImageNotFoundError`` for a missing path and ``ImageReadError`` for a directory,
    an undecodable / truncated file, or an image larger than ``PIL.Image.MAX_IMAGE_PIXELS``
    (a possible decompression bomb, refused from the header before decoding); see
    ``maskclip.images``, the decoder training and evaluation data use too.
    """
    if isinstance(x, Image.Image):
        return to_rgb(x)
    if isinstance(x, (str, os.PathLike)):
        return rgb(open_image(x))
    raise InputTypeError(f"load_image expects a path (str or os.PathLike) or a PIL image; got {type(x).__name__}")


def _check_pixel_count(h: int, w: int, where: str) -> None:
    """The same limit for images given in memory (PIL, numpy, uint8 tensors) as for files."""
    if over_pixel_limit(h, w):
        raise InputError(f"{where}: image too large: {pixel_limit_message(h, w)}")


# --- mode conversion ---------------------------------------------------------------------------


def to_rgb(img: Image.Image) -> Image.Image:
    """A PIL image of any mode -> the same picture in mode RGB (``img`` itself if already RGB).

    Validates ``img`` (zero-size images raise ``InputError``), then converts it by the rules
    of ``maskclip.images.rgb``: 8-bit modes as ``img.convert("RGB")``, 16/32-bit modes mapped
    to 8-bit gray by value (``I;16``: ``value / 257``) instead of clipped at 255.
    """
    _check_pil(img)
    return rgb(img)


def _check_pil(img) -> None:
    if not isinstance(img, Image.Image):
        raise InputTypeError(
            f"expected a PIL image; got {type(img).__name__} (open files with maskclip.transforms.load_image)"
        )
    if img.width == 0 or img.height == 0:
        raise InputError(f"image has zero size ({img.width}x{img.height} pixels)")
    _check_pixel_count(img.height, img.width, "PIL image")
    try:
        img.load()  # a lazily opened image decodes here; a closed one raises
    except Exception as e:  # PIL raises ValueError (closed), OSError (truncated), ... here
        raise ImageReadError(f"cannot read the pixels of this PIL image: {describe_error(e)}") from e


# --- the PIL path ------------------------------------------------------------------------------


def preprocess(img: Image.Image, cfg: PreprocessConfig, size: Optional[int] = None, crop: bool = True) -> torch.Tensor:
    """PIL image (any mode) -> normalised ``FloatTensor[3, S, S]``, S = ``size`` or ``cfg.image_size``.

    ``resize_mode="shortest"``: resize the shorter side to S, center crop S x S.
    ``resize_mode="squash"``: resize to S x S, ignoring the aspect ratio.
    ``resize_mode="longest"``: resize the longer side to S, centre the image on a black S x S canvas
    (open_clip's ``ResizeKeepRatio(longest=1)`` and ``CenterCropOrPad(fill=0)``).
    ``crop=False`` (any mode): resize the shorter side to S keeping the aspect ratio and
    return ``[3, S, W']`` or ``[3, H', S]``, the whole image (used for segmentation).

    As in open_clip, resizing and cropping run in the image's own mode and RGB conversion
    comes after, so PIL's own rules apply: RGBA/LA are resized with premultiplied alpha
    (fully transparent areas turn black), and P/1 images are always resized with nearest
    neighbour. High-bit-depth images are converted first (``maskclip.images.rgb``).
    """
    _check_pil(img)
    s = _target_size(cfg, size)
    if img.mode in HIGH_BIT_MODES:
        img = rgb(img)
    mode = cfg.resize_mode if crop else "shortest"
    out_h, out_w = _resized_size(img.height, img.width, s, mode)
    _check_resized(img.height, img.width, out_h, out_w)
    if (out_h, out_w) != (img.height, img.width):
        img = img.resize((out_w, out_h), _PIL_FILTERS[cfg.interpolation])
    if crop and mode == "shortest":
        top, left = _crop_offsets(out_h, out_w, s)
        img = img.crop((left, top, left + s, top + s))
    elif crop and mode == "longest":
        img = _pad_pil(img, s)
    img = rgb(img)  # after the geometry, as open_clip converts; img was checked above
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)
    return _normalize(pixels.float().div(255), cfg)


class Preprocess:
    """The model's preprocessing as a callable: ``Preprocess(cfg)(pil_image) -> FloatTensor[3, S, S]``.

    A drop-in for the ``preprocess`` transform returned by ``open_clip.create_model_and_transforms``
    and ``clip.load``.
    """

    def __init__(self, cfg: Optional[PreprocessConfig] = None):
        cfg = PreprocessConfig() if cfg is None else cfg
        if not isinstance(cfg, PreprocessConfig):
            raise InputTypeError(f"Preprocess expects a maskclip.PreprocessConfig; got {type(cfg).__name__}")
        cfg.validate()
        self.cfg = cfg

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return preprocess(img, self.cfg)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"Preprocess(image_size={c.image_size}, resize_mode={c.resize_mode!r}, "
            f"interpolation={c.interpolation!r}, mean={tuple(c.mean)}, std={tuple(c.std)})"
        )


# --- geometry shared by the PIL and tensor paths -----------------------------------------------


def _target_size(cfg: PreprocessConfig, size) -> int:
    s = cfg.image_size if size is None else size
    if not isinstance(s, numbers.Integral) or isinstance(s, bool) or s <= 0:
        raise InputError(f"size must be a positive integer (pixels); got {s!r}")
    return int(s)


def _resized_size(h: int, w: int, s: int, mode: str) -> Tuple[int, int]:
    """The size an ``h x w`` image is resized to before the crop or pad of ``resize_mode`` ``mode``."""
    if mode == "squash":
        return s, s
    if mode == "longest":
        return _longer_side_size(h, w, s)
    return _shorter_side_size(h, w, s)


def _longer_side_size(h: int, w: int, s: int) -> Tuple[int, int]:
    """(H, W) with the longer side ``s``, the other rounded, as open_clip's ``ResizeKeepRatio(longest=1)``."""
    ratio = max(h / s, w / s)
    return round(h / ratio), round(w / ratio)


def _pad_offsets(h: int, w: int, s: int) -> Tuple[int, int]:
    """(top, left) of an ``h x w`` image centred on an ``s x s`` canvas (the extra pixel right / below,
    as open_clip's ``center_crop_or_pad``)."""
    return (s - h) // 2, (s - w) // 2


def _pad_pil(img: Image.Image, s: int) -> Image.Image:
    """``img`` (at most ``s`` on each side) centred on an ``s x s`` canvas of 0s in its own mode (the palette kept)."""
    top, left = _pad_offsets(img.height, img.width, s)
    canvas = Image.new(img.mode, (s, s), 0)
    if img.mode == "P":
        canvas.putpalette(img.getpalette())
    canvas.paste(img, (left, top))
    return canvas


def _shorter_side_size(h: int, w: int, s: int) -> Tuple[int, int]:
    """(H, W) with the shorter side ``s``; the longer one truncated as torchvision's ``Resize(s)`` does."""
    if w <= h:
        return int(s * h / w), s
    return s, int(s * w / h)


def _check_resized(h: int, w: int, out_h: int, out_w: int) -> None:
    """Refuse a resize whose result would exceed the pixel limit.

    Resizing the shorter side of a thin image (1 x 100000) to S makes it S x 100000 S before
    the crop: a small input would otherwise cost gigabytes and minutes.
    """
    if over_pixel_limit(out_h, out_w):
        raise InputError(
            f"resizing a {w}x{h} image to {out_w}x{out_h} would exceed the pixel limit: "
            f"{pixel_limit_message(out_h, out_w)}; its aspect ratio is too extreme (crop it first)"
        )


def _crop_offsets(h: int, w: int, s: int) -> Tuple[int, int]:
    """(top, left) of a centered ``s x s`` crop; Python's round (half to even) as torchvision's ``CenterCrop``."""
    return int(round((h - s) / 2.0)), int(round((w - s) / 2.0))


def _normalize(x: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> ``(x - mean) / std`` per channel (same float ops as torchvision)."""
    mean = torch.as_tensor(cfg.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.as_tensor(cfg.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x.sub(mean).div(std)


# --- the tensor path ---------------------------------------------------------------------------


def preprocess_uint8(pixels: torch.Tensor, cfg: PreprocessConfig, size: Optional[int] = None,
                     crop: bool = True) -> torch.Tensor:
    """Raw pixels ``uint8 [B, 3, H, W]`` -> normalised ``FloatTensor[B, 3, S, S]`` with torch ops.

    Same geometry as ``preprocess`` (``crop=False`` keeps the aspect ratio). Close to, not
    bit-identical with, the PIL path for bicubic and bilinear: ``F.interpolate(antialias=True)``
    uses PIL's kernels but float arithmetic where PIL uses fixed point (measured on photo-like
    images: at most 2 of 255 levels apart; on average 0.002 levels for bicubic, 0.1 for
    bilinear). Nearest neighbour picks exactly the pixels PIL picks.
    """
    s = _target_size(cfg, size)
    h, w = pixels.shape[-2:]
    mode = cfg.resize_mode if crop else "shortest"
    out_h, out_w = _resized_size(h, w, s, mode)
    _check_resized(h, w, out_h, out_w)
    x = pixels.float()
    if cfg.interpolation == "nearest":
        x = x.index_select(-1, _nearest_index(w, out_w, x.device)).index_select(-2, _nearest_index(h, out_h, x.device))
    else:
        x = _resample_2d(x, out_h, out_w, cfg.interpolation)
    if crop and mode == "shortest":
        top, left = _crop_offsets(out_h, out_w, s)
        x = x[..., top:top + s, left:left + s]
    elif crop and mode == "longest":
        top, left = _pad_offsets(out_h, out_w, s)
        x = F.pad(x, (left, s - out_w - left, top, s - out_h - top), value=0.0)
    return _normalize(x.div(255), cfg)


def _resample_2d(x: torch.Tensor, out_h: int, out_w: int, mode: str) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` pixel values (0..255) to ``[B, C, out_h, out_w]`` as PIL does it.

    PIL resamples one axis at a time and stores 8 bits in between; one 2-D ``interpolate``
    would not clip bicubic overshoot at sharp edges after the first pass as PIL does. Current
    Pillow starts with the vertical pass when the height shrinks by more than twice as many
    pixels as the width, older releases always horizontally; we follow the current rule.
    """
    h, w = x.shape[-2:]
    if h - out_h > 0 and h - out_h > 2 * (w - out_w):
        return _resample(_resample(x, -2, out_h, mode), -1, out_w, mode)
    return _resample(_resample(x, -1, out_w, mode), -2, out_h, mode)


def _resample(x: torch.Tensor, dim: int, size: int, mode: str) -> torch.Tensor:
    """Resize ``[B, C, H, W]`` along ``dim`` (-1 or -2) to ``size``, rounded to 8-bit levels."""
    if x.shape[dim] == size:
        return x
    target = (x.shape[-2], size) if dim == -1 else (size, x.shape[-1])
    x = F.interpolate(x, size=target, mode=mode, align_corners=False, antialias=True)
    return x.add(0.5).floor().clamp(0, 255)  # PIL rounds halves up


def _nearest_index(n_in: int, n_out: int, device) -> torch.Tensor:
    """Source index of each output pixel, as PIL's nearest resize computes it.

    PIL accumulates the step ``n_in / n_out`` from the centre of the first pixel in double
    precision and truncates; reproducing the running sum (not ``(i + 0.5) * step``) picks the
    same pixel at exact ties.
    """
    step = n_in / n_out
    centres = np.add.accumulate(np.concatenate([[0.5 * step], np.full(n_out - 1, step)]))
    return torch.from_numpy(np.minimum(centres.astype(np.int64), n_in - 1)).to(device)


# --- any input -> batch ------------------------------------------------------------------------


def to_batch(images, cfg: PreprocessConfig, size: Optional[int] = None) -> torch.Tensor:
    """Any accepted image input -> model input ``FloatTensor[B, 3, H, W]``.

    Accepted, alone or mixed in a list / tuple:

    - a path or a PIL image (any mode): ``preprocess`` -> ``[3, S, S]``;
    - a numpy ``uint8`` array ``[H, W, 3]``: treated as an RGB PIL image;
    - a ``uint8`` tensor ``[3, H, W]`` / ``[B, 3, H, W]`` of raw pixels 0..255: resized,
      cropped and normalised with torch ops (``preprocess_uint8``; close to the PIL path,
      not bit-identical);
    - a float tensor ``[3, H, W]`` / ``[B, 3, H, W]``: taken as already preprocessed (e.g. the
      output of ``model.preprocess``) and returned unchanged as float32, at its own size.

    All items of a list must come out the same size. ``size`` overrides ``cfg.image_size``
    for everything but float tensors.
    """
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise InputError(f"got an empty {type(images).__name__} of images; expected at least one image")
        parts = [_one(x, cfg, size, f"images[{i}]") for i, x in enumerate(images)]
        _check_same_size(parts)
        return torch.cat([p.to(parts[0].device) for p in parts])
    return _one(images, cfg, size, "images")


def segmentation_input(image, cfg: PreprocessConfig,
                       size: Optional[int] = None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """One image, uncropped -> (``FloatTensor[1, 3, h, w]``, original ``(H, W)``).

    The shorter side becomes ``size`` (default ``cfg.image_size``), the aspect ratio is kept.
    Accepts one of the single-image forms of ``to_batch`` (a batch of one is fine); a float
    tensor is already preprocessed, so it is used as is and ``(H, W)`` is its own size.
    """
    if isinstance(image, (list, tuple)):
        raise InputTypeError(f"segmentation takes one image; got a {type(image).__name__} of {len(image)}")
    if isinstance(image, torch.Tensor):
        x = _check_tensor(image, "image")
        if x.shape[0] != 1:
            raise InputError(f"segmentation takes one image; got a batch of {x.shape[0]} ({list(image.shape)})")
        if x.is_floating_point():
            return x.float(), tuple(x.shape[-2:])
        return preprocess_uint8(x, cfg, size, crop=False), tuple(x.shape[-2:])
    img = _as_pil(image, "image")
    return preprocess(img, cfg, size, crop=False)[None], (img.height, img.width)


def _one(x, cfg: PreprocessConfig, size, where: str) -> torch.Tensor:
    """One item of ``to_batch`` -> ``[b, 3, H, W]``."""
    if isinstance(x, torch.Tensor):
        x = _check_tensor(x, where)
        return x.float() if x.is_floating_point() else preprocess_uint8(x, cfg, size)
    return preprocess(_as_pil(x, where), cfg, size)[None]


def _as_pil(x, where: str) -> Image.Image:
    """A path, PIL image or ``uint8 [H, W, 3]`` numpy array -> PIL image in its own mode."""
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, (str, os.PathLike)):
        return open_image(x)
    if isinstance(x, np.ndarray):
        return Image.fromarray(_check_array(x, where), "RGB")
    raise InputTypeError(f"{where}: expected {_ACCEPTED}, or a list of these; got {type(x).__name__}")


def _check_array(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype != np.uint8:
        raise InputTypeError(
            f"{where}: numpy arrays must be uint8 pixels [H, W, 3]; got dtype {a.dtype} "
            "(pass preprocessed input as a float torch tensor [B, 3, H, W])"
        )
    if a.ndim != 3 or a.shape[2] != 3:
        hint = f"; {_channel_hint(a.shape[2])}" if a.ndim == 3 else ""
        raise InputError(f"{where}: numpy arrays must have shape [H, W, 3] (RGB); got {list(a.shape)}{hint}")
    if 0 in a.shape:
        raise InputError(f"{where}: image has zero size; got shape {list(a.shape)}")
    _check_pixel_count(a.shape[0], a.shape[1], where)
    return np.ascontiguousarray(a)


def _check_tensor(x: torch.Tensor, where: str) -> torch.Tensor:
    """Validate an image tensor; return it as ``[B, 3, H, W]`` (uint8 or floating, values untouched)."""
    if x.layout != torch.strided or x.is_meta:
        where_ = "on the meta device" if x.is_meta else f"with layout {x.layout}"
        raise InputTypeError(f"{where}: image tensors must be dense tensors with data; got one {where_}")
    if x.dtype == torch.bool or x.is_complex() or (not x.is_floating_point() and x.dtype != torch.uint8):
        raise InputTypeError(
            f"{where}: image tensors must be uint8 (raw pixels 0..255) or floating point (preprocessed); "
            f"got dtype {x.dtype}"
        )
    if x.dim() not in (3, 4):
        raise InputError(f"{where}: image tensors must have shape [3, H, W] or [B, 3, H, W]; got {list(x.shape)}")
    if x.shape[-3] != 3:
        hint = (
            "it looks channels-last; use x.permute(2, 0, 1) (or (0, 3, 1, 2) for a batch)"
            if x.shape[-1] == 3 else _channel_hint(x.shape[-3])
        )
        raise InputError(f"{where}: expected 3 channels (RGB) in dim -3; got shape {list(x.shape)}: {hint}")
    if 0 in x.shape:
        raise InputError(f"{where}: image tensor has a zero-size dimension; got shape {list(x.shape)}")
    _check_pixel_count(x.shape[-2], x.shape[-1], where)
    if x.is_floating_point():
        _check_float_values(x, where)
    return x if x.dim() == 4 else x[None]


def _check_float_values(x: torch.Tensor, where: str) -> None:
    # A reduction, not x.abs(): no temporary as large as x (which may be an expanded view).
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # NaN if any value is NaN
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InputError(f"{where}: float image tensor contains NaN or infinite values")
    peak = max(-lo, hi)
    if peak > MAX_FLOAT_PIXEL:
        raise InputError(
            f"{where}: float image tensors are taken as preprocessed (normalised) pixels, expected within "
            f"+-{MAX_FLOAT_PIXEL:g}; got values up to {peak:g} (pass raw 0..255 pixels as a uint8 tensor)"
        )


def _channel_hint(channels: int) -> str:
    if channels == 4:
        return "got 4 channels; convert RGBA to RGB or pass a PIL image"
    if channels == 1:
        return "got 1 channel; repeat it to 3 channels or pass a PIL image"
    return f"got {channels} channels"


def _check_same_size(parts) -> None:
    first = tuple(parts[0].shape[1:])
    for i, p in enumerate(parts):
        if tuple(p.shape[1:]) != first:
            raise InputError(
                f"images in one list must give the same size; images[0] gives {list(first)} but images[{i}] "
                f"gives {list(p.shape[1:])} (float tensors are used at their own size)"
            )
