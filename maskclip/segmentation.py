"""Zero-shot semantic segmentation from dense patch features.

Protocol: resize the image's shorter side to ``size`` (keeping the aspect ratio, no crop),
compute patch features (optionally in sliding windows of ``window`` px with ``stride``),
score every patch against the text classifier by cosine similarity, upsample the scores
bilinearly to the input image's size and take the best label per pixel.

The public ``DualEncoder.segment`` checks its inputs (``check_window`` here); ``scores`` below
takes checked tensors and the dense-feature function to call on each window.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import InputError

# Preprocessed images [1, 3, h, w] (h, w multiples of the patch size) -> dense features [1, E, gh, gw].
Features = Callable[[torch.Tensor], torch.Tensor]


def check_window(window, stride, patch_size: int) -> Tuple[Optional[int], Optional[int]]:
    """Sliding-window arguments -> ``(window, stride)``, stride defaulting to ``window // 2``.

    Without a window, ``stride`` is unused and returned as given.
    """
    if window is None:
        return None, stride
    if not isinstance(window, int) or window < patch_size:
        raise InputError(f"window must be an integer of at least the patch size {patch_size}; got {window!r}")
    stride = stride if stride is not None else max(window // 2, 1)
    if not isinstance(stride, int) or not 0 < stride <= window:
        raise InputError(f"stride must be an integer in [1, window={window}]; got {stride!r}")
    return window, stride


def feature_input_size(size: Tuple[int, int], patch_size: int, window: Optional[int] = None) -> Tuple[int, int]:
    """``(h, w)`` of the largest input ``scores`` gives the feature function for an image of ``size``."""
    h, w = size
    if window is not None:
        h, w = min(h, window), min(w, window)
    return h + (-h) % patch_size, w + (-w) % patch_size


def _patch_scores(features: Features, x: torch.Tensor, classifier: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Preprocessed ``[1, 3, h, w]`` -> cosine scores ``[1, C, h, w]`` (upsampled from the patch grid)."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % patch_size, (-w) % patch_size
    if pad_h or pad_w:  # pad to whole patches so the edges are covered, then crop the scores back
        x = F.pad(x, (0, pad_w, 0, pad_h))
    feats = F.normalize(features(x), dim=1)  # [1, E, gh, gw]
    scores = torch.einsum("behw,ec->bchw", feats, classifier.to(feats.dtype))
    scores = F.interpolate(scores.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
    return scores[..., :h, :w]


def _windows(length: int, window: int, stride: int):
    """Start offsets covering ``[0, length)`` with windows of ``window`` (the last one flush with the end)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


def _sliding_scores(features: Features, x: torch.Tensor, classifier: torch.Tensor, patch_size: int,
                    window: int, stride: int) -> torch.Tensor:
    """Average of ``_patch_scores`` over overlapping windows: ``[1, 3, h, w]`` -> ``[1, C, h, w]``."""
    h, w = x.shape[-2:]
    total = torch.zeros(1, classifier.shape[1], h, w)
    count = torch.zeros(1, 1, h, w)
    for top in _windows(h, window, stride):
        for left in _windows(w, window, stride):
            crop = x[..., top:top + window, left:left + window]
            total[..., top:top + window, left:left + window] += _patch_scores(features, crop, classifier, patch_size).cpu()
            count[..., top:top + window, left:left + window] += 1
    return total / count


@torch.no_grad()
def scores(features: Features, x: torch.Tensor, out_size: Tuple[int, int], classifier: torch.Tensor,
           patch_size: int, window: Optional[int] = None, stride: Optional[int] = None) -> torch.Tensor:
    """One preprocessed uncropped image ``[1, 3, h, w]`` and a classifier ``[E, C]`` -> scores ``[C, H, W]`` at ``out_size``.

    ``window`` / ``stride`` as returned by ``check_window``; ``features`` is called once per window.
    """
    if window is None:
        s = _patch_scores(features, x, classifier, patch_size).cpu()
    else:
        s = _sliding_scores(features, x, classifier, patch_size, window, stride)
    return F.interpolate(s, size=tuple(out_size), mode="bilinear", align_corners=False)[0]
