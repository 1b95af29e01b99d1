"""Gradient accumulation with cached features (open_clip's ``--accum-freq``), for the image-text term.

A step of ``accum_steps`` micro-batches first runs every micro-batch through the towers without
gradient and keeps its normalised image and text features (``CachedFeatures``, ``[M, E]`` each for the
M = accum_steps x B samples of this rank). Then each micro-batch runs again with gradient, and its
image-text loss is the whole step's: its own fresh features in place of their cached copies, every
other row a constant. By the chain rule the whole batch's gradient is the sum over micro-batches of
the gradient through each one's own rows, so the sum of the micro-batches' backward passes equals one
big batch's backward, at the cost of one extra forward of both towers per micro-batch.

The step runner divides every micro-batch's loss by ``accum_steps`` (the other terms are averages
over micro-batches), so the fresh rows' gradient is scaled back up by ``accum_steps`` here. The logit
scale and bias enter every micro-batch's loss directly, with the same value each time: their
gradient, divided by ``accum_steps`` and summed, is the big batch's once.

The recomputation must draw the randomness of the caching pass: masks and patch dropout are drawn
on the host once per micro-batch (``Recipe.prepare``) and used by both passes, and torch's global
generators (what a tower's dropout draws from) are set back to their state before the caching pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch
from torch import Tensor


class _ScaleGradient(torch.autograd.Function):
    """The identity, whose backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


@dataclass
class CachedFeatures:
    """Every micro-batch's normalised features from the no-grad pass, and which micro-batch runs now.

    ``image``, ``text``: ``[M, E]`` (micro-batches in order, B rows each); ``index``: the micro-batch
    whose rows are replaced (``[index * B, (index + 1) * B)``); ``count``: the number of micro-batches.
    """

    image: Tensor
    text: Tensor
    index: int
    count: int

    @classmethod
    def of(cls, features: List[dict]) -> "CachedFeatures":
        """From the caching pass's outputs (dicts of ``image``, ``text`` ``[B, E]``), for micro-batch 0."""
        return cls(torch.cat([f["image"] for f in features]), torch.cat([f["text"] for f in features]), 0,
                   len(features))

    def at(self, index: int) -> "CachedFeatures":
        return CachedFeatures(self.image, self.text, index, self.count)

    def around(self, image: Tensor, text: Tensor) -> Tuple[Tensor, Tensor]:
        """This micro-batch's fresh features ``[B, E]`` (normalised) in place of their cached copies
        -> ``[M, E]`` image and text features; only the fresh rows carry gradient, ``count`` times it."""
        return self._place(self.image, image), self._place(self.text, text)

    def _place(self, cached: Tensor, fresh: Tensor) -> Tensor:
        b = fresh.shape[0]
        if cached.shape[0] != b * self.count or cached.shape[1:] != fresh.shape[1:]:
            raise ValueError(f"cached features {tuple(cached.shape)} do not fit {self.count} micro-batches of "
                             f"{tuple(fresh.shape)}")
        start, cached = self.index * b, cached.to(fresh.dtype)
        return torch.cat([cached[:start], _ScaleGradient.apply(fresh, float(self.count)), cached[start + b:]])


class GlobalRng:
    """The state of torch's global generators (the CPU's, and ``device``'s if it is a GPU), to draw the
    same random numbers again."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
