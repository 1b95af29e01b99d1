"""transformers' ``CLIPModel``: its keys, its ``config.json`` and its ``preprocessor_config.json``.

Keys: ``vision_model.*`` and ``text_model.*`` with q/k/v projections split (native ``in_proj``
rows are q, k, v in that order), ``visual_projection.weight`` = ``proj.T`` and
``text_projection.weight`` = ``text_projection.T``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import torch

from ..config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from ..errors import ConfigError
from .infer import count_blocks, mlp_ratio, native_arch, square_size, with_logit_scale
from .rules import DROP_ALWAYS, Arch, Rule, StateDict, apply_from_native, apply_to_native, block_table, blocks, ln, pairs

_BLOCK = block_table(
    (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")),
    {f"attn.in_proj_{p}": (tuple(f"self_attn.{x}_proj.{p}" for x in "qkv"), "qkv") for p in ("weight", "bias")},
)


def _transformers_rules(arch: Arch) -> List[Rule]:
    v, t = "vision_model.", "text_model."
    vision = [("conv1.weight", "embeddings.patch_embedding.weight"), ("class_embedding", "embeddings.class_embedding"),
              ("positional_embedding", "embeddings.position_embedding.weight"),
              *ln("ln_pre", "pre_layrnorm"), *ln("ln_post", "post_layernorm")]
    text = [("token_embedding.weight", "embeddings.token_embedding.weight"),
            ("positional_embedding", "embeddings.position_embedding.weight"), *ln("ln_final", "final_layer_norm")]
    return (pairs(vision, "visual.", v) + pairs(text, "text.", t)
            + blocks("visual.transformer.resblocks.", f"{v}encoder.layers.", arch.vision_layers, _BLOCK)
            + blocks("text.transformer.resblocks.", f"{t}encoder.layers.", arch.text_layers, _BLOCK)
            + [Rule("visual.proj", ("visual_projection.weight",), "T"),
               Rule("text.text_projection", ("text_projection.weight",), "T"),
               Rule("logit_scale", ("logit_scale",))])


_ACTS = ("quick_gelu", "gelu")  # transformers' "gelu" is the exact (erf) GELU, as torch's nn.GELU
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's codes, as CLIPImageProcessor stores them
_TEXT_DEFAULTS = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                     "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                     "layer_norm_eps": 1e-5, "eos_token_id": 49407}
_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                       "num_channels": 3}


def transformers_to_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers ``CLIPModel`` state dict -> native (q/k/v fused into ``in_proj``, projections transposed)."""
    arch = Arch(count_blocks(sd, "vision_model.encoder.layers."), count_blocks(sd, "text_model.encoder.layers."))
    return apply_to_native(sd, _transformers_rules(arch), "transformers", DROP_ALWAYS)


def native_to_transformers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> transformers ``CLIPModel`` names (needs ``ln_pre`` and no patch bias)."""
    return apply_from_native(sd, _transformers_rules(native_arch(sd, "text.")), "transformers")


def _sub_config(hf_config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> Dict[str, Any]:
    sub = hf_config.get(name) or hf_config.get(f"{name}_dict") or {}
    if not isinstance(sub, Mapping):
        raise ConfigError(f"transformers config {name} must be an object; got {type(sub).__name__}")
    merged = {**defaults, **{k: v for k, v in sub.items() if k in defaults and v is not None}}
    if merged["hidden_act"] not in _ACTS:
        raise ConfigError(f"transformers {name}.hidden_act = {merged['hidden_act']!r} is not supported "
                          f"(supported: {list(_ACTS)})")
    return merged


def from_transformers(hf_config: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> Tuple[ModelConfig, StateDict]:
    """A transformers ``CLIPModel`` ``config.json`` dict + its state dict -> native.

    Missing config fields take transformers' own defaults. Text pooling: transformers pools at
    the first ``eos_token_id`` (or at the argmax when it is the legacy 2); maskclip pools at the
    argmax, the same token when ``eos_token_id`` is the largest id, so any other id is refused.
    """
    if not isinstance(hf_config, Mapping) or hf_config.get("model_type") != "clip":
        got = hf_config.get("model_type") if isinstance(hf_config, Mapping) else type(hf_config).__name__
        raise ConfigError(f"expected a transformers CLIPModel config (model_type 'clip'); got {got!r}")
    t, v = _sub_config(hf_config, "text_config", _TEXT_DEFAULTS), _sub_config(hf_config, "vision_config", _VISION_DEFAULTS)
    if t["eos_token_id"] not in (2, t["vocab_size"] - 1):
        raise ConfigError(f"transformers text_config.eos_token_id = {t['eos_token_id']} is not supported: maskclip "
                          f"pools at the largest token id ({t['vocab_size'] - 1}), the end-of-text token of CLIP's tokenizer")
    if v["num_channels"] != 3:
        raise ConfigError(f"transformers vision_config.num_channels = {v['num_channels']}; maskclip reads RGB (3)")
    image_size = square_size(v["image_size"], "transformers vision_config.image_size")
    config = ModelConfig(
        embed_dim=hf_config.get("projection_dim") or 512,
        vision=VisionConfig(
            image_size=image_size, patch_size=square_size(v["patch_size"], "transformers vision_config.patch_size"),
            width=v["hidden_size"], layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
            mlp_ratio=mlp_ratio(v["hidden_size"], v["intermediate_size"], "vision_config"),
            act=v["hidden_act"], norm_eps=float(v["layer_norm_eps"])),
        text=TextConfig(
            context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], width=t["hidden_size"],
            layers=t["num_hidden_layers"], heads=t["num_attention_heads"],
            mlp_ratio=mlp_ratio(t["hidden_size"], t["intermediate_size"], "text_config"),
            act=t["hidden_act"], norm_eps=float(t["layer_norm_eps"])),
        preprocess=PreprocessConfig(image_size=image_size),
        logit_scale_init=float(hf_config.get("logit_scale_init_value", 2.6592)),
    ).validate()
    return config, with_logit_scale(transformers_to_native(sd))


def to_transformers(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """Native -> (transformers ``config.json`` dict, ``CLIPModel`` state dict).

    ``transformers.CLIPModel.from_pretrained(folder)`` then computes the same features. Refuses
    (``ConfigError``) what ``CLIPModel`` cannot express: no ``ln_pre``, a patch bias, mean
    pooling, fixed sin-cos positions (transformers would resample them, not recompute them).
    """
    v, t = config.vision, config.text
    for ok, what in ((v.ln_pre, "its pre_layrnorm is mandatory; this model has ln_pre=False"),
                     (not v.patch_bias, "its patch embedding has no bias; this model has patch_bias=True"),
                     (v.pool == "token", f"it pools the class token; this model's vision pool is {v.pool!r}"),
                     (v.pos_embed == "learned", f"its position embedding is learned; this model's is {v.pos_embed!r}"),
                     (v.stem == "patch", f"its patch embedding is one projection; this model's vision stem is {v.stem!r}")):
        if not ok:
            raise ConfigError(f"cannot export to transformers CLIPModel: {what}")
    text_config = {
        "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio), "num_hidden_layers": t.layers,
        "num_attention_heads": t.heads, "max_position_embeddings": t.context_length, "vocab_size": t.vocab_size,
        "hidden_act": t.act, "layer_norm_eps": t.norm_eps, "projection_dim": config.embed_dim,
        "bos_token_id": t.vocab_size - 2, "eos_token_id": t.vocab_size - 1, "pad_token_id": 1,
        "model_type": "clip_text_model",
    }
    vision_config = {
        "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.layers,
        "num_attention_heads": v.heads, "image_size": v.image_size, "patch_size": v.patch_size, "num_channels": 3,
        "hidden_act": v.act, "layer_norm_eps": v.norm_eps, "projection_dim": config.embed_dim,
        "model_type": "clip_vision_model",
    }
    hf_config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": config.embed_dim,
                 "logit_scale_init_value": config.logit_scale_init, "text_config": text_config,
                 "vision_config": vision_config}
    return hf_config, native_to_transformers(sd)


def transformers_preprocessor_config(config: ModelConfig) -> Dict[str, Any]:
    """``preprocessor_config.json`` for transformers' ``CLIPImageProcessor`` matching ``config.preprocess``."""
    pp = config.preprocess
    s = pp.image_size
    if pp.resize_mode == "longest":
        raise ConfigError("transformers' CLIPImageProcessor cannot pad to a square (preprocess resize_mode "
                          "'longest'); save this model as format='maskclip' or 'open_clip'")
    squash = pp.resize_mode == "squash"
    return {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_convert_rgb": True, "do_resize": True,
        "size": {"height": s, "width": s} if squash else {"shortest_edge": s},
        "resample": _RESAMPLE[pp.interpolation], "do_center_crop": not squash,
        "crop_size": {"height": s, "width": s}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(pp.mean), "image_std": list(pp.std),
    }


