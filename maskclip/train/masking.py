"""Patch and token masks, and the image tower's forward on a masked image.

A ``Mask`` says, per sample, which patches are hidden (``mask [B, N]``, True = masked), which
are kept (``ids_keep [B, K]``, the same count K for every sample, so the visible tokens stack
into one tensor) and how to put a kept-then-masked sequence back in patch order
(``ids_restore [B, N]``, MAE's convention).

Every random draw takes an explicit ``torch.Generator``: the loop seeds one per step, so a
resumed run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..towers import VisionTower


@dataclass
class Mask:
    mask: torch.Tensor  # [B, N] bool, True = hidden from the student
    ids_keep: torch.Tensor  # [B, K] patch indices the student sees, ascending
    ids_restore: torch.Tensor  # [B, N]: position of each patch in cat(kept, masked)

    @property
    def num_keep(self) -> int:
        return self.ids_keep.shape[1]

    def to(self, device) -> "Mask":
        return Mask(self.mask.to(device), self.ids_keep.to(device), self.ids_restore.to(device))

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> "Mask":
        """``[B, N]`` bool with the same number of True per row -> a ``Mask``."""
        counts = mask.sum(dim=1)
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise ValueError(f"every sample must mask the same number of patches; got counts {counts.tolist()}")
        # A stable sort puts kept patches (False) first, each group in ascending patch order.
        ids_shuffle = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        keep = mask.shape[1] - int(counts[0]) if counts.numel() else mask.shape[1]
        return cls(mask, ids_shuffle[:, :keep], torch.argsort(ids_shuffle, dim=1))


def num_masked(num_patches: int, ratio: float) -> int:
    """Patches to hide: ``round(N * ratio)``, at least 1 and leaving at least 1 visible."""
    return min(max(int(round(num_patches * ratio)), 1), num_patches - 1)


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> Mask:
    """Uniformly random masking with exactly ``num_masked(N, ratio)`` patches hidden per sample."""
    m = num_masked(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=generator)
    hidden = torch.zeros(batch, num_patches, dtype=torch.bool)
    hidden.scatter_(1, noise.argsort(dim=1)[:, num_patches - m:], True)
    return Mask.from_bool(hidden)


def block_mask(batch: int, grid: Tuple[int, int], ratio: float, generator: torch.Generator,
               min_block: int = 4, aspect: float = 0.3) -> Mask:
    """BEiT-style block-wise masking, then trimmed or topped up at random to the exact count.

    Rectangles of at least ``min_block`` patches with aspect ratio in ``[aspect, 1 / aspect]``
    are masked until the target is reached; the count is then made exact so that the visible
    tokens of a batch stack.
    """
    gh, gw = grid
    n = gh * gw
    m = num_masked(n, ratio)
    rows = []
    for _ in range(batch):
        hidden = torch.zeros(gh, gw, dtype=torch.bool)
        for _attempt in range(100):
            if int(hidden.sum()) >= m:
                break
            area = _uniform(generator, min_block, max(min_block, m - int(hidden.sum())))
            log_r = _uniform(generator, math.log(aspect), -math.log(aspect))
            h = int(round(math.sqrt(area * math.exp(log_r))))
            w = int(round(math.sqrt(area / math.exp(log_r))))
            h, w = min(max(h, 1), gh), min(max(w, 1), gw)
            top = int(torch.randint(0, gh - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, gw - w + 1, (1,), generator=generator))
            hidden[top:top + h, left:left + w] = True
        rows.append(_exact_count(hidden.flatten(), m, generator))
    return Mask.from_bool(torch.stack(rows))


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def _exact_count(hidden: torch.Tensor, m: int, generator: torch.Generator) -> torch.Tensor:
    """Unmask (or mask) random patches until exactly ``m`` are hidden."""
    hidden = hidden.clone()
    have = int(hidden.sum())
    pool = (hidden if have > m else ~hidden).nonzero().flatten()
    flip = pool[torch.randperm(pool.numel(), generator=generator)[:abs(have - m)]]
    hidden[flip] = have < m
    return hidden


def make_mask(strategy: str, batch: int, grid: Tuple[int, int], ratio: float,
              generator: torch.Generator) -> Mask:
    if strategy == "random":
        return random_mask(batch, grid[0] * grid[1], ratio, generator)
    if strategy == "block":
        return block_mask(batch, grid, ratio, generator)
    raise ValueError(f"masking strategy must be 'random' or 'block'; got {strategy!r}")


def keep(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [B, N, D]`` at ``ids [B, K]`` -> ``[B, K, D]``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def encode_masked(visual: VisionTower, images: torch.Tensor, mask: Optional[Mask], mode: str = "drop",
                  mask_token: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The image tower on masked images, up to (not including) ``ln_post``.

    ``mode="drop"`` (MAE): the transformer sees the class token and the K visible patches only:
    returns ``[B, 1 + K, width]``. ``mode="token"`` (BEiT): hidden patches' embeddings are
    replaced by ``mask_token [width]`` before positions are added: returns ``[B, 1 + N, width]``.
    ``mask=None`` runs the full image. Also returns the patch grid.
    """
    patches, grid = visual.patchify(images)
    if mask is not None and mode == "token":
        if mask_token is None:
            raise ValueError("mode='token' needs a mask_token")
        patches = torch.where(mask.mask.unsqueeze(-1), mask_token.to(patches.dtype), patches)
    tokens = visual.add_class_and_pos(patches, grid)
    if mask is not None and mode == "drop":
        tokens = torch.cat([tokens[:, :1], keep(tokens[:, 1:], mask.ids_keep)], dim=1)
    return visual.transformer(tokens), grid


def text_mask(tokens: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """``[B, L]`` token ids -> ``[B, L]`` bool: about ``ratio`` of each caption's words hidden.

    Only positions strictly between start-of-text (position 0) and end-of-text (the row's
    argmax) can be hidden; every caption with at least one word hides at least one.
    """
    B, L = tokens.shape
    eot = tokens.argmax(dim=1)
    pos = torch.arange(L).expand(B, L)
    candidate = (pos > 0) & (pos < eot.unsqueeze(1))
    scores = torch.rand(B, L, generator=generator).masked_fill(~candidate, 2.0)
    counts = candidate.sum(dim=1)
    want = torch.where(counts > 0, (counts.float() * ratio).round().clamp(min=1), torch.zeros_like(counts.float()))
    rank = scores.argsort(dim=1).argsort(dim=1)
    return candidate & (rank < want.long().unsqueeze(1))
