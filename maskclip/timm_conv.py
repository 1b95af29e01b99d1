"""ConvNeXt image towers built with timm, as open_clip builds its ``convnext_*`` CLIPs (LAION's
``CLIP-convnext_*`` weights).

``TimmConvTower`` holds open_clip's ``TimmModel`` parameters under the same names (``trunk.*``: the
timm ConvNeXt; ``head.*``: open_clip's projection), so open_clip state dicts load as they are. The
pooled embedding is timm's head (average pool, LayerNorm, optional MLP) followed by open_clip's
projection.

Dense features: ConvNeXt has no attention for the training-free methods (``zhou``, ``sclip``, ...) to
change, so it offers one method, ``vanilla``: each location of the last stage's feature map (stride 32)
on its own through the head's norm, MLP and projection, with the average pool left out, in the
manner of FC-CLIP (Yu et al., NeurIPS 2023), which reads a frozen ConvNeXt CLIP's feature map as
open-vocabulary dense features. Average pooling and the per-location head commute only for the linear
parts, so the invariant is: when every location holds the same feature, each per-location feature
equals the pooled embedding (test).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

from .errors import InputError
from .layers import take_indices
from .timm_vision import TimmTower

Indices = Union[None, int, Sequence[int]]


class TimmConvTower(TimmTower):
    """open_clip's timm ConvNeXt image tower: ``[B, 3, H, W]`` (preprocessed) -> ``[B, E]``."""

    # what maskclip.dense can run on this tower (no attention: the per-location projection only)
    dense_methods = ("vanilla",)
    num_prefix_tokens = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, E]``."""
        return self.pool_map(self.trunk.forward_features(x))

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        """The feature map's size for an input of ``height x width`` px (each stride floors, as the convolutions do)."""
        p = self.cfg.patch_size
        return height // p, width // p

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> joint-space features of every location of the last stage ``[B, E, H / 32, W / 32]``."""
        return self.project_map(self.trunk.forward_features(x))

    def project_map(self, f: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``[B, C, h, w]`` -> ``[B, E, h, w]``: the pooled path's head at each location."""
        h = self.trunk.head  # timm's NormMlpClassifierHead: pool, norm, flatten, pre_logits, drop, fc
        f = h.norm(f).permute(0, 2, 3, 1)  # LayerNorm2d normalises each location over its channels
        return self.head(h.fc(h.pre_logits(f))).permute(0, 3, 1, 2)

    def pool_map(self, f: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``[B, C, h, w]`` -> the image embedding ``[B, E]`` (what ``forward`` ends with)."""
        return self.head(self.trunk.forward_head(f))

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-stage feature maps (``[B, C_i, H / s_i, W / s_i]``; ``indices`` count stages, not blocks).

        Returns ``(image embedding [B, E], intermediates)``, or with ``intermediates_only`` just the list.
        ``norm`` is accepted for the ViT towers' signature; a ConvNeXt has no final norm before its head.
        """
        if output_fmt != "NCHW":
            raise InputError(f"a ConvNeXt tower's intermediates are feature maps: output_fmt must be 'NCHW'; "
                             f"got {output_fmt!r}")
        take = take_indices(len(self.trunk.stages), indices)
        out = self.trunk.forward_intermediates(x, indices=take, norm=norm, output_fmt="NCHW",
                                               intermediates_only=intermediates_only, stop_early=intermediates_only)
        if intermediates_only:
            return out
        final, inter = out
        return self.pool_map(final), inter
