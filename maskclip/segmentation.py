"""Zero-shot semantic segmentation from dense patch features.

Protocol: resize the image's shorter side to ``size`` (keeping the aspect ratio, no crop),
compute patch features (optionally in sliding windows of ``window`` px with ``stride``),
score every patch against the text classifier by cosine similarity, upsample the scores
bilinearly to the input image's size and take the best label per pixel.

The public ``DualEncoder.segment`` checks its inputs (``check_window`` here); ``scores_many``
below takes checked tensors and the dense-feature function, which it calls on
batches of windows (all windows of an image, and of consecutive images, in one forward).
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import InputError

# Preprocessed images [B, 3, h, w] (h, w multiples of the patch size) -> dense features [B, E, gh, gw].
Features = Callable[[torch.Tensor], torch.Tensor]

# Windows per forward pass by default: on a CPU, batches beyond a few windows gain little
# (benchmarks/segmentation_speed.py); on a GPU a larger ``batch_size`` fills the device.
BATCH_SIZE = 8


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


def _pad_to_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Pad ``[B, 3, h, w]`` at the bottom and right to whole patches, so the edges are covered."""
    pad_h, pad_w = (-x.shape[-2]) % patch_size, (-x.shape[-1]) % patch_size
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def _upsampled_scores(feats: torch.Tensor, classifier: torch.Tensor, size: Tuple[int, int],
                      patch_size: int) -> torch.Tensor:
    """Dense features ``[B, E, gh, gw]`` of padded inputs -> cosine scores ``[B, C, h, w]`` for inputs of ``size``."""
    feats = F.normalize(feats, dim=1)
    scores = torch.einsum("behw,ec->bchw", feats, classifier.to(feats.dtype))
    padded = (size[0] + (-size[0]) % patch_size, size[1] + (-size[1]) % patch_size)
    scores = F.interpolate(scores.float(), size=padded, mode="bilinear", align_corners=False)
    return scores[..., :size[0], :size[1]]


def _windows(length: int, window: int, stride: int):
    """Start offsets covering ``[0, length)`` with windows of ``window`` (the last one flush with the end)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class _Image:
    """One image's score sums and window counts while its windows are in flight."""

    __slots__ = ("key", "out_size", "total", "count", "waiting")

    def __init__(self, key, out_size, n_classes: int, size: Tuple[int, int], n_windows: int):
        self.key, self.out_size, self.waiting = key, tuple(out_size), n_windows
        self.total = torch.zeros(1, n_classes, *size)
        self.count = torch.zeros(1, 1, *size)

    def scores(self) -> torch.Tensor:
        """Mean over the windows, upsampled to ``out_size``: ``[C, H, W]``."""
        return F.interpolate(self.total / self.count, size=self.out_size, mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def scores_many(features: Features, inputs: Iterable, classifier: torch.Tensor, patch_size: int,
                window: Optional[int] = None, stride: Optional[int] = None,
                batch_size: int = BATCH_SIZE) -> Iterator[Tuple[object, torch.Tensor]]:
    """Preprocessed images -> their scores, in input order, with the windows of all of them batched.

    ``inputs``: ``(x, out_size, key)`` triples, ``x`` an uncropped ``[1, 3, h, w]``; yields
    ``(key, scores [C, H, W] at out_size)`` as soon as every window of an image is scored. Windows
    (``window`` / ``stride`` as ``check_window`` returns them; without a window, the whole image) go
    through ``features`` up to ``batch_size`` at a time, across image boundaries; windows of another
    shape start a new batch. Each window's scores are upsampled to the window and averaged where
    windows overlap, as mmseg's ``slide_inference`` does, so the result equals scoring one window at a
    time up to the features' floating-point batching (about 1e-6).
    """
    n_classes = classifier.shape[1]
    in_flight: Deque[_Image] = deque()
    crops: List[torch.Tensor] = []
    places: List[Tuple[_Image, int, int]] = []

    def run() -> None:
        feats = features(torch.cat([_pad_to_patches(c, patch_size) for c in crops]))
        size = crops[0].shape[-2:]
        for i, (image, top, left) in enumerate(places):
            s = _upsampled_scores(feats[i:i + 1], classifier, size, patch_size).cpu()
            image.total[..., top:top + size[0], left:left + size[1]] += s
            image.count[..., top:top + size[0], left:left + size[1]] += 1
            image.waiting -= 1
        crops.clear()
        places.clear()

    def finished():
        while in_flight and in_flight[0].waiting == 0:
            image = in_flight.popleft()
            yield image.key, image.scores()

    for x, out_size, key in inputs:
        h, w = x.shape[-2:]
        offsets = ([(top, left) for top in _windows(h, window, stride) for left in _windows(w, window, stride)]
                   if window is not None else [(0, 0)])
        image = _Image(key, out_size, n_classes, (h, w), len(offsets))
        in_flight.append(image)
        for top, left in offsets:
            crop = x[..., top:top + window, left:left + window] if window is not None else x
            if crops and crops[0].shape != crop.shape:
                run()
            crops.append(crop)
            places.append((image, top, left))
            if len(crops) >= batch_size:
                run()
        yield from finished()
    if crops:
        run()
    yield from finished()
