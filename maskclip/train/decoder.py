"""Small decoders that predict what the student did not see.

``PatchDecoder`` (MAE/RILS/MaskCLIP): the student's visible tokens plus learned mask tokens, back
in patch order (or, when the encoder already put mask tokens in, its full sequence), with their
own position embedding, through a few transformer blocks, to a prediction at every patch or at
the patches asked for. ``TokenDecoder`` (MaskCLIP's text branch): bidirectional blocks over
the student's caption states, predicting each token's target.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..layers import Transformer, grid_pos_embed, sincos_2d
from .masking import Mask


def _heads(width: int, heads: int) -> int:
    heads = heads or max(width // 64, 1)
    if width % heads:
        raise ValueError(f"decoder width {width} is not divisible by its {heads} heads")
    return heads


class PatchDecoder(nn.Module):
    """``[B, 1 + K, enc_width]`` visible tokens (the encoder dropped the hidden patches) or
    ``[B, 1 + N, enc_width]`` (the encoder put its own mask tokens in) -> ``[B, N, out_dim]``.

    ``fill=False`` builds a decoder for the second form only, without a ``mask_token``: a parameter
    that never gets a gradient is what DDP (without unused-parameter detection) rejects on the
    second step.
    """

    def __init__(self, enc_width: int, out_dim: int, grid: Tuple[int, int], layers: int = 2, width: int = 0,
                 heads: int = 0, pos_embed: str = "learned", eps: float = 1e-6, fill: bool = True):
        super().__init__()
        width = width or enc_width
        self.grid = tuple(grid)
        self.pos_kind = pos_embed
        self.embed = nn.Linear(enc_width, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(width)) if fill else None
        n = grid[0] * grid[1]
        if pos_embed == "sincos":
            self.pos = nn.Parameter(sincos_2d(width, self.grid), requires_grad=False)
        else:
            self.pos = nn.Parameter(0.02 * torch.randn(1 + n, width))
        self.blocks = Transformer(width, layers, _heads(width, heads), 4.0, "gelu", eps)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, out_dim)

    def forward(self, tokens: torch.Tensor, mask: Mask, grid: Tuple[int, int],
                at: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predictions ``[B, N, out_dim]``, or ``[B, M, out_dim]`` at the patch indices ``at [B, M]``."""
        x = self.embed(tokens)
        B, n = mask.mask.shape
        if x.shape[1] != 1 + n:  # MAE-style input: append mask tokens, then undo the shuffle
            if self.mask_token is None:
                raise ValueError(f"this decoder (fill=False) takes the full sequence [B, {1 + n}, width] with the "
                                 f"encoder's mask tokens in; got {tuple(tokens.shape)}")
            filler = self.mask_token.to(x.dtype).expand(B, n - mask.num_keep, -1)
            seq = torch.cat([x[:, 1:], filler], dim=1)
            seq = torch.gather(seq, 1, mask.ids_restore.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
            x = torch.cat([x[:, :1], seq], dim=1)
        x = self.blocks(x + grid_pos_embed(self.pos, self.grid, grid, self.pos_kind).to(x.dtype))[:, 1:]
        if at is not None:  # the norm and head act per patch: only the asked-for rows are computed
            x = torch.gather(x, 1, at.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.head(self.norm(x))


class TokenDecoder(nn.Module):
    """Bidirectional blocks over a sequence: ``[B, L, in_width]`` -> ``[B, L, out_dim]``."""

    def __init__(self, in_width: int, out_dim: int, layers: int = 1, width: int = 0, heads: int = 0,
                 eps: float = 1e-6):
        super().__init__()
        width = width or in_width
        self.embed = nn.Linear(in_width, width)
        self.blocks = Transformer(width, layers, _heads(width, heads), 4.0, "gelu", eps)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))))
