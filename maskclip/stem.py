"""The convolutional patch stem: an image tower option for ViTs trained from scratch on little data.

``VisionConfig.stem = "conv"`` replaces the single ``patch_size`` x ``patch_size`` projection
(``conv1``) by ``log2(patch_size)`` 3 x 3 convolutions of stride 2, channels doubling up to the
tower's width, with a LayerNorm over the channels at each position and GELU between them (Xiao et
al. 2021, "Early convolutions help transformers see better"). The token grid is the same
``H / patch_size`` x ``W / patch_size``. Measured on the synthetic shapes (benchmarks/shape_learnability.py,
docs/results.md), the plain projection leaves the study's small ViT at chance on shape after hundreds
of supervised steps while this stem learns it.

What it changes: neighbouring patches overlap by a few pixels in a token's receptive field. So that
a token masked out of the student's input (MaskCLIP, MAE, patch dropout) stays hidden from its
visible neighbours, ``maskclip.train.masking.encode_masked`` sets the hidden patches' pixels to 0
before this stem. Only maskclip's own checkpoint format can hold it (OpenAI, open_clip and
transformers layouts have a single patch projection).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import conv_stem_channels


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``[B, C, H, W]``, at each position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Sequential):
    """``[B, 3, H, W]`` -> ``[B, width, H / p, W / p]`` through ``log2(p)`` 3 x 3 stride-2 convolutions."""

    def __init__(self, patch_size: int, width: int, eps: float = 1e-5):
        layers, c_in = [], 3
        channels = conv_stem_channels(patch_size, width)
        for i, c_out in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            if i < len(channels) - 1:
                layers += [ChannelNorm(c_out, eps=eps), nn.GELU()]
            c_in = c_out
        super().__init__(*layers)
