"""Training-free dense (per-patch) features in the joint image-text space.

Every method runs the image tower unchanged up to its last block, then replaces only the
last block, and finally applies ``ln_post`` and the projection to every patch token (the
class token is dropped).

- ``vanilla``: the last block as is (the same per-token computation as the pooled path).
- ``zhou`` (Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP", ECCV 2022, which calls it
  MaskCLIP): identity attention, i.e. the value path ``out_proj(v(ln_1 x))``, plus the residual,
  then the MLP with its residual.
- ``sclip`` (Wang et al., "SCLIP", ECCV 2024): attention ``softmax(q q^T) + softmax(k k^T)``;
  residual and MLP kept.
- ``clearclip`` (Lan et al., "ClearCLIP", ECCV 2024): ``q q^T`` attention, no residual, no MLP.

``"maskclip"`` is still accepted for ``zhou`` (``ALIASES``; the results are identical). It was
renamed because MaskCLIP also names Dong et al.'s training recipe (``maskclip.train``), a
different paper. Listings and ``--method`` choices show the names in ``METHODS``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import InputError
from .layers import Block
from .towers import VisionTower

METHODS = ("vanilla", "zhou", "sclip", "clearclip")
ALIASES = {"maskclip": "zhou"}


def canonical_name(method):
    """An alias -> its name in ``METHODS``; anything else unchanged (``resolve_method`` checks it)."""
    return ALIASES.get(method, method) if isinstance(method, str) else method


def resolve_method(method) -> str:
    """A dense method name or alias -> its name in ``METHODS``; ``InputError`` for anything else."""
    name = canonical_name(method)
    if name not in METHODS:
        raise InputError(f"dense method must be one of {list(METHODS)}; got {method!r}")
    return name


def last_block(block: Block, x: torch.Tensor, method: str) -> torch.Tensor:
    """The last block under ``method``, a name in ``METHODS``: ``[B, 1 + N, width]`` -> ``[B, 1 + N, width]``."""
    if method == "vanilla":
        return block(x)
    attn = block.attn
    q, k, v = attn.qkv(block.ln_1(x))
    if method == "zhou":
        x = x + attn.merge_heads(v)
        return x + block.mlp(block.ln_2(x))
    if method == "sclip":
        # (softmax(qq) + softmax(kk)) @ v == softmax(qq) @ v + softmax(kk) @ v: two fused calls.
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        x = x + attn.merge_heads(out)
        return x + block.mlp(block.ln_2(x))
    return attn.merge_heads(F.scaled_dot_product_attention(q, q, v))  # clearclip


def dense_features(visual: VisionTower, x: torch.Tensor, method: str = "vanilla") -> torch.Tensor:
    """Preprocessed images ``[B, 3, H, W]`` -> patch features ``[B, E, H / p, W / p]``.

    ``method`` must be a name in ``METHODS`` (``resolve_method`` turns user input into one):
    inputs are checked by the public ``DualEncoder.dense_features``, not again here.
    """
    blocks = visual.transformer.resblocks
    tokens, (gh, gw) = visual.forward_tokens(x, stop=len(blocks) - 1)
    tokens = last_block(blocks[-1], tokens, method)
    feats = visual.project_patches(tokens[:, 1:])  # [B, N, E]
    return feats.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
