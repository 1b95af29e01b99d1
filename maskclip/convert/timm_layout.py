"""timm-style ViT keys: timm's CLIP ViTs (vision only), SLIP and RILS (a timm/MAE ViT under ``visual.``).

Native -> timm: ``conv1`` -> ``patch_embed.proj``, ``class_embedding`` [D] -> ``cls_token`` [1, 1, D],
``positional_embedding`` [N, D] -> ``pos_embed`` [1, N, D], ``ln_pre`` -> ``norm_pre``, ``resblocks`` ->
``blocks`` (``norm1``/``norm2``, ``attn.qkv``, ``attn.proj``, ``mlp.fc1``/``fc2``), ``ln_post`` -> ``norm``.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Tuple

import torch

from ..config import ModelConfig
from ..errors import ConfigError, WeightsError
from ..layers import sincos_2d
from .infer import Act, count_blocks, infer_config, with_logit_scale
from .openai_layout import logit_scale_scalar, openai_text_rules, text_tower_to_native
from .rules import DROP_ALWAYS, Arch, Rule, StateDict, apply_from_native, apply_to_native, block_table, blocks, ln, pairs

_TIMM_RENAMES = (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.in_proj_weight", "attn.qkv.weight"),
                 ("attn.in_proj_bias", "attn.qkv.bias"), ("attn.out_proj", "attn.proj"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_TIMM_BLOCK = block_table(_TIMM_RENAMES)
_RILS_BLOCK = block_table(_TIMM_RENAMES, {"attn.in_proj_bias": (("attn.q_bias", "attn.v_bias"), "qv")})

# SLIP's ViT-S/16 is timm's vit_small with 12 heads at width 384 (MoCo v3's), not width // 64.
_SLIP_HEADS = {384: 12}
_SLIP_DROP = DROP_ALWAYS + ("image_mlp.*",)
_RILS_DROP = DROP_ALWAYS + ("visual.decoder_*", "visual.mask_token")


def _timm_vision_rules(arch: Arch, other: str, block=_TIMM_BLOCK) -> List[Rule]:
    """Native ``visual.*`` (without ``proj``) <-> timm ViT names under ``other``."""
    names = [("conv1.weight", "patch_embed.proj.weight"), *ln("ln_post", "norm")]
    if arch.patch_bias:
        names.append(("conv1.bias", "patch_embed.proj.bias"))
    if arch.ln_pre:
        names += ln("ln_pre", "norm_pre")
    return (pairs(names, "visual.", other)
            + [Rule("visual.class_embedding", (f"{other}cls_token",), "cls"),
               Rule("visual.positional_embedding", (f"{other}pos_embed",), "pos")]
            + blocks("visual.transformer.resblocks.", f"{other}blocks.", arch.vision_layers, block))


def _timm_rules(arch: Arch) -> List[Rule]:
    return _timm_vision_rules(arch, "") + [Rule("visual.proj", ("head.weight",), "T")]


def _slip_rules(arch: Arch, block=_TIMM_BLOCK) -> List[Rule]:
    return (_timm_vision_rules(arch, "visual.", block)
            + [Rule("visual.proj", ("image_projection",)), Rule("logit_scale", ("logit_scale",))]
            + openai_text_rules(arch.text_layers))


def _rils_rules(arch: Arch) -> List[Rule]:
    return _slip_rules(arch, _RILS_BLOCK)


def _timm_arch(sd: Mapping[str, torch.Tensor], prefix: str, text_layers: int) -> Arch:
    return Arch(count_blocks(sd, f"{prefix}blocks."), text_layers, f"{prefix}norm_pre.weight" in sd,
                f"{prefix}patch_embed.proj.bias" in sd)


def _check_pool(config: ModelConfig, pool: str, layout: str) -> None:
    if config.vision.pool != pool:
        raise ConfigError(f"{layout} pools the image tower with {pool!r}; this model's vision pool is "
                          f"{config.vision.pool!r}, which that layout cannot express")


# --- timm ----------------------------------------------------------------------------------

def from_timm(vision_sd: Mapping[str, torch.Tensor], text_sd: Mapping[str, torch.Tensor], *, act: Act = None,
              vision_heads: Optional[int] = None, text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """A timm CLIP ViT (vision only, ``head`` = the image projection) + a text tower -> native.

    ``text_sd``: an OpenAI/open_clip or maskclip state dict; its text tower and ``logit_scale`` are
    used, any ``visual.*`` keys ignored. timm's ``head.bias`` must be zero (CLIP has none).
    Defaults: vision GELU (timm's ``*_clip_*`` models; pass ``act`` for the ``_quickgelu_`` ones),
    LayerNorm eps 1e-5 with ``norm_pre`` (CLIP ViTs) and 1e-6 without (timm's plain ViTs).
    """
    if "head.weight" not in vision_sd:
        raise WeightsError("the timm state dict has no head.weight: a CLIP image tower needs its projection "
                           "(timm's head, num_classes = the embedding size)")
    bias = vision_sd.get("head.bias")
    if bias is not None and torch.count_nonzero(bias):
        raise WeightsError("the timm head has a non-zero bias; CLIP's image projection has none, so maskclip "
                           "cannot represent this head")
    text = text_tower_to_native(text_sd)
    arch = _timm_arch(vision_sd, "", count_blocks(text, "text.transformer.resblocks."))
    vision = apply_to_native(vision_sd, _timm_rules(arch), "timm", ("head.bias",))
    native = with_logit_scale({**vision, **text})
    eps = 1e-5 if arch.ln_pre else 1e-6
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=eps, default_act=("gelu", "quick_gelu"))
    return config, native


def native_to_timm(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The image tower of a native model -> a timm CLIP ViT state dict (``head`` = projection, zero bias)."""
    _check_pool(config, "token", "timm (global_pool='token')")
    vision = {k: v for k, v in sd.items() if k.startswith("visual.")}
    out = apply_from_native(vision, _timm_rules(Arch.of(config)), "timm")
    out["head.bias"] = torch.zeros(out["head.weight"].shape[0], dtype=out["head.weight"].dtype)
    return out


# --- SLIP ----------------------------------------------------------------------------------

def from_slip(sd: Mapping[str, torch.Tensor], *, act: Act = None, vision_heads: Optional[int] = None,
              text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """A SLIP/CLIP checkpoint of facebookresearch/SLIP (after ``unwrap_checkpoint``) -> native.

    Vision: timm ``vit_*_patch16_224`` (GELU, no ``norm_pre``, LayerNorm eps 1e-6, class token
    after the final norm) under ``visual.``, projected by ``image_projection``; text: OpenAI's
    names with QuickGELU. The SimCLR head ``image_mlp.*`` is dropped.
    """
    arch = _timm_arch(sd, "visual.", count_blocks(sd, "transformer.resblocks."))
    native = logit_scale_scalar(apply_to_native(sd, _slip_rules(arch), "slip", _SLIP_DROP))
    width = native["visual.conv1.weight"].shape[0]
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=1e-6,
                          default_act=("gelu", "quick_gelu"), default_vision_heads=_SLIP_HEADS.get(width))
    return config, with_logit_scale(native)


def native_to_slip(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> SLIP's names (the structure follows ``config``: ``norm_pre``/patch bias only if it has them)."""
    _check_pool(config, "token", "SLIP")
    return apply_from_native(sd, _slip_rules(Arch.of(config)), "slip")


# --- RILS ----------------------------------------------------------------------------------

def from_rils(sd: Mapping[str, torch.Tensor], *, act: Act = None, vision_heads: Optional[int] = None,
              text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """A RILS checkpoint (hustvl/RILS ``models.RILS``, after ``unwrap_checkpoint``) -> native.

    Vision: MAE ViT under ``visual.`` (``qkv`` without bias + ``q_bias``/``v_bias``, the key bias
    fixed at 0; GELU; LayerNorm eps 1e-6; no ``norm_pre``); the image embedding is the mean of the
    patch tokens after ``visual.norm``, @ ``image_projection``. The MAE decoder is dropped. The
    position embedding is kept as stored, and marked ``sincos`` when it equals MAE's fixed 2-D
    sin-cos table (so other input sizes recompute it rather than resample it).
    """
    arch = _timm_arch(sd, "visual.", count_blocks(sd, "transformer.resblocks."))
    native = logit_scale_scalar(apply_to_native(sd, _rils_rules(arch), "rils", _RILS_DROP))
    pos = native["visual.positional_embedding"]
    grid = math.isqrt(pos.shape[0] - 1)
    is_sincos = grid * grid == pos.shape[0] - 1 and pos.shape[1] % 4 == 0 and torch.allclose(
        pos.float(), sincos_2d(pos.shape[1], (grid, grid)), atol=1e-5)
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=1e-6, pool="mean",
                          pos_embed="sincos" if is_sincos else "learned", default_act=("gelu", "quick_gelu"))
    return config, with_logit_scale(native)


def native_to_rils(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> RILS's names (encoder only; the MAE decoder is not part of a dual encoder)."""
    _check_pool(config, "mean", "RILS")
    return apply_from_native(sd, _rils_rules(Arch.of(config)), "rils")
