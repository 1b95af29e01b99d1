"""open_clip's ``CLIP``: its config fields, its preprocessing, and its weights (OpenAI's key layout).

An ``open_clip_config.json`` is ``{"model_cfg": {embed_dim, quick_gelu, vision_cfg, text_cfg, ...},
"preprocess_cfg": {mean, std, interpolation, resize_mode}}``. Every field is either translated,
ignored (training-only, or unused by this kind of tower) or refused unless it has open_clip's
default: a config that would make maskclip compute something else never loads.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from ..config import RESIZE_MODES, SUPPORTED_TIMM_MODELS, ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from ..errors import ConfigError
from .detect import detect_layout
from .infer import DEFAULT_LOGIT_SCALE, square_size, with_logit_scale
from .open_clip_timm import (custom_text_to_native, family, family_preprocess, native_to_custom_text,
                             timm_vision_cfg, timm_vision_config)
from .openai_layout import checked_native, native_to_openai, openai_to_native
from .rules import StateDict

# open_clip config fields: ("map",) = translated below; ("ignore",) = training-only or unused by
# this kind of tower; ("default", value) = anything else changes the model and is refused.
_VISION_FIELDS = {
    "image_size": ("map",), "layers": ("map",), "width": ("map",), "head_width": ("map",), "mlp_ratio": ("map",),
    "patch_size": ("map",), "no_ln_pre": ("map",), "pos_embed_type": ("map",), "pool_type": ("map",),
    "norm_kwargs": ("map",), "patch_dropout": ("ignore",), "output_tokens": ("ignore",),
    "attn_pooler_queries": ("ignore",), "attn_pooler_heads": ("ignore",),
    "ls_init_value": ("default", None), "attentional_pool": ("default", False),
    "final_ln_after_pool": ("default", False), "act_kwargs": ("default", None), "block_type": ("default", None),
    "qk_norm": ("default", False), "scaled_cosine_attn": ("default", False), "scale_heads": ("default", False),
    "scale_attn_inner": ("default", False), "scale_attn": ("default", False), "scale_fc": ("default", False),
    "timm_model_name": ("default", None), "timm_model_pretrained": ("ignore",), "timm_pool": ("ignore",),
    "timm_proj": ("ignore",), "timm_proj_bias": ("ignore",), "timm_drop": ("ignore",), "timm_drop_path": ("ignore",),
}
_TEXT_FIELDS = {
    "context_length": ("map",), "vocab_size": ("map",), "width": ("map",), "heads": ("map",), "layers": ("map",),
    "mlp_ratio": ("map",), "norm_kwargs": ("map",), "pad_id": ("ignore",), "eos_id": ("ignore",),
    "output_tokens": ("ignore",), "hf_model_pretrained": ("ignore",), "hf_proj_type": ("ignore",),
    "hf_pooler_type": ("ignore",), "pool_type": ("map",), "proj_type": ("default", "linear"),
    "hf_tokenizer_name": ("map",), "tokenizer_mode": ("default", None), "tokenizer_kwargs": ("map",),
    "ls_init_value": ("default", None), "embed_cls": ("default", False), "no_causal_mask": ("map",),
    "final_ln_after_pool": ("default", False), "proj_bias": ("map",), "act_kwargs": ("map",),
    "block_type": ("default", None), "qk_norm": ("default", False), "scaled_cosine_attn": ("default", False),
    "scale_heads": ("default", False), "scale_attn_inner": ("default", False), "scale_attn": ("default", False),
    "scale_fc": ("default", False), "hf_model_name": ("default", None),
}
_MODEL_FIELDS = {
    "embed_dim": ("map",), "quick_gelu": ("map",), "vision_cfg": ("map",), "text_cfg": ("map",),
    "custom_text": ("ignore",), "init_logit_scale": ("map",), "nonscalar_logit_scale": ("ignore",),
    "output_dict": ("ignore",), "init_logit_bias": ("map",), "multimodal_cfg": ("default", None),
}
_TEXT_POOLS = ("argmax", "last")
_DEFAULT_BLOCK_TYPES = (None, "default")
SUPPORTED_FAMILIES = ("maskclip builds open_clip's ViT CLIPs (its own towers: OpenAI, LAION, DFN, MetaCLIP weights) and "
                      f"timm image towers {list(SUPPORTED_TIMM_MODELS)} (SigLIP, SigLIP2, EVA02-CLIP); not ResNets, "
                      "ConvNeXt, CoCa, MobileCLIP or Hugging Face text towers")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def _check_fields(cfg: Mapping[str, Any], spec: Mapping[str, tuple], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"open_clip {where} must be an object; got {type(cfg).__name__}")
    for key, value in cfg.items():
        rule = spec.get(key)
        if rule is None:
            raise ConfigError(f"open_clip {where} has the field {key!r}, which maskclip does not know; refusing "
                              f"to load a model it might build wrong. {SUPPORTED_FAMILIES}")
        if rule[0] != "default":
            continue
        default = rule[1]
        ok = value in _DEFAULT_BLOCK_TYPES if key == "block_type" else (
            value == default or (default in (None, False) and not value))
        if not ok:
            raise ConfigError(f"open_clip {where}.{key} = {value!r} is not supported by maskclip (supported: "
                              f"{default!r}); this model cannot be loaded without changing what it computes. "
                              f"{SUPPORTED_FAMILIES}")


def _eps(cfg: Mapping[str, Any], where: str) -> float:
    kw = cfg.get("norm_kwargs") or {}
    if set(kw) - {"eps"}:
        raise ConfigError(f"open_clip {where}.norm_kwargs {kw} is not supported; maskclip reads only 'eps'")
    return float(kw.get("eps", 1e-5))


def _vision_config(cfg: Mapping[str, Any], act: str) -> VisionConfig:
    _check_fields(cfg, _VISION_FIELDS, "vision_cfg")
    layers = cfg.get("layers", 12)
    if isinstance(layers, (list, tuple)):
        raise ConfigError(f"open_clip vision_cfg.layers = {list(layers)} describes a ResNet; maskclip supports "
                          f"ViT image towers only. {SUPPORTED_FAMILIES}")
    width, head_width = cfg.get("width", 768), cfg.get("head_width", 64)
    pool = {"tok": "token", "avg": "mean"}.get(cfg.get("pool_type", "tok"))
    pos = {"learnable": "learned", "sin_cos_2d": "sincos"}.get(cfg.get("pos_embed_type", "learnable"))
    if pool is None:
        raise ConfigError(f"open_clip vision_cfg.pool_type = {cfg['pool_type']!r} is not supported (supported: 'tok', 'avg')")
    if pos is None:
        raise ConfigError(f"open_clip vision_cfg.pos_embed_type = {cfg['pos_embed_type']!r} is not supported "
                          "(supported: 'learnable', 'sin_cos_2d')")
    if width % head_width:
        raise ConfigError(f"open_clip vision_cfg.width {width} is not a multiple of head_width {head_width}")
    return VisionConfig(
        image_size=square_size(cfg.get("image_size", 224), "open_clip vision_cfg.image_size"),
        patch_size=square_size(cfg.get("patch_size", 16), "open_clip vision_cfg.patch_size"), width=width, layers=layers,
        heads=width // head_width, mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=act,
        norm_eps=_eps(cfg, "vision_cfg"), ln_pre=not cfg.get("no_ln_pre", False), pool=pool, pos_embed=pos)


def _text_act(cfg: Mapping[str, Any], act: str) -> str:
    """open_clip's ``act_kwargs``: ``{"approximate": "tanh"}`` makes GELU tanh-approximated (SigLIP2)."""
    kw = cfg.get("act_kwargs")
    if not kw:
        return act
    if kw != {"approximate": "tanh"} or act != "gelu":
        raise ConfigError(f"open_clip text_cfg.act_kwargs = {kw!r} (quick_gelu {act == 'quick_gelu'}) is not supported "
                          "(supported: {'approximate': 'tanh'} with plain GELU)")
    return "gelu_tanh"


def _text_config(cfg: Mapping[str, Any], act: str) -> TextConfig:
    _check_fields(cfg, _TEXT_FIELDS, "text_cfg")
    pool = cfg.get("pool_type", "argmax")
    if pool not in _TEXT_POOLS:
        raise ConfigError(f"open_clip text_cfg.pool_type = {pool!r} is not supported (supported: {list(_TEXT_POOLS)})")
    return TextConfig(context_length=cfg.get("context_length", 77), vocab_size=cfg.get("vocab_size", 49408),
                      width=cfg.get("width", 512), layers=cfg.get("layers", 12), heads=cfg.get("heads", 8),
                      mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=_text_act(cfg, act),
                      norm_eps=_eps(cfg, "text_cfg"), causal=not cfg.get("no_causal_mask", False), pool=pool,
                      proj_bias=bool(cfg.get("proj_bias", False)), hf_tokenizer_name=cfg.get("hf_tokenizer_name"),
                      tokenizer_kwargs=cfg.get("tokenizer_kwargs") or ({} if cfg.get("hf_tokenizer_name") else None))


def _preprocess_config(cfg: Mapping[str, Any], image_size: int, family: str = "openai") -> PreprocessConfig:
    """open_clip ``preprocess_cfg`` over the defaults of the model's ``family`` (``open_clip_timm.family``)."""
    pp = family_preprocess(family, image_size)
    for key, value in cfg.items():
        if key in ("mean", "std"):
            setattr(pp, key, tuple(float(x) for x in value))
        elif key == "interpolation":
            if value not in _INTERPOLATIONS:
                raise ConfigError(f"open_clip preprocess_cfg.interpolation = {value!r} is not supported "
                                  f"(supported: {list(_INTERPOLATIONS)})")
            pp.interpolation = value
        elif key == "resize_mode":
            if value not in RESIZE_MODES:
                raise ConfigError(f"open_clip preprocess_cfg.resize_mode = {value!r} is not supported "
                                  f"(supported: {list(RESIZE_MODES)})")
            pp.resize_mode = value
        elif key == "mode" and value != "RGB":
            raise ConfigError(f"open_clip preprocess_cfg.mode = {value!r} is not supported (supported: 'RGB')")
        elif key not in ("size", "mode", "fill_color"):  # open_clip itself sets size from the image tower
            raise ConfigError(f"open_clip preprocess_cfg has the field {key!r}, which maskclip does not know")
    if pp.resize_mode == "longest" and cfg.get("fill_color", 0) != 0:
        raise ConfigError(f"open_clip preprocess_cfg.fill_color = {cfg['fill_color']!r} with resize_mode 'longest' is "
                          "not supported: maskclip pads with 0 (black), open_clip's default")
    return pp


def from_open_clip(oc_config: Mapping[str, Any], sd: Mapping[str, torch.Tensor]) -> Tuple[ModelConfig, StateDict]:
    """An ``open_clip_config.json`` dict (``{"model_cfg", "preprocess_cfg"}``) + its state dict -> native.

    Honours ``quick_gelu``, the tower fields open_clip's ``CLIP`` reads and the preprocessing
    (mean, std, interpolation, resize_mode). Refuses, with a ``ConfigError`` naming the field,
    anything maskclip would compute differently: timm or Hugging Face towers, ResNets, attentional
    pooling, layer scale, custom attention blocks, ``final_ln_after_pool``, text pooling other than
    argmax, projection biases, non-CLIP tokenizers, SigLIP's logit bias, CoCa.
    """
    if not isinstance(oc_config, Mapping):
        raise ConfigError(f"an open_clip config must be a JSON object; got {type(oc_config).__name__}")
    model_cfg = oc_config.get("model_cfg", oc_config)
    _check_fields(model_cfg, _MODEL_FIELDS, "model_cfg")
    for name in ("vision_cfg", "text_cfg", "embed_dim"):
        if name not in model_cfg:
            raise ConfigError(f"open_clip model_cfg lacks {name!r}")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    vision_cfg = model_cfg["vision_cfg"]
    timm_tower = isinstance(vision_cfg, Mapping) and bool(vision_cfg.get("timm_model_name"))
    if timm_tower:
        vision = timm_vision_config(vision_cfg, model_cfg["embed_dim"])
    else:
        vision = _vision_config(vision_cfg, act)
    bias = model_cfg.get("init_logit_bias")
    config = ModelConfig(
        embed_dim=model_cfg["embed_dim"], vision=vision, text=_text_config(model_cfg["text_cfg"], act),
        preprocess=_preprocess_config(oc_config.get("preprocess_cfg") or {}, vision.image_size, family(model_cfg)),
        logit_scale_init=float(model_cfg.get("init_logit_scale", DEFAULT_LOGIT_SCALE)),
        logit_bias_init=None if bias is None else float(bias),
    ).validate()
    if timm_tower or config.text.proj_bias or "logit_bias" in sd:
        return config, with_logit_scale(custom_text_to_native(sd))
    # CustomTextCLIP keeps its text tower under `text.` (the native names); CLIP at the top level.
    native = checked_native(sd) if detect_layout(sd) == "maskclip" else openai_to_native(sd)
    return config, with_logit_scale(native)


def to_open_clip(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """Native -> (``open_clip_config.json`` dict, open_clip ``CLIP`` state dict).

    The folder (config + ``open_clip_model.safetensors``) loads in open_clip with
    ``create_model_and_transforms("local-dir:<folder>")`` or, on the Hub, ``"hf-hub:org/repo"``.
    """
    v, t, pp = config.vision, config.text, config.preprocess
    if v.timm_model_name is not None or t.proj_bias or config.logit_bias_init is not None:
        return _to_custom_text_open_clip(config, sd)
    if v.act != t.act:
        raise ConfigError(f"open_clip has one activation for both towers (quick_gelu true/false); this model "
                          f"uses {v.act!r} for vision and {t.act!r} for text")
    if v.patch_bias:
        raise ConfigError("open_clip's patch embedding (conv1) has no bias; this model's vision patch_bias is True")
    if v.stem != "patch":
        raise ConfigError(f"open_clip's patch embedding is one projection (conv1); this model's vision stem is {v.stem!r}")
    if pp.image_size != v.image_size:
        raise ConfigError(f"open_clip preprocesses at the image tower's size ({v.image_size}); this model's "
                          f"preprocess image_size is {pp.image_size}")
    vision_cfg = {"image_size": v.image_size, "layers": v.layers, "width": v.width, "head_width": v.width // v.heads,
                  "mlp_ratio": v.mlp_ratio, "patch_size": v.patch_size}
    if not v.ln_pre:
        vision_cfg["no_ln_pre"] = True
    if v.pool == "mean":
        vision_cfg["pool_type"] = "avg"
    if v.pos_embed == "sincos":
        vision_cfg["pos_embed_type"] = "sin_cos_2d"
    text_cfg = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    for cfg, eps in ((vision_cfg, v.norm_eps), (text_cfg, t.norm_eps)):
        if eps != 1e-5:
            cfg["norm_kwargs"] = {"eps": eps}
    model_cfg = {"embed_dim": config.embed_dim, "quick_gelu": v.act == "quick_gelu",
                 "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if config.logit_scale_init != DEFAULT_LOGIT_SCALE:
        model_cfg["init_logit_scale"] = config.logit_scale_init
    preprocess_cfg = {"mean": list(pp.mean), "std": list(pp.std), "interpolation": pp.interpolation,
                      "resize_mode": pp.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, native_to_openai(sd)




def _text_cfg(t: TextConfig) -> Dict[str, Any]:
    """``TextConfig`` -> open_clip ``text_cfg`` (options written only where they differ from open_clip's defaults)."""
    cfg = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
           "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio}
    if t.norm_eps != 1e-5:
        cfg["norm_kwargs"] = {"eps": t.norm_eps}
    if not t.causal:
        cfg["no_causal_mask"] = True
    if t.pool != "argmax":
        cfg["pool_type"] = t.pool
    if t.proj_bias:
        cfg["proj_bias"] = True
    if t.act == "gelu_tanh":
        cfg["act_kwargs"] = {"approximate": "tanh"}
    if t.hf_tokenizer_name is not None:
        cfg["hf_tokenizer_name"] = t.hf_tokenizer_name
    if t.tokenizer_kwargs is not None:
        cfg["tokenizer_kwargs"] = dict(t.tokenizer_kwargs)
    return cfg


def _to_custom_text_open_clip(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """Native -> open_clip ``CustomTextCLIP`` (timm image tower, SigLIP text options, logit bias)."""
    v, t, pp = config.vision, config.text, config.preprocess
    if v.timm_model_name is None:
        raise ConfigError("maskclip writes SigLIP text options or a logit bias to open_clip only with a timm image "
                          "tower; this model has maskclip's own ViT")
    if v.act != "gelu":
        raise ConfigError(f"open_clip builds a timm image tower with the timm model's own activation; this model's "
                          f"{v.timm_model_name!r} tower uses {v.act!r} (as transformers' SigLIP checkpoints declare), "
                          "which open_clip's config cannot say. Save it as format='maskclip' or 'transformers'")
    if t.act == "quick_gelu":
        raise ConfigError("open_clip's timm image towers ignore quick_gelu; this model's text tower uses QuickGELU, "
                          "which open_clip would then apply to no tower consistently")
    if pp.image_size != v.image_size:
        raise ConfigError(f"open_clip preprocesses at the image tower's size ({v.image_size}); this model's "
                          f"preprocess image_size is {pp.image_size}")
    model_cfg = {"embed_dim": config.embed_dim, "custom_text": True, "vision_cfg": timm_vision_cfg(v),
                 "text_cfg": _text_cfg(t)}
    if config.logit_scale_init != DEFAULT_LOGIT_SCALE:
        model_cfg["init_logit_scale"] = config.logit_scale_init
    if config.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = config.logit_bias_init
    preprocess_cfg = {"mean": list(pp.mean), "std": list(pp.std), "interpolation": pp.interpolation,
                      "resize_mode": pp.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, native_to_custom_text(config, sd)
