"""The benchmark protocol's per-image steps, as pure functions (SCLIP's ``clip_segmentor.py``, NACLIP's ``naclip.py``).

From the cosine scores of every class name (synonyms included) at the original image size:
scale by ``logit_scale``, softmax over all names, take the max over each class's names; with
an area threshold, drop every non-background class predicted on less than that fraction of the
non-background pixels; argmax; pixels whose best probability is below the probability
threshold become the background.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import InputError


def flatten_synonyms(classes: Sequence[Sequence[str]]) -> Tuple[List[str], torch.Tensor]:
    """``[[name, ...] per class]`` -> (every name, ``LongTensor[Q]`` the class of each name)."""
    names = [n for synonyms in classes for n in synonyms]
    owner = torch.tensor([k for k, synonyms in enumerate(classes) for _ in synonyms], dtype=torch.long)
    return names, owner


def class_probabilities(scores: torch.Tensor, owner: torch.Tensor, n_classes: int, logit_scale: float) -> torch.Tensor:
    """Cosine scores of the names ``[Q, H, W]`` -> class probabilities ``[C, H, W]``: softmax over names, max per class."""
    if scores.dim() != 3 or scores.shape[0] != owner.numel():
        raise InputError(f"scores must be [Q={owner.numel()}, H, W]; got {list(scores.shape)}")
    probs = (scores.float() * logit_scale).softmax(dim=0)
    out = probs.new_zeros((n_classes,) + tuple(probs.shape[1:]))
    index = owner.to(probs.device)[:, None, None].expand_as(probs)
    return out.scatter_reduce_(0, index, probs, "amax", include_self=False)


def predict(probs: torch.Tensor, background: Optional[int] = None, prob_threshold: float = 0.0,
            area_threshold: Optional[float] = None) -> torch.Tensor:
    """Class probabilities ``[C, H, W]`` -> label map ``LongTensor[H, W]`` under the thresholds.

    ``area_threshold``: a non-background class whose argmax area is at most this fraction of all
    non-background pixels gets probability 0 (SCLIP's VOC21 ``area_thd``). ``prob_threshold``:
    pixels whose (remaining) best probability is below it become ``background``.
    """
    if (prob_threshold > 0 or area_threshold is not None) and background is None:
        raise InputError("prob_threshold and area_threshold need a background class to fall back to")
    if area_threshold is not None:
        n_classes = probs.shape[0]
        area = torch.bincount(probs.argmax(0).reshape(-1), minlength=n_classes).to(probs.dtype)
        foreground = torch.ones(n_classes, dtype=torch.bool, device=probs.device)
        foreground[background] = False
        keep = area > area_threshold * area[foreground].sum()
        probs = torch.where((foreground & ~keep)[:, None, None], torch.zeros_like(probs), probs)
    label = probs.argmax(0)  # ties -> the lower index, as the reference's argmax
    best = probs.amax(0)
    if prob_threshold > 0:
        label[best < prob_threshold] = background
    return label
