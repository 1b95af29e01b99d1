"""Training-free dense (per-patch) features in the joint image-text space.

Every method runs the image tower unchanged up to its last block, then replaces only the
last block (ResCLIP also keeps the attention maps of some earlier blocks), and finally applies
``ln_post`` and the projection to every patch token (the class token is dropped). timm towers
(SigLIP, EVA02: ``maskclip.timm_vision``) run the same code on views of their blocks (q/k norms,
rotary embedding, layer scale included), with their prefix tokens dropped and their own head per
patch (SigLIP's attention pool in its per-patch form). ConvNeXt towers (``maskclip.timm_conv``) have no
attention: only ``vanilla``, their last stage's feature map through the head at every location.

- ``vanilla``: the last block as is (the same per-token computation as the pooled path).
- ``zhou`` (Zhou, Loy and Dai, "Extract Free Dense Labels from CLIP", ECCV 2022, which calls it
  MaskCLIP): identity attention, i.e. the value path ``out_proj(v(ln_1 x))``, plus the residual,
  then the MLP with its residual.
- ``sclip`` (Wang et al., "SCLIP", ECCV 2024): attention ``softmax(q q^T) + softmax(k k^T)``;
  residual and MLP kept.
- ``clearclip`` (Lan et al., "ClearCLIP", ECCV 2024): ``q q^T`` attention, no residual, no MLP.
- ``naclip`` (Hajimiri, Ben Ayed and Dolz, "Pay Attention to Your Neighbours", WACV 2025):
  ``softmax(k k^T / sqrt(d) + G)`` attention, ``G`` a Gaussian of the patch-grid distance
  (std ``NACLIP_STD`` patches, peak 1, zero for the class token's row and column), added to the
  logits before the softmax; no residual, no MLP.
- ``resclip`` (Yang et al., "ResCLIP", CVPR 2025), its residual cross-correlation self-attention
  (RCS): the NACLIP attention of the last block blended with the mean ``softmax(q k^T / sqrt(d))``
  of intermediate blocks (``rcs_layers``), ``tau * ((1 - lam) * A_naclip + lam * A_mean)``, over
  the last block's values; no residual, no MLP. Its semantic feedback refinement is ``maskclip.resclip_sfr``.
- ``proxyclip`` (Lan et al., "ProxyCLIP", ECCV 2024): the last block's attention is a proxy
  model's patch affinity (``proxy_attention``: cosine similarities of its normalised patch tokens,
  ``(s - beta * mean(s)) * gamma``, negatives masked out, softmax) over CLIP's values resized to the
  proxy's grid; no class token, no residual, no MLP. The features come out on the proxy's grid
  (DINO ViT-B/8 on a patch-16 CLIP: twice as fine). See ``maskclip.proxy``.

``"maskclip"`` is still accepted for ``zhou`` (``ALIASES``; the results are identical). It was
renamed because MaskCLIP also names Dong et al.'s training recipe (``maskclip.train``), a
different paper. Listings and ``--method`` choices show the names in ``METHODS``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .errors import InputError
from .layers import Block
from .towers import VisionTower

METHODS = ("vanilla", "zhou", "sclip", "clearclip", "naclip", "resclip")
# Methods that need a second model (``proxy=``): accepted by ``resolve_method`` but not in ``METHODS``,
# which lists what runs on the CLIP model alone, at its patch grid (what the CLI and the
# synthetic benchmark offer).
PROXY_METHODS = ("proxyclip",)
ALIASES = {"maskclip": "zhou"}
# The methods before naclip / resclip: ``maskclip.eval.zero_shot_segmentation``'s default, so scripts
# and result files made before keep their keys and their running time.
ORIGINAL_METHODS = METHODS[:4]

NACLIP_STD = 5.0  # sinahmr/NACLIP naclip.py (gaussian_std=5.) and ResCLIP's default
# ResCLIP's (tau, lambda), attn_rcs_weights in yvhangyang/ResCLIP configs/cfg_ade20k.py (also VOC21, Context60;
# the other benchmarks' configs use lambda 0.2 to 0.6).
RESCLIP_TAU, RESCLIP_LAMBDA = 2.0, 0.3
PROXYCLIP_BETA, PROXYCLIP_GAMMA = 1.2, 3.0  # mc-lan/ProxyCLIP proxyclip_segmentor.py defaults

# Preprocessed images [B, 3, H, W] -> the proxy's patch tokens [B, C, h, w] (``proxy.Proxy.features``).
ProxyFeatures = Callable[[torch.Tensor], torch.Tensor]


def canonical_name(method):
    """An alias -> its name in ``METHODS``; anything else unchanged (``resolve_method`` checks it)."""
    return ALIASES.get(method, method) if isinstance(method, str) else method


def resolve_method(method, visual=None) -> str:
    """A dense method name or alias -> its name in ``METHODS`` or ``PROXY_METHODS``; else ``InputError``.

    With ``visual`` (an image tower), also ``InputError`` for a method the tower cannot run: a tower
    with ``dense_methods`` (ConvNeXt: ``vanilla`` only) runs only those.
    """
    name = canonical_name(method)
    if name not in METHODS and name not in PROXY_METHODS:
        raise InputError(f"dense method must be one of {list(METHODS + PROXY_METHODS)}; got {method!r}")
    allowed = tower_methods(visual)
    if allowed is not None and name not in allowed:
        raise InputError(f"the image tower {visual.cfg.timm_model_name!r} has no attention for the dense method "
                         f"{method!r} to change; its dense methods: {list(allowed)}")
    return name


def default_method(visual) -> str:
    """``segment``'s default dense method for an image tower: ``clearclip``, or a tower's only method."""
    allowed = tower_methods(visual)
    return "clearclip" if allowed is None else allowed[0]


def tower_methods(visual) -> Optional[Tuple[str, ...]]:
    """The dense methods a tower computes itself (its ``dense_methods``, served by its ``feature_map``),
    or ``None`` for a ViT tower, on which this module runs every method. The one test of which kind a
    tower is, for choosing, checking and computing dense features alike."""
    return getattr(visual, "dense_methods", None)


def neighbourhood_bias(grid: Tuple[int, int], std: float, dtype: torch.dtype, device, prefix: int = 1) -> torch.Tensor:
    """NACLIP's attention bias for a ``(gh, gw)`` patch grid: ``[P + N, P + N]``, N = gh * gw.

    Entry ``(i, j)`` for patches ``i``, ``j`` (row-major) is ``exp(-|p_i - p_j|^2 / (2 std^2))``, the
    grid positions' squared distance in patches; the rows and columns of the ``prefix`` tokens
    (P: the class token; none for SigLIP, reg tokens too for some timm towers) are zero.
    """
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dist2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    bias = torch.zeros(gh * gw + prefix, gh * gw + prefix, dtype=dtype, device=device)
    bias[prefix:, prefix:] = torch.exp(-dist2.to(dtype) / (2 * std ** 2))
    return bias


def attention_map(q: torch.Tensor, k: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias)``: q, k ``[B, heads, N, d]`` -> ``[B, heads, N, N]``."""
    logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return torch.softmax(logits if bias is None else logits + bias, dim=-1)


def rcs_layers(depth: int) -> range:
    """The blocks whose attention ResCLIP's RCS averages, for a tower of ``depth`` blocks.

    The reference takes blocks 6 to 9 (1-based) of ViT-B/16's 12, i.e. ``[5, 9)``; other depths
    keep those fractions (ViT-L/14: ``[10, 18)``), always at least one block before the last.
    """
    stop = min(round(depth * 9 / 12), depth - 1)
    return range(min(round(depth * 5 / 12), stop - 1), stop)


def rcs_tokens(visual: VisionTower, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], torch.Tensor]:
    """The tower up to its last block for ResCLIP: ``[B, 3, H, W]`` -> the last block's input tokens
    ``[B, P + N, width]``, the grid, and the mean attention of ``rcs_layers`` ``[B, heads, P + N, P + N]``."""
    tokens, grid = visual.embed(x)
    blocks = visual.dense_blocks(grid)
    layers, total = rcs_layers(len(blocks)), 0
    for i, block in enumerate(blocks[:-1]):
        if i not in layers:
            tokens = block(tokens)
            continue
        q, k, v = block.attn.qkv(block.ln_1(tokens))  # the block itself, with its attention map kept
        a = attention_map(q, k)
        total = total + a  # a running sum: one N^2 map kept, not one per block
        tokens = tokens + block.attn.merge_heads(a @ v)
        tokens = tokens + block.mlp(block.ln_2(tokens))
    return tokens, grid, total / len(layers)


def rcs_blend(a: torch.Tensor, rcs: torch.Tensor) -> torch.Tensor:
    """RCS: the last block's attention ``a`` blended with the mean ``rcs`` of ``rcs_tokens`` (same shapes)."""
    return RESCLIP_TAU * ((1 - RESCLIP_LAMBDA) * a + RESCLIP_LAMBDA * rcs)


def rcs_last_block(block: Block, x: torch.Tensor, grid: Tuple[int, int], rcs: torch.Tensor,
                   prefix: int = 1) -> torch.Tensor:
    """The last block under ResCLIP's RCS: ``rcs_tokens``' tokens ``[B, P + N, width]`` (``prefix`` = P),
    grid and mean attention -> ``[B, P + N, width]`` (NACLIP's attention blended with ``rcs``; no residual, no MLP)."""
    _, k, v = block.attn.qkv(block.ln_1(x))
    a = attention_map(k, k, neighbourhood_bias(grid, NACLIP_STD, k.dtype, k.device, prefix))
    return block.attn.merge_heads(rcs_blend(a, rcs) @ v)


def proxy_attention(feats: torch.Tensor, beta: float = PROXYCLIP_BETA, gamma: float = PROXYCLIP_GAMMA) -> torch.Tensor:
    """ProxyCLIP's attention from proxy patch tokens ``[B, C, h, w]`` -> ``[B, 1, h * w, h * w]`` (shared by the heads).

    The mean is over each image's similarities (the reference's over the batch, which it runs one
    image at a time).
    """
    f = F.normalize(feats.flatten(2), dim=1)  # [B, C, M]
    sim = f.transpose(1, 2) @ f
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    return torch.softmax(sim.masked_fill(sim < 0, float("-inf")), dim=-1)[:, None]


def _proxyclip(block: Block, x: torch.Tensor, grid: Tuple[int, int], feats: torch.Tensor,
               prefix: int = 1) -> torch.Tensor:
    """The last block under ProxyCLIP: tokens ``[B, P + N, width]`` on ``grid`` (``prefix`` = P) and proxy
    tokens ``[B, C, h, w]`` -> patch tokens ``[B, h * w, width]`` on the proxy's grid."""
    attn = block.attn
    _, _, v = attn.qkv(block.ln_1(x))
    B, H, _, d = v.shape
    h, w = feats.shape[-2:]
    v = v[:, :, prefix:].transpose(-1, -2).reshape(B * H, d, *grid)
    v = F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False)
    v = v.reshape(B, H, d, h * w).transpose(-1, -2)
    return attn.merge_heads(proxy_attention(feats).to(v.dtype) @ v)


def last_block(block: Block, x: torch.Tensor, method: str, grid: Tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """The last block under ``method``, a name in ``METHODS`` but ``resclip`` (which needs the
    earlier blocks' attention) and ``proxyclip`` (which needs the proxy): ``[B, P + N, width]`` on a
    ``grid`` of patches after ``prefix`` = P tokens -> ``[B, P + N, width]``."""
    if method == "vanilla":
        return block(x)
    attn = block.attn
    q, k, v = attn.qkv(block.ln_1(x))
    if method == "naclip":
        bias = neighbourhood_bias(grid, NACLIP_STD, k.dtype, k.device, prefix)
        return attn.merge_heads(F.scaled_dot_product_attention(k, k, v, attn_mask=bias))
    if method == "zhou":
        x = x + attn.merge_heads(v)
        return x + block.mlp(block.ln_2(x))
    if method == "sclip":
        # (softmax(qq) + softmax(kk)) @ v == softmax(qq) @ v + softmax(kk) @ v: two fused calls.
        out = F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
        x = x + attn.merge_heads(out)
        return x + block.mlp(block.ln_2(x))
    return attn.merge_heads(F.scaled_dot_product_attention(q, q, v))  # clearclip


def dense_features(visual: VisionTower, x: torch.Tensor, method: str = "vanilla",
                   proxy: Optional[ProxyFeatures] = None) -> torch.Tensor:
    """Preprocessed images ``[B, 3, H, W]`` -> patch features ``[B, E, H / p, W / p]``.

    ``method`` must be a name in ``METHODS`` (``resolve_method`` turns user input into one):
    inputs are checked by the public ``DualEncoder.dense_features``, not again here.
    ``proxyclip`` needs ``proxy`` and returns features on the proxy's grid ``[B, E, h, w]``.
    ``visual``: a ``VisionTower`` or a ``maskclip.timm_vision.TimmVisionTower`` (same interface), or a
    ``maskclip.timm_conv.TimmConvTower`` (``vanilla`` only: its per-location feature map).
    """
    if tower_methods(visual) is not None:
        return visual.feature_map(x)
    prefix, depth = visual.num_prefix_tokens, visual.cfg.layers
    if method == "resclip":
        tokens, (gh, gw), rcs = rcs_tokens(visual, x)
        last = visual.dense_blocks((gh, gw))[-1]
        tokens = rcs_last_block(last, tokens, (gh, gw), rcs, prefix)[:, prefix:]
    elif method == "proxyclip":
        tokens, grid = visual.forward_tokens(x, stop=depth - 1)
        proxy_feats = proxy(x)
        last = visual.dense_blocks(grid)[-1]
        tokens, (gh, gw) = _proxyclip(last, tokens, grid, proxy_feats, prefix), proxy_feats.shape[-2:]
    else:
        tokens, (gh, gw) = visual.forward_tokens(x, stop=depth - 1)
        last = visual.dense_blocks((gh, gw))[-1]
        tokens = last_block(last, tokens, method, (gh, gw), prefix)[:, prefix:]
    feats = visual.project_patches(tokens)  # [B, N, E]
    return feats.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)
