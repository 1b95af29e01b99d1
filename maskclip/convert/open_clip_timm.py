"""open_clip's models with a timm image tower (SigLIP, SigLIP2, EVA02-CLIP, ConvNeXt): config fields and weights.

open_clip builds them as ``CustomTextCLIP``: ``visual.trunk.*`` (the timm model) and
``visual.head.*`` (its extra projection) are kept as they are (``maskclip.timm_vision`` uses the
same names), the text tower sits under ``text.`` with native names except a biased projection
(``text.text_projection`` an ``nn.Linear``: ``.weight`` ``[E, W]`` and ``.bias``, native
``text.text_projection`` ``[W, E]`` and ``text.text_projection_bias``), and SigLIP adds ``logit_bias``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from .. import resources
from ..config import ModelConfig, PreprocessConfig, VisionConfig, check_timm_model_name, check_timm_pool
from ..errors import ConfigError, WeightsError
from ..timm_vision import describe
from .infer import square_size
from .rules import StateDict

# vision_cfg fields of a timm tower: "map" = translated; "ignore" = training-only, or overridden by
# the timm model (open_clip reads layers, width, patch_size only for its own ViT).
_TIMM_VISION_FIELDS = {
    "image_size": "map", "timm_model_name": "map", "timm_pool": "map", "timm_proj": "map", "timm_proj_bias": "map",
    "timm_model_pretrained": "ignore", "timm_drop": "ignore", "timm_drop_path": "ignore", "patch_dropout": "ignore",
    "layers": "ignore", "width": "ignore", "patch_size": "ignore", "head_width": "ignore", "mlp_ratio": "ignore",
    "output_tokens": "ignore",
}
_POOLS = {"map": "map", "token": "token", "avg": "avg", "": ""}  # "": the network's own (ConvNeXt only)
_PROJS = {"linear": "linear", "mlp": "mlp", "none": "none", None: None, "": None}


def timm_vision_config(cfg: Mapping[str, Any], embed_dim: int) -> VisionConfig:
    """open_clip ``vision_cfg`` naming ``timm_model_name`` -> ``VisionConfig`` (shape fields from timm)."""
    name = cfg["timm_model_name"]
    try:
        check_timm_model_name(name)
    except ConfigError as e:
        raise ConfigError(f"open_clip vision_cfg.timm_model_name: {e}") from None
    for key in cfg:
        if key not in _TIMM_VISION_FIELDS:
            raise ConfigError(f"open_clip vision_cfg has the field {key!r}, which maskclip does not know for a timm "
                              f"image tower (known: {sorted(_TIMM_VISION_FIELDS)}); refusing to load a model it "
                              "might build wrong")
    pool, proj = cfg.get("timm_pool", "avg"), cfg.get("timm_proj", "linear")
    if pool not in _POOLS:
        raise ConfigError(f"open_clip vision_cfg.timm_pool = {pool!r} is not supported for {name!r} "
                          f"(supported: {sorted(_POOLS)})")
    if proj not in _PROJS:
        raise ConfigError(f"open_clip vision_cfg.timm_proj = {proj!r} is not supported for {name!r} "
                          f"(supported: {[p for p in _PROJS if p]} or null)")
    try:
        check_timm_pool(name, _POOLS[pool])
    except ConfigError as e:
        raise ConfigError(f"open_clip vision_cfg.timm_pool: {e}") from None
    vision = VisionConfig(image_size=square_size(cfg.get("image_size", 224), "open_clip vision_cfg.image_size"),
                          act="gelu", timm_model_name=name, timm_pool=_POOLS[pool], timm_proj=_PROJS[proj],
                          timm_proj_bias=bool(cfg.get("timm_proj_bias", False)))
    return describe(vision, embed_dim)


def timm_vision_cfg(v: VisionConfig) -> Dict[str, Any]:
    """``VisionConfig`` of a timm tower -> open_clip ``vision_cfg``."""
    cfg = {"image_size": v.image_size, "timm_model_name": v.timm_model_name, "timm_model_pretrained": False,
           "timm_pool": v.timm_pool, "timm_proj": v.timm_proj}
    if v.timm_proj_bias:
        cfg["timm_proj_bias"] = True
    return cfg


def family(model_cfg: Mapping[str, Any]) -> str:
    """Which family's preprocessing a repo without ``preprocess_cfg`` gets: ``siglip2`` | ``siglip`` | ``openai``.

    SigLIP: a ``*siglip*`` timm tower. SigLIP2 has the same towers; its text side tells it apart
    (the SigLIP2 tokenizer, its 256k vocabulary, tanh GELU).
    """
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    if "siglip" not in str(vision.get("timm_model_name") or "").lower():
        return "openai"
    siglip2 = ("siglip2" in str(text.get("hf_tokenizer_name") or "").lower() or text.get("vocab_size") == 256000
               or (text.get("act_kwargs") or {}).get("approximate") == "tanh")
    return "siglip2" if siglip2 else "siglip"


def family_preprocess(name: str, image_size: int) -> PreprocessConfig:
    """The bundled preprocessing of a family (``open_clip_models.json``'s ``family_preprocess``)."""
    d = resources.read_json("open_clip_models.json")["family_preprocess"][name]
    return PreprocessConfig(image_size=image_size, mean=tuple(d["mean"]), std=tuple(d["std"]),
                            interpolation=d["interpolation"], resize_mode=d["resize_mode"])


def custom_text_to_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """open_clip ``CustomTextCLIP`` state dict (timm image tower) -> native names.

    The text tower may also sit at the top level (``custom_text`` false): it moves under ``text.``.
    """
    out = {}
    for key, value in sd.items():
        if key.startswith("visual.") or key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(()) if key.startswith("logit_") and value.numel() == 1 else value
        elif key.endswith("attn_mask") or key.endswith("position_ids"):
            continue
        else:
            out[key if key.startswith("text.") else "text." + key] = value
    weight = out.pop("text.text_projection.weight", None)
    if weight is not None:
        out["text.text_projection"] = weight.t().contiguous()
        bias = out.pop("text.text_projection.bias", None)
        if bias is not None:
            out["text.text_projection_bias"] = bias
    if "text.token_embedding.weight" not in out:
        raise WeightsError(f"an open_clip model with a timm image tower needs text.token_embedding.weight; "
                           f"got keys {sorted(sd)[:8]}")
    return out


def native_to_custom_text(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> open_clip ``CustomTextCLIP`` names (the inverse of ``custom_text_to_native``)."""
    out = dict(sd)
    if config.text.proj_bias:
        out["text.text_projection.weight"] = out.pop("text.text_projection").t().contiguous()
        out["text.text_projection.bias"] = out.pop("text.text_projection_bias")
    return out
