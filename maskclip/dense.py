"""Training-free dense (per-patch) features in the joint image-text space.

Every method runs the image tower unchanged up to its last block, then replaces only the
last block, and finally applies ``ln_post`` and the projection to every patch token (the
class token is dropped). See ``docs/INTEROP.md`` for the papers.

- ``vanilla``: the last block as is (the same per-token computation as the pooled path).
- ``maskclip`` (Zhou et al., ECCV 2022): identity attention, i.e. the value path
  ``out_proj(v(ln_1 x))``, plus the residual, then the MLP with its residual.
- ``sclip`` (Wang et al., ECCV 2024): attention ``softmax(q q^T) + softmax(k k^T)``; residual and MLP kept.
- ``clearclip`` (Lan et al., ECCV 2024): ``q q^T`` attention, no residual, no MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import Block
from .towers import VisionTower

METHODS = ("vanilla", "maskclip", "sclip", "clearclip")


def last_block(block: Block, x: torch.Tensor, method: str) -> torch.Tensor:
    """The last block under ``method``: ``[B, 1 + N, width]`` -> ``[B, 1 + N, width]``."""
    if method == "vanilla":
        return block(x)
    attn = block.attn
    q, k, v = attn.qkv(block.ln_1(x))
    if method == "maskclip":
        x = x + attn.merge_heads(v)
        return x + block.mlp(block.ln_2(x))
    if method == "sclip":
        # (softmax(qq) + softmax(kk)) @ v == softmax(qq) @ v + softmax(kk) @ v: two fused calls.
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        x = x + attn.merge_heads(out)
        return x + block.mlp(block.ln_2(x))
    if method == "clearclip":
        return attn.merge_heads(F.scaled_dot_product_attention(q, q, v))
    raise ValueError(f"dense method must be one of {list(METHODS)}; got {method!r}")


def dense_features(visual: VisionTower, x: torch.Tensor, method: str = "vanilla") -> torch.Tensor:
    """Preprocessed images ``[B, 3, H, W]`` -> patch features ``[B, E, H / p, W / p]``."""
    blocks = visual.transformer.resblocks
    tokens, (gh, gw) = visual.forward_tokens(x, stop=len(blocks) - 1)
    tokens = last_block(blocks[-1], tokens, method)
    feats = visual.project_patches(tokens[:, 1:])  # [B, N, E]
    return feats.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
