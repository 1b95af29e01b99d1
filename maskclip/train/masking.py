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

    @property
    def ids_masked(self) -> torch.Tensor:
        """``[B, N - K]`` the hidden patches' indices, in the order of ``cat(kept, masked)`` (ascending
        for masks made here): gathering with them gives the rows ``x[mask]`` would, without the
        data-dependent shape (a host sync on a GPU)."""
        return torch.argsort(self.ids_restore, dim=1)[:, self.num_keep:]

    def to(self, device, non_blocking: bool = False) -> "Mask":
        return Mask(*(t.to(device, non_blocking=non_blocking) for t in (self.mask, self.ids_keep, self.ids_restore)))

    @classmethod
    def from_bool(cls, mask: torch.Tensor) -> "Mask":
        """``[B, N]`` bool with the same number of True per row -> a ``Mask``."""
        counts = mask.sum(dim=1)
        if counts.numel() and not bool((counts == counts[0]).all()):
            raise ValueError(f"every sample must mask the same number of patches; got counts {counts.tolist()}")
        return cls._exact(mask, int(counts[0]) if counts.numel() else 0)

    @classmethod
    def _exact(cls, mask: torch.Tensor, hidden: int) -> "Mask":
        """``from_bool`` for a mask known to hide ``hidden`` patches in every row (nothing read back)."""
        # A stable sort puts kept patches (False) first, each group in ascending patch order.
        ids_shuffle = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        return cls(mask, ids_shuffle[:, :mask.shape[1] - hidden], torch.argsort(ids_shuffle, dim=1))


def num_masked(num_patches: int, ratio: float) -> int:
    """Patches to hide: ``round(N * ratio)``, at least 1 and leaving at least 1 visible."""
    return min(max(int(round(num_patches * ratio)), 1), num_patches - 1)


def random_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> Mask:
    """Uniformly random masking with exactly ``num_masked(N, ratio)`` patches hidden per sample."""
    m = num_masked(num_patches, ratio)
    noise = torch.rand(batch, num_patches, generator=generator)
    hidden = torch.zeros(batch, num_patches, dtype=torch.bool)
    hidden.scatter_(1, noise.argsort(dim=1)[:, num_patches - m:], True)
    return Mask._exact(hidden, m)


BLOCK_ATTEMPTS = 100  # rectangles tried per sample before the count is made exact at random


def block_mask(batch: int, grid: Tuple[int, int], ratio: float, generator: torch.Generator,
               min_block: int = 4, aspect: float = 0.3) -> Mask:
    """BEiT-style block-wise masking, then trimmed or topped up at random to the exact count.

    Each sample masks rectangles until ``num_masked`` patches are hidden (at most ``BLOCK_ATTEMPTS``):
    attempt ``a`` draws an area uniform in ``[min_block, max(min_block, still to hide)]``, a log aspect
    ratio uniform in ``[log aspect, -log aspect]``, and a position uniform over the places the
    rectangle fits (its sides rounded, then clipped to the grid). Too many hidden patches are then
    unmasked, too few masked, choosing those with the lowest noise. The random numbers are drawn up
    front, ``[B, BLOCK_ATTEMPTS, 4]`` then ``[B, N]`` (float64), so the attempts run for the whole
    batch at once; sample ``b`` uses row ``b`` only (tests/test_train_parts.py pins this against a
    per-sample loop).
    """
    gh, gw = grid
    n = gh * gw
    m = num_masked(n, ratio)
    draws = torch.rand(batch, BLOCK_ATTEMPTS, 4, generator=generator, dtype=torch.float64)
    noise = torch.rand(batch, n, generator=generator, dtype=torch.float64)
    hidden = torch.zeros(batch, gh, gw, dtype=torch.bool)
    count = torch.zeros(batch, dtype=torch.long)
    rows, cols = torch.arange(gh), torch.arange(gw)
    log_lo = math.log(aspect)
    for a in range(BLOCK_ATTEMPTS):
        active = count < m
        if not bool(active.any()):
            break
        u = draws[:, a]
        area = min_block + ((m - count).clamp(min=min_block) - min_block) * u[:, 0]
        log_r = log_lo + (-2 * log_lo) * u[:, 1]
        h = torch.round(torch.sqrt(area * torch.exp(log_r))).long().clamp(1, gh)
        w = torch.round(torch.sqrt(area / torch.exp(log_r))).long().clamp(1, gw)
        top = torch.floor(u[:, 2] * (gh - h + 1)).long()
        left = torch.floor(u[:, 3] * (gw - w + 1)).long()
        in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # [B, gh]
        in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # [B, gw]
        hidden |= in_rows[:, :, None] & in_cols[:, None, :] & active[:, None, None]
        count = hidden.sum(dim=(1, 2))
    return Mask._exact(_exact_count(hidden.flatten(1), m, noise), m)


def _exact_count(hidden: torch.Tensor, m: int, noise: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` -> ``[B, N]`` with exactly ``m`` hidden per row: flip the surplus (or missing)
    patches with the lowest ``noise`` among the hidden (or visible) ones."""
    have = hidden.sum(dim=1, keepdim=True)
    pool = torch.where(have > m, hidden, ~hidden)
    rank = torch.where(pool, noise, 2.0).argsort(dim=1, stable=True).argsort(dim=1)
    return hidden ^ (rank < (have - m).abs())


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

    With a convolutional stem (``VisionConfig.stem="conv"``) a token's receptive field reaches a
    few pixels into its neighbours' patches, so the hidden patches' pixels are set to 0 (the
    normalised mean) before the stem: what the student is asked about stays hidden from it.
    """
    if mask is not None and visual.cfg.stem == "conv":
        images = hide_patches(images, mask.mask, visual.cfg.patch_size)
    patches, grid = visual.patchify(images)
    if mask is not None and mode == "token":
        if mask_token is None:
            raise ValueError("mode='token' needs a mask_token")
        patches = torch.where(mask.mask.unsqueeze(-1), mask_token.to(patches.dtype), patches)
    tokens = visual.add_class_and_pos(patches, grid)
    if mask is not None and mode == "drop":
        tokens = torch.cat([tokens[:, :1], keep(tokens[:, 1:], mask.ids_keep)], dim=1)
    return visual.transformer(tokens), grid


def hide_patches(images: torch.Tensor, hidden: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``images [B, C, H, W]`` with the pixels of each hidden patch (``hidden [B, gh * gw]``, row-major) set to 0."""
    B, _, H, W = images.shape
    gh, gw = H // patch_size, W // patch_size
    if hidden.shape != (B, gh * gw):
        raise ValueError(f"a mask of {gh} x {gw} patches per image was expected for {H} x {W} images with patch "
                         f"{patch_size}; got mask shape {tuple(hidden.shape)}")
    keep_px = (~hidden).view(B, 1, gh, 1, gw, 1).expand(B, 1, gh, patch_size, gw, patch_size)
    keep_px = keep_px.reshape(B, 1, gh * patch_size, gw * patch_size)
    if (gh * patch_size, gw * patch_size) != (H, W):  # pixels past the last whole patch belong to no token
        keep_px = torch.nn.functional.pad(keep_px, (0, W - gw * patch_size, 0, H - gh * patch_size), value=True)
    return images * keep_px.to(images.dtype)


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
