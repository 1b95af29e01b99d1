"""Zero-shot semantic segmentation from dense patch features.

Protocol: resize the image's shorter side to ``size`` (keeping the aspect ratio, no crop),
compute patch features (optionally in sliding windows of ``window`` px with ``stride``),
score every patch against the text classifier by cosine similarity, upsample the scores
bilinearly to the input image's size and take the best label per pixel.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .dense import METHODS
from .errors import InputError


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InputError(f"dense method must be one of {list(METHODS)}; got {method!r}")
    return method


def _patch_scores(model, x: torch.Tensor, classifier: torch.Tensor, method: str) -> torch.Tensor:
    """Preprocessed ``[1, 3, h, w]`` -> cosine scores ``[1, C, h, w]`` (upsampled from the patch grid)."""
    p = model.config.vision.patch_size
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % p, (-w) % p
    if pad_h or pad_w:  # pad to whole patches so the edges are covered, then crop the scores back
        x = F.pad(x, (0, pad_w, 0, pad_h))
    feats = F.normalize(model.dense_features(x, method=method), dim=1)  # [1, E, gh, gw]
    scores = torch.einsum("behw,ec->bchw", feats, classifier.to(feats.dtype))
    scores = F.interpolate(scores.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return scores[..., :h, :w]


def _windows(length: int, window: int, stride: int):
    """Start offsets covering ``[0, length)`` with windows of ``window`` (the last one flush with the end)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def sliding_scores(model, x: torch.Tensor, classifier: torch.Tensor, method: str,
                   window: int, stride: int) -> torch.Tensor:
    """Average of ``_patch_scores`` over overlapping windows: ``[1, 3, h, w]`` -> ``[1, C, h, w]``."""
    h, w = x.shape[-2:]
    total = torch.zeros(1, classifier.shape[1], h, w)
    count = torch.zeros(1, 1, h, w)
    for top in _windows(h, window, stride):
        for left in _windows(w, window, stride):
            crop = x[..., top:top + window, left:left + window]
            total[..., top:top + window, left:left + window] += _patch_scores(model, crop, classifier, method).cpu()
            count[..., top:top + window, left:left + window] += 1
    return total / count


@torch.no_grad()
def segment_scores(model, x: torch.Tensor, out_size: Tuple[int, int], classifier: torch.Tensor,
                   method: str, window: Optional[int] = None, stride: Optional[int] = None) -> torch.Tensor:
    """Scores ``[C, H, W]`` at ``out_size`` for one preprocessed uncropped image ``[1, 3, h, w]``."""
    check_method(method)
    if window is None:
        scores = _patch_scores(model, x, classifier, method).cpu()
    else:
        p = model.config.vision.patch_size
        if not isinstance(window, int) or window < p:
            raise InputError(f"window must be an integer of at least the patch size {p}; got {window!r}")
        stride = stride if stride is not None else max(window // 2, 1)
        if not isinstance(stride, int) or not 0 < stride <= window:
            raise InputError(f"stride must be an integer in [1, window={window}]; got {stride!r}")
        scores = sliding_scores(model, x, classifier, method, window, stride)
    return F.interpolate(scores, size=tuple(out_size), mode="bilinear", align_corners=False)[0]
