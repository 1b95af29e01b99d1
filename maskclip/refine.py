"""Post-processing of segmentation score maps with the image.

``pamr``: pixel-adaptive mask refinement (Araslanov and Roth, "Single-Stage Semantic Segmentation
from Image Labels", CVPR 2020; NACLIP's headline numbers use it). Every pixel's scores are replaced,
``iterations`` times, by an average of its 8 neighbours at each dilation, weighted by how alike their
colours are: ``w = softmax_over_neighbours(mean_over_channels(-|I_p - I_n| / (0.1 std_p)))``, ``std_p``
the standard deviation of the image over ``p``'s neighbourhoods (centre included). The weights come
from the image once; scores then diffuse along regions of similar colour. Cost: ``iterations x
16 x C x H x W`` multiply-adds at the output size, and ``16 x C x H x W`` floats of memory per chunk of
classes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError

REFINEMENTS = ("pamr",)
PAMR_ITERATIONS, PAMR_DILATIONS = 10, (8, 16)  # sinahmr/NACLIP naclip.py: pamr_steps=10, pamr_stride=(8, 16)


def check_refine(refine) -> Optional[str]:
    """``None`` or a name in ``REFINEMENTS``; ``InputError`` for anything else."""
    if refine is not None and refine not in REFINEMENTS:
        raise InputError(f"refine must be one of {[None, *REFINEMENTS]}; got {refine!r}")
    return refine


def _neighbours(x: torch.Tensor, dilations: Sequence[int], centre: bool) -> torch.Tensor:
    """``[B, K, H, W]`` -> ``[B, K, P, H, W]``: the values at the 3x3 offsets of each dilation (edges
    replicated), the centre left out unless ``centre``; ``P = (8 or 9) * len(dilations)``."""
    H, W = x.shape[-2:]
    out = []
    for d in dilations:
        padded = F.pad(x, [d] * 4, mode="replicate")
        for i in range(3):
            for j in range(3):
                if centre or (i, j) != (1, 1):
                    out.append(padded[..., i * d:i * d + H, j * d:j * d + W])
    return torch.stack(out, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int] = PAMR_DILATIONS) -> torch.Tensor:
    """Image ``[B, 3, H, W]`` -> neighbour weights ``[B, 1, P, H, W]`` summing to 1 over ``P = 8 * len(dilations)``."""
    std = _neighbours(image, dilations, centre=True).std(dim=2, keepdim=True)  # [B, 3, 1, H, W]
    diff = (_neighbours(image, dilations, centre=False) - image[:, :, None]).abs()
    return torch.softmax((-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True), dim=2)


@torch.no_grad()
def pamr(image: torch.Tensor, scores: torch.Tensor, iterations: int = PAMR_ITERATIONS,
         dilations: Sequence[int] = PAMR_DILATIONS, chunk: int = 16) -> torch.Tensor:
    """Image ``[B, 3, H, W]`` and scores ``[B, C, h, w]`` -> refined scores ``[B, C, H, W]``.

    The scores are first resized to the image (bilinear, corners aligned, as the reference does).
    Classes are refined independently, ``chunk`` at a time, to bound memory on large label sets.
    """
    image = image.float()
    scores = F.interpolate(scores.float(), size=image.shape[-2:], mode="bilinear", align_corners=True)
    weights = pamr_affinity(image, dilations)
    out = []
    for part in scores.split(chunk, dim=1):
        for _ in range(iterations):
            part = (_neighbours(part, dilations, centre=False) * weights).sum(dim=2)
        out.append(part)
    return torch.cat(out, dim=1)
