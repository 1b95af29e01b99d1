"""The two encoders of the dual encoder, at the tensor level.

``VisionTower``: ViT, ``[B, 3, H, W]`` (already preprocessed) -> ``[B, E]`` or patch tokens.
``TextTower``: causal transformer, token ids ``[B, L]`` -> ``[B, E]`` pooled at end-of-text; large
batches run in buckets of similar length (``length_buckets``). SigLIP's text tower (full attention,
last position pooled, projection bias) is the same class with other ``TextConfig`` options.
Image towers built with timm (SigLIP, EVA02) are in ``maskclip.timm_vision``.
Both give per-block outputs through ``forward_intermediates`` (timm's and open_clip's name and
arguments).
Parameter names are OpenAI CLIP's (under ``visual.`` and ``text.``).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import TextConfig, VisionConfig
from .errors import InputError
from .layers import Transformer, causal_len, grid_pos_embed, sincos_2d, take_indices
from .stem import ConvStem

Indices = Union[None, int, Sequence[int]]


class VisionTower(nn.Module):
    num_prefix_tokens = 1  # the class token, before the patch tokens

    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        w, g = cfg.width, cfg.grid_size
        scale = w ** -0.5
        if cfg.stem == "conv":  # maskclip's own option (maskclip.stem); other layouts have conv1
            self.stem = ConvStem(cfg.patch_size, w, cfg.norm_eps)
        else:
            self.conv1 = nn.Conv2d(3, w, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        if cfg.pos_embed == "sincos":
            self.positional_embedding = nn.Parameter(sincos_2d(w, (g, g)), requires_grad=False)
        else:
            self.positional_embedding = nn.Parameter(scale * torch.randn(g * g + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.norm_eps) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_eps)
        self.ln_post = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(w, embed_dim))

    def grid(self, height: int, width: int) -> Tuple[int, int]:
        p = self.cfg.patch_size
        return height // p, width // p

    def pos_embed(self, grid: Tuple[int, int]) -> torch.Tensor:
        """Position embedding for a ``grid`` of patches: ``[1 + gh * gw, width]``.

        The stored embedding is for the config's square grid; other grids resample it
        bicubically (class token untouched), so any input resolution works.
        """
        g = self.cfg.grid_size
        return grid_pos_embed(self.positional_embedding, (g, g), grid, self.cfg.pos_embed)

    def patchify(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``[B, 3, H, W]`` -> patch embeddings ``[B, gh * gw, width]`` (row-major), ``(gh, gw)``."""
        x = self.stem(x) if self.cfg.stem == "conv" else self.conv1(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])

    def add_class_and_pos(self, patches: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Patch embeddings ``[B, N, width]`` -> tokens ``[B, 1 + N, width]``: class token, positions, ``ln_pre``."""
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.pos_embed(grid).to(patches.dtype)
        return self.ln_pre(x)

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """``[B, 3, H, W]`` -> tokens ``[B, 1 + gh * gw, width]`` (class token first), ``(gh, gw)``."""
        patches, grid = self.patchify(x)
        return self.add_class_and_pos(patches, grid), grid

    def dense_blocks(self, grid: Tuple[int, int]) -> nn.ModuleList:
        """The blocks ``maskclip.dense`` runs on tokens of any ``grid`` (the same for every grid here)."""
        return self.transformer.resblocks

    def forward_tokens(self, x: torch.Tensor, stop: Optional[int] = None):
        """Tokens after blocks ``[0, stop)``, before ``ln_post``: ``[B, 1 + N, width]``, and the grid."""
        tokens, grid = self.embed(x)
        return self.transformer(tokens, stop=stop), grid

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens ``[B, 1 + N, width]`` -> the pooled, normalised token ``[B, width]`` (before ``proj``)."""
        if self.cfg.pool == "mean":
            return self.ln_post(tokens[:, 1:]).mean(dim=1)
        return self.ln_post(tokens[:, 0])

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens ``[B, 1 + N, width]`` -> image embedding ``[B, E]``."""
        return self.pooled(tokens) @ self.proj

    def project_patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, width]`` -> joint-space patch features ``[B, N, E]``."""
        return self.ln_post(tokens) @ self.proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, E]``."""
        tokens, _ = self.forward_tokens(x)
        return self.pool(tokens)

    def compile_blocks(self, **kwargs) -> None:
        """``torch.compile`` the blocks in place (``DualEncoder.compile``)."""
        self.transformer.compile(**kwargs)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Per-block patch tokens of preprocessed images ``x: [B, 3, H, W]`` (timm's arguments).

        ``indices``: which blocks: None -> all, ``n`` -> the last ``n``, a sequence -> those
        (negative ones count from the end); returned in block order. ``norm`` applies ``ln_post``
        to each. ``output_fmt``: ``"NCHW"`` -> ``[B, width, H / p, W / p]``, ``"NLC"`` ->
        ``[B, (H / p) * (W / p), width]`` (row-major); the class token is left out of both.
        Returns ``(image embedding [B, E], intermediates)``, or with ``intermediates_only`` just
        the list, computed only as far as the last block asked for.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise InputError(f"output_fmt must be 'NCHW' or 'NLC'; got {output_fmt!r}")
        take = take_indices(len(self.transformer.resblocks), indices)
        tokens, (gh, gw) = self.embed(x)
        tokens, outs = self.transformer.forward_intermediates(
            tokens, take, stop=take[-1] + 1 if intermediates_only else None)
        outs = [self.ln_post(y[:, 1:]) if norm else y[:, 1:] for y in outs]
        if output_fmt == "NCHW":
            outs = [y.transpose(1, 2).reshape(y.shape[0], -1, gh, gw) for y in outs]
        return outs if intermediates_only else (self.pool(tokens), outs)


# Bucket sizes (in texts) for length bucketing, per device type: a new bucket starts where the
# length changes once a bucket holds `min`, or when it holds `max`. On CPU, buckets of 32 texts
# keep the matrix products efficient; accelerators want bigger batches.
BUCKET_SIZES = {"cpu": (32, 256)}
DEFAULT_BUCKET_SIZES = (256, 1024)


def length_buckets(lengths: torch.Tensor, min_size: int, max_size: int) -> List[torch.Tensor]:
    """Indices ``[n_i]`` of ``lengths: [B]`` in buckets of similar length, shortest first.

    Sorted by length, the sorted order is cut where the length changes once the current bucket
    holds ``min_size`` items, and wherever it reaches ``max_size``. Together the buckets hold every
    index once, so padding each bucket only to its own longest item loses nothing.
    """
    order = torch.argsort(lengths, stable=True)
    ordered = lengths[order].tolist()
    cuts, start = [], 0
    for i in range(1, len(ordered)):
        size = i - start
        if size >= max_size or (size >= min_size and ordered[i] != ordered[i - 1]):
            cuts.append(size)
            start = i
    cuts.append(len(ordered) - start)
    return list(order.split(cuts))


class TextTower(nn.Module):
    def __init__(self, cfg: TextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.transformer = Transformer(w, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.norm_eps)
        self.ln_final = nn.LayerNorm(w, eps=cfg.norm_eps)
        self.text_projection = nn.Parameter(torch.empty(w, embed_dim))
        if cfg.proj_bias:  # SigLIP; OpenAI-style towers have no such key
            self.text_projection_bias = nn.Parameter(torch.zeros(embed_dim))
        else:
            self.text_projection_bias = None
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> hidden states ``[B, L', width]`` before ``ln_final``.

        Causal towers pooled at end-of-text compute only the first ``L'`` positions, ``L'``
        reaching the last end-of-text token of the batch: later positions cannot change the
        pooled output, so this is exact and saves most of the work on short prompts. Other
        towers (SigLIP's: full attention, the last position pooled) compute all ``L``.
        """
        n = causal_len(tokens) if self.cfg.padding_invariant else tokens.shape[1]
        return self.forward_embeddings(self.token_embedding(tokens[:, :n]))

    def forward_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, L, width]`` (``L <= context_length``) -> hidden states ``[B, L, width]``.

        The entry point for inputs that are not plain ids, such as masked captions whose
        masked positions carry a learned embedding.
        """
        return self.transformer(self._add_positions(x), causal=self.cfg.causal)

    def _add_positions(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.positional_embedding[:x.shape[1]].to(x.dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> ``[B, E]``, the hidden state at end-of-text (the max id).

        A batch larger than the device's bucket size runs in buckets of texts of similar length
        (``length_buckets``), each only as far as its own longest text, and the rows are put back
        in input order: the same result as one batch, with less padding computed.
        """
        min_size, max_size = BUCKET_SIZES.get(tokens.device.type, DEFAULT_BUCKET_SIZES)
        if tokens.shape[0] <= min_size or not self.cfg.padding_invariant:
            return self.forward_batch(tokens)
        buckets = length_buckets(tokens.argmax(dim=-1), min_size, max_size)
        order = torch.cat(buckets)
        out = torch.cat([self.forward_batch(tokens[idx]) for idx in buckets])
        return out[torch.argsort(order)]

    def forward_batch(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, L]`` -> ``[B, E]`` in one batch, run to its longest end-of-text token."""
        return self.pool(tokens, self.forward_tokens(tokens))

    def pool(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Hidden states ``x: [B, L', width]`` of token ids ``[B, L]`` -> ``[B, E]`` at end-of-text
        (``pool="argmax"``) or at the last position (``pool="last"``)."""
        if self.cfg.pool == "last":
            eot = x[:, -1]
        else:
            eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        # LayerNorm acts per token, so normalising only the pooled token is exact and cheaper.
        out = self.ln_final(eot) @ self.text_projection
        return out if self.text_projection_bias is None else out + self.text_projection_bias

    def forward_intermediates(self, tokens: torch.Tensor, indices: Indices = None, norm: bool = False,
                              intermediates_only: bool = False):
        """Per-block hidden states ``[B, L', width]`` of token ids ``[B, L]`` (open_clip's arguments).

        ``L'`` reaches the batch's last end-of-text token, as in ``forward_tokens``. ``indices``
        and ``intermediates_only`` as in ``VisionTower.forward_intermediates``; ``norm`` applies
        ``ln_final``. Returns ``(text embedding [B, E], intermediates)`` (one batch, no length
        buckets), or just the list.
        """
        take = take_indices(len(self.transformer.resblocks), indices)
        n = causal_len(tokens) if self.cfg.padding_invariant else tokens.shape[1]
        x = self._add_positions(self.token_embedding(tokens[:, :n]))
        x, outs = self.transformer.forward_intermediates(
            x, take, causal=self.cfg.causal, stop=take[-1] + 1 if intermediates_only else None)
        outs = [self.ln_final(y) for y in outs] if norm else outs
        return outs if intermediates_only else (self.pool(tokens, x), outs)
