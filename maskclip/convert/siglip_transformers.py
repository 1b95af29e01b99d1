"""transformers' ``SiglipModel`` <-> open_clip's SigLIP layout, and the transformers folder of one.

open_clip builds SigLIP and SigLIP2 (``ViT-B-16-SigLIP``, ``ViT-B-16-SigLIP2``, ...) from a timm
ViT named by ``vision_cfg.timm_model_name`` with a MAP (attention-pool) head, plus its own
``TextTransformer`` (no causal mask, last-token pooling, a projection with bias) and a
``logit_bias``; transformers' ``SiglipModel`` is the same network under other names. Both
directions of the state-dict conversion come from one table that pairs open_clip keys with
transformers keys and gives each side's shapes (fused tensors are the row-concatenation of their
parts), so round trips are bit-identical and every key and shape is checked:

open_clip -> transformers:

- ``visual.trunk.patch_embed.proj.*`` -> ``vision_model.embeddings.patch_embedding.*``;
- ``visual.trunk.pos_embed`` ``[1, N, D]`` -> ``vision_model.embeddings.position_embedding.weight`` ``[N, D]``;
- ``visual.trunk.blocks.{i}.attn.qkv.*`` (rows q, k, v) -> ``vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*``;
- ``visual.trunk.norm.*`` -> ``vision_model.post_layernorm.*``;
- ``visual.trunk.attn_pool.latent``, ``q`` + ``kv`` -> ``vision_model.head.probe``, ``attention.in_proj_*``;
- ``text.transformer.resblocks.{i}.attn.in_proj_*`` -> ``text_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*``;
- ``text.ln_final.*``, ``text.text_projection.*`` -> ``text_model.final_layer_norm.*``, ``text_model.head.*``;
- ``logit_scale``, ``logit_bias`` ``[]`` -> the same names, ``[1]``.

The timm tower's architecture is fixed by its name, so its facts (width, depth, heads, MLP width,
patch, image size, activation, LayerNorm eps, parameter shapes) are read from timm itself by
building the named model on the meta device (no weights, no download); from transformers, the
timm SigLIP tower with the same facts is looked up by name pattern ``vit_*_patch{P}_siglip_{S}``.
What either layout cannot express is refused with ``ConfigError`` (a config) or ``WeightsError``
(a state dict) naming the field or key and what was expected. This module never imports
transformers (timm only when converting).

Functions: ``siglip_open_clip_to_hf`` / ``siglip_hf_to_open_clip`` (model config + state dict),
``siglip_preprocessor_config`` / ``siglip_preprocess_cfg`` (open_clip ``preprocess_cfg`` <->
``preprocessor_config.json``), ``write_siglip_transformers_folder`` /
``read_siglip_transformers_folder`` (the folder).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch
from safetensors.torch import save_file

from ..atomic import atomic_write, atomic_write_text
from ..errors import ConfigError, ModelNotFoundError, WeightsError
from ..file_readers import read_json, read_safetensors
from .infer import square_size

StateDict = Dict[str, torch.Tensor]
Shape = Tuple[int, ...]

# --- the facts of one model, whichever layout it came from ----------------------------------


class _Tower(NamedTuple):
    width: int
    layers: int
    heads: int
    mlp: int  # hidden units of each MLP
    act: str  # transformers' name: gelu | gelu_pytorch_tanh | quick_gelu
    eps: float


class _Arch(NamedTuple):
    vision: _Tower
    patch: int
    image: int  # the patch grid is image // patch per side: both layouts drop the remainder
    text: _Tower
    vocab: int
    context: int
    embed_dim: int

    @property
    def patches(self) -> int:  # tokens of the patch grid
        return (self.image // self.patch) ** 2


# --- the key table ---------------------------------------------------------------------------


class _Pair(NamedTuple):
    """open_clip key(s) and transformers key(s) holding the same numbers; the side with several
    keys holds the row blocks (dim 0) of the side with one, in order."""

    oc: Tuple[str, ...]
    oc_shapes: Tuple[Shape, ...]
    hf: Tuple[str, ...]
    hf_shapes: Tuple[Shape, ...]


def _same(oc: str, hf: str, shape: Shape) -> _Pair:
    return _Pair((oc,), (shape,), (hf,), (shape,))


def _linear(oc: str, hf: str, out: int, inp: int) -> List[_Pair]:
    return [_same(f"{oc}.weight", f"{hf}.weight", (out, inp)), _same(f"{oc}.bias", f"{hf}.bias", (out,))]


def _norm(oc: str, hf: str, width: int) -> List[_Pair]:
    return [_same(f"{oc}.weight", f"{hf}.weight", (width,)), _same(f"{oc}.bias", f"{hf}.bias", (width,))]


def _qkv(oc_weight: str, oc_bias: str, hf: str, width: int) -> List[_Pair]:
    """One fused q/k/v projection (open_clip) <-> three (transformers) under ``hf``."""
    names = [f"{hf}.{x}_proj" for x in "qkv"]
    return [_Pair((oc_weight,), ((3 * width, width),), tuple(f"{n}.weight" for n in names), ((width, width),) * 3),
            _Pair((oc_bias,), ((3 * width,),), tuple(f"{n}.bias" for n in names), ((width,),) * 3)]


def _block(oc: str, hf: str, tower: _Tower, names: Mapping[str, str]) -> List[_Pair]:
    d = tower.width
    return (_norm(f"{oc}.{names['norm1']}", f"{hf}.layer_norm1", d)
            + _qkv(f"{oc}.{names['qkv_weight']}", f"{oc}.{names['qkv_bias']}", f"{hf}.self_attn", d)
            + _linear(f"{oc}.{names['out']}", f"{hf}.self_attn.out_proj", d, d)
            + _norm(f"{oc}.{names['norm2']}", f"{hf}.layer_norm2", d)
            + _linear(f"{oc}.{names['fc1']}", f"{hf}.mlp.fc1", tower.mlp, d)
            + _linear(f"{oc}.{names['fc2']}", f"{hf}.mlp.fc2", d, tower.mlp))


# Where each part of a block lives: timm's ViT blocks (vision) and open_clip's resblocks (text).
_TIMM_BLOCK = {"norm1": "norm1", "qkv_weight": "attn.qkv.weight", "qkv_bias": "attn.qkv.bias",
               "out": "attn.proj", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_OPEN_CLIP_BLOCK = {"norm1": "ln_1", "qkv_weight": "attn.in_proj_weight", "qkv_bias": "attn.in_proj_bias",
                    "out": "attn.out_proj", "norm2": "ln_2", "fc1": "mlp.c_fc", "fc2": "mlp.c_proj"}


def _vision_pairs(arch: _Arch) -> List[_Pair]:
    v, d, oc, hf = arch.vision, arch.vision.width, "visual.trunk", "vision_model"
    pairs = [_same(f"{oc}.patch_embed.proj.weight", f"{hf}.embeddings.patch_embedding.weight",
                   (d, 3, arch.patch, arch.patch)),
             _same(f"{oc}.patch_embed.proj.bias", f"{hf}.embeddings.patch_embedding.bias", (d,)),
             _Pair((f"{oc}.pos_embed",), ((1, arch.patches, d),),
                   (f"{hf}.embeddings.position_embedding.weight",), ((arch.patches, d),))]
    for i in range(v.layers):
        pairs += _block(f"{oc}.blocks.{i}", f"{hf}.encoder.layers.{i}", v, _TIMM_BLOCK)
    pool, head = f"{oc}.attn_pool", f"{hf}.head"
    return (pairs + _norm(f"{oc}.norm", f"{hf}.post_layernorm", d)
            + [_same(f"{pool}.latent", f"{head}.probe", (1, 1, d)),
               _Pair((f"{pool}.q.weight", f"{pool}.kv.weight"), ((d, d), (2 * d, d)),
                     (f"{head}.attention.in_proj_weight",), ((3 * d, d),)),
               _Pair((f"{pool}.q.bias", f"{pool}.kv.bias"), ((d,), (2 * d,)),
                     (f"{head}.attention.in_proj_bias",), ((3 * d,),))]
            + _linear(f"{pool}.proj", f"{head}.attention.out_proj", d, d)
            + _norm(f"{pool}.norm", f"{head}.layernorm", d)
            + _linear(f"{pool}.mlp.fc1", f"{head}.mlp.fc1", v.mlp, d)
            + _linear(f"{pool}.mlp.fc2", f"{head}.mlp.fc2", d, v.mlp))


def _text_pairs(arch: _Arch) -> List[_Pair]:
    t, w, oc, hf = arch.text, arch.text.width, "text", "text_model"
    pairs = [_same(f"{oc}.token_embedding.weight", f"{hf}.embeddings.token_embedding.weight", (arch.vocab, w)),
             _same(f"{oc}.positional_embedding", f"{hf}.embeddings.position_embedding.weight", (arch.context, w))]
    for i in range(t.layers):
        pairs += _block(f"{oc}.transformer.resblocks.{i}", f"{hf}.encoder.layers.{i}", t, _OPEN_CLIP_BLOCK)
    return (pairs + _norm(f"{oc}.ln_final", f"{hf}.final_layer_norm", w)
            + _linear(f"{oc}.text_projection", f"{hf}.head", arch.embed_dim, w))


def _pairs(arch: _Arch) -> List[_Pair]:
    scalars = [_Pair((k,), ((),), (k,), ((1,),)) for k in ("logit_scale", "logit_bias")]
    return _vision_pairs(arch) + _text_pairs(arch) + scalars


# Buffers older transformers versions saved with the weights (persistent position ids).
_HF_DROP_SUFFIX = "position_ids"


def _convert(sd: Mapping[str, torch.Tensor], pairs: Sequence[_Pair], to_hf: bool) -> StateDict:
    """Apply the table in one direction after checking every key and shape of ``sd``."""
    src_side, where = ("oc", "open_clip") if to_hf else ("hf", "transformers")
    wanted = {k: s for p in pairs for k, s in zip(getattr(p, src_side), getattr(p, f"{src_side}_shapes"))}
    missing = [k for k in wanted if k not in sd]
    extra = [k for k in sd if k not in wanted and (to_hf or not k.endswith(_HF_DROP_SUFFIX))]
    if missing or extra:
        raise WeightsError(f"the {where} state dict does not have the keys this SigLIP config implies: "
                           + "; ".join(f"{label}: {_some(keys)}" for label, keys in
                                       (("missing", missing), ("unexpected", extra)) if keys))
    wrong = [f"{k} is {list(sd[k].shape)}, expected {list(s)}" for k, s in wanted.items() if tuple(sd[k].shape) != s]
    if wrong:
        raise WeightsError(f"the {where} state dict's shapes do not fit the SigLIP config: {_some(wrong)}")
    out: StateDict = {}
    for p in pairs:
        src, dst, dst_shapes = (p.oc, p.hf, p.hf_shapes) if to_hf else (p.hf, p.oc, p.oc_shapes)
        tensors = [sd[k] for k in src]
        if len(src) == len(dst):
            out[dst[0]] = tensors[0].reshape(dst_shapes[0])
        elif len(dst) == 1:
            out[dst[0]] = torch.cat(tensors, dim=0)
        else:  # own storage for each part: safetensors refuses tensors that share memory
            parts = torch.split(tensors[0], [s[0] for s in dst_shapes], dim=0)
            out.update((k, t.clone()) for k, t in zip(dst, parts))
    return out


def _some(items: Sequence[str], n: int = 6) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return f"{sorted(items)[:n]}{more}"


# --- timm's side: the tower a name builds ------------------------------------------------------

def _act_name(act: torch.nn.Module, where: str) -> str:
    """A timm/torch activation module -> transformers' ``hidden_act`` name computing the same."""
    kind = type(act).__name__
    if isinstance(act, torch.nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    names = {"GELU": "gelu", "GELUTanh": "gelu_pytorch_tanh", "QuickGELU": "quick_gelu"}
    if kind not in names:
        raise ConfigError(f"{where} uses the activation {kind}; SiglipModel supports GELU (exact or tanh) "
                          "and QuickGELU here")
    return names[kind]


class _TimmTower(NamedTuple):
    tower: _Tower
    patch: int
    image: int
    shapes: Dict[str, Shape]  # its parameters, under ``visual.trunk.``


@functools.lru_cache(maxsize=None)
def _timm_tower(name: str) -> _TimmTower:
    """What open_clip's ``TimmModel(name, pool='map', proj='none')`` builds, read off a meta-device copy."""
    import timm  # lazily: only SigLIP towers need it

    try:
        with torch.device("meta"):  # shapes and modules only: no memory, no download
            trunk = timm.create_model(name, pretrained=False, num_classes=0, global_pool="map")
    except (RuntimeError, TypeError, ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"timm cannot build vision_cfg.timm_model_name = {name!r} as a MAP-pooled tower: "
                          f"{type(e).__name__}: {e}") from None
    where = f"timm model {name!r}"
    if type(trunk).__name__ != "VisionTransformer" or getattr(trunk, "attn_pool", None) is None:
        raise ConfigError(f"{where} is a {type(trunk).__name__} without a MAP head; SiglipModel's vision tower "
                          "is timm's VisionTransformer with global_pool='map'")
    block = trunk.blocks[0]
    if trunk.attn_pool.num_heads != block.attn.num_heads:
        raise ConfigError(f"{where}: its attention pool has {trunk.attn_pool.num_heads} heads and its blocks "
                          f"{block.attn.num_heads}; SiglipModel uses one number for both")
    eps = {m.eps for m in (block.norm1, block.norm2, trunk.norm, trunk.attn_pool.norm)}
    if len(eps) != 1:
        raise ConfigError(f"{where} mixes LayerNorm eps {sorted(eps)}; SiglipModel uses one layer_norm_eps")
    patch = square_size(tuple(trunk.patch_embed.patch_size), f"{where} patch size")
    image = square_size(tuple(trunk.patch_embed.img_size), f"{where} image size")
    tower = _Tower(trunk.embed_dim, len(trunk.blocks), block.attn.num_heads, block.mlp.fc1.out_features,
                   _act_name(block.mlp.act, where), eps.pop())
    shapes = {f"visual.trunk.{k}": tuple(t.shape) for k, t in trunk.state_dict().items()}
    return _TimmTower(tower, patch, image, shapes)


def _check_timm_structure(name: str, timm_tower: _TimmTower, arch: _Arch) -> None:
    """The named tower has exactly the parameters SiglipModel's vision tower has (no class or
    register tokens, layer scale, q/k norms, pre-norm, ...)."""
    want = {k: s for p in _vision_pairs(arch) for k, s in zip(p.oc, p.oc_shapes)}
    have = timm_tower.shapes
    extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
    if extra or missing:
        raise ConfigError(f"timm model {name!r} is not SiglipModel's vision tower: "
                          + "; ".join(f"{label}: {_some(keys)}" for label, keys in
                                      (("parameters SiglipModel has no place for", extra),
                                       ("parameters it lacks", missing)) if keys))
    wrong = [f"{k} {list(have[k])} (SiglipModel {list(s)})" for k, s in want.items() if have[k] != s]
    if wrong:
        raise ConfigError(f"timm model {name!r} has shapes SiglipModel's vision tower cannot hold: {_some(wrong)}")


# --- open_clip's side: the model config -----------------------------------------------------

# open_clip config fields: ("map",) = translated; ("ignore",) = training-only, or changes nothing
# the conversion carries; ("is", value, default) = the field (open_clip's default when absent) must
# be ``value`` (or one of a tuple of values), anything else is a model SiglipModel cannot express.
_VISION_FIELDS = {
    "image_size": ("map",), "timm_model_name": ("map",), "timm_model_pretrained": ("ignore",),
    "timm_drop": ("ignore",), "timm_drop_path": ("ignore",), "patch_dropout": ("ignore",),
    "timm_proj_bias": ("ignore",), "output_tokens": ("ignore",),
    "timm_pool": ("is", "map", "avg"), "timm_proj": ("is", "none", "linear"),
}
_TEXT_FIELDS = {
    "context_length": ("map",), "vocab_size": ("map",), "width": ("map",), "heads": ("map",), "layers": ("map",),
    "mlp_ratio": ("map",), "norm_kwargs": ("map",), "act_kwargs": ("map",),
    "hf_tokenizer_name": ("ignore",), "tokenizer_kwargs": ("ignore",), "tokenizer_mode": ("ignore",),
    "pad_id": ("ignore",), "eos_id": ("ignore",), "output_tokens": ("ignore",),
    "no_causal_mask": ("is", True, False), "pool_type": ("is", "last", "argmax"),
    "proj_type": ("is", "linear", "linear"), "proj_bias": ("is", True, False), "ls_init_value": ("is", None, None),
    "embed_cls": ("is", False, False),
    "final_ln_after_pool": ("is", False, False), "block_type": ("is", (None, "default"), None), "qk_norm": ("is", False, False),
    "scaled_cosine_attn": ("is", False, False), "scale_heads": ("is", False, False),
    "scale_attn_inner": ("is", False, False), "scale_attn": ("is", False, False), "scale_fc": ("is", False, False),
    "hf_model_name": ("is", None, None),
}
_MODEL_FIELDS = {
    "embed_dim": ("map",), "vision_cfg": ("map",), "text_cfg": ("map",), "quick_gelu": ("map",),
    "init_logit_bias": ("map",), "init_logit_scale": ("ignore",), "custom_text": ("is", True, False),
}
# open_clip's CLIPTextCfg defaults for the fields read here.
_TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, "mlp_ratio": 4.0}
_OC_LN_EPS = 1e-5  # torch's LayerNorm default, which open_clip's text tower uses without norm_kwargs


def _check_fields(cfg: Any, spec: Mapping[str, tuple], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"open_clip {where} must be an object; got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in spec]
    if unknown:
        raise ConfigError(f"open_clip {where} has the fields {unknown}, which the SigLIP conversion does not know "
                          f"(known: {sorted(spec)}); refusing to convert a model it might get wrong")
    for key, rule in spec.items():
        if rule[0] != "is":
            continue
        value, accepted = cfg.get(key, rule[2]), rule[1] if isinstance(rule[1], tuple) else (rule[1],)
        if value not in accepted:
            raise ConfigError(f"open_clip {where}.{key} = {value!r}{'' if key in cfg else ' (its default)'}: "
                              f"transformers' SiglipModel needs {' or '.join(map(repr, accepted))}")


def _oc_text_act(text_cfg: Mapping[str, Any], quick_gelu: bool) -> str:
    kwargs = text_cfg.get("act_kwargs") or {}
    approximate = kwargs.get("approximate", "none")
    if set(kwargs) - {"approximate"} or approximate not in ("none", "tanh") or (quick_gelu and kwargs):
        raise ConfigError(f"open_clip text_cfg.act_kwargs = {kwargs} with quick_gelu={quick_gelu} is not "
                          "supported: expected {'approximate': 'tanh'} or none (GELU), or quick_gelu without kwargs")
    return "quick_gelu" if quick_gelu else ("gelu_pytorch_tanh" if approximate == "tanh" else "gelu")


def _oc_eps(text_cfg: Mapping[str, Any]) -> float:
    kwargs = text_cfg.get("norm_kwargs") or {}
    if set(kwargs) - {"eps"}:
        raise ConfigError(f"open_clip text_cfg.norm_kwargs = {kwargs} is not supported; expected only 'eps'")
    return float(kwargs.get("eps", _OC_LN_EPS))


def _oc_arch(model_cfg: Mapping[str, Any]) -> _Arch:
    """An open_clip SigLIP model config -> its architecture (the vision tower's read from timm)."""
    _check_fields(model_cfg, _MODEL_FIELDS, "model_cfg")
    v_cfg, t_cfg = model_cfg.get("vision_cfg"), model_cfg.get("text_cfg")
    _check_fields(v_cfg, _VISION_FIELDS, "model_cfg.vision_cfg")
    _check_fields(t_cfg, _TEXT_FIELDS, "model_cfg.text_cfg")
    if model_cfg.get("init_logit_bias") is None:
        raise ConfigError("open_clip model_cfg.init_logit_bias is absent: without it the model has no logit_bias, "
                          "which SiglipModel always has")
    name = v_cfg.get("timm_model_name")
    if not isinstance(name, str):
        raise ConfigError(f"open_clip vision_cfg.timm_model_name = {name!r}: SiglipModel's layout needs a timm "
                          "SigLIP tower (e.g. 'vit_base_patch16_siglip_224')")
    timm_tower = _timm_tower(name)
    image = square_size(v_cfg.get("image_size", 224), "open_clip vision_cfg.image_size")
    if image != timm_tower.image:
        raise ConfigError(f"open_clip vision_cfg.image_size = {image}, but timm's {name!r} is built for "
                          f"{timm_tower.image} (open_clip does not pass the size to timm)")
    embed_dim = model_cfg.get("embed_dim")
    if embed_dim != timm_tower.tower.width:
        raise ConfigError(f"open_clip embed_dim = {embed_dim} with timm_proj 'none' must equal the vision width "
                          f"of {name!r} ({timm_tower.tower.width})")
    t = {**_TEXT_DEFAULTS, **{k: t_cfg[k] for k in _TEXT_DEFAULTS if k in t_cfg}}
    text = _Tower(t["width"], t["layers"], t["heads"], int(t["width"] * t["mlp_ratio"]),
                  _oc_text_act(t_cfg, bool(model_cfg.get("quick_gelu", False))), _oc_eps(t_cfg))
    arch = _Arch(timm_tower.tower, timm_tower.patch, image, text, t["vocab_size"],
                 t["context_length"], embed_dim)
    _check_timm_structure(name, timm_tower, arch)
    return arch


# --- transformers' side: config.json ----------------------------------------------------------

# SiglipTextConfig / SiglipVisionConfig defaults (transformers 4.37 - 5.x) for the fields read here.
_HF_TEXT_DEFAULTS = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
                     "layer_norm_eps": 1e-6, "projection_size": None}
_HF_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 16,
                       "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "vision_use_head": True}
_HF_ACTS = ("gelu", "gelu_pytorch_tanh", "quick_gelu")
# The tokenizers of the released SigLIP models, by vocabulary size: each repo holds the tokenizer
# that every model of that vocabulary uses (open_clip names one repo per model; the files are the same).
_SIGLIP_TOKENIZERS = {32000: "timm/ViT-B-16-SigLIP", 250000: "timm/ViT-B-16-SigLIP-i18n-256",
                      256000: "timm/ViT-B-16-SigLIP2"}
_SIGLIP_INIT_LOGIT_BIAS = -10.0  # the SigLIP paper's initial bias, as every open_clip SigLIP config sets


def _hf_sub(hf_config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> Dict[str, Any]:
    sub = hf_config.get(name) or {}
    if not isinstance(sub, Mapping):
        raise ConfigError(f"transformers config {name} must be an object; got {type(sub).__name__}")
    merged = {**defaults, **{k: v for k, v in sub.items() if k in defaults and v is not None}}
    if merged["hidden_act"] not in _HF_ACTS:
        raise ConfigError(f"transformers {name}.hidden_act = {merged['hidden_act']!r} is not supported "
                          f"(supported: {list(_HF_ACTS)})")
    return merged


def _hf_arch(hf_config: Any) -> _Arch:
    if not isinstance(hf_config, Mapping) or hf_config.get("model_type") != "siglip":
        got = hf_config.get("model_type") if isinstance(hf_config, Mapping) else type(hf_config).__name__
        hint = (" (Siglip2Model, the NaFlex variant, embeds flattened patches with a Linear layer and resizes "
                "positions per image: not open_clip's layout; the fixed-resolution SigLIP2 checkpoints are "
                "SiglipModel)") if got == "siglip2" else ""
        raise ConfigError(f"expected a transformers SiglipModel config (model_type 'siglip'); got {got!r}{hint}")
    t = _hf_sub(hf_config, "text_config", _HF_TEXT_DEFAULTS)
    v = _hf_sub(hf_config, "vision_config", _HF_VISION_DEFAULTS)
    if not v["vision_use_head"]:
        raise ConfigError("transformers vision_config.vision_use_head = false: without the attention-pool head "
                          "there is no image embedding; open_clip's SigLIP layout has one")
    if v["num_channels"] != 3:
        raise ConfigError(f"transformers vision_config.num_channels = {v['num_channels']}; expected 3 (RGB)")
    embed_dim = t["projection_size"] or t["hidden_size"]
    if embed_dim != v["hidden_size"]:
        raise ConfigError(f"transformers text_config.projection_size = {embed_dim} differs from "
                          f"vision_config.hidden_size = {v['hidden_size']}; open_clip's SigLIP layout has no image "
                          "projection (timm_proj 'none'), so the two must be equal")
    image = square_size(v["image_size"], "transformers vision_config.image_size")
    patch = square_size(v["patch_size"], "transformers vision_config.patch_size")
    towers = [_Tower(c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["intermediate_size"],
                     c["hidden_act"], float(c["layer_norm_eps"])) for c in (v, t)]
    return _Arch(towers[0], patch, image, towers[1], t["vocab_size"], t["max_position_embeddings"], embed_dim)


def _hf_config(arch: _Arch) -> Dict[str, Any]:
    v, t = arch.vision, arch.text
    return {
        "architectures": ["SiglipModel"], "model_type": "siglip", "initializer_factor": 1.0,
        "text_config": {"model_type": "siglip_text_model", "vocab_size": arch.vocab, "hidden_size": t.width,
                        "intermediate_size": t.mlp, "num_hidden_layers": t.layers, "num_attention_heads": t.heads,
                        "max_position_embeddings": arch.context, "hidden_act": t.act, "layer_norm_eps": t.eps,
                        "projection_size": arch.embed_dim},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": v.width, "intermediate_size": v.mlp,
                          "num_hidden_layers": v.layers, "num_attention_heads": v.heads, "num_channels": 3,
                          "image_size": arch.image, "patch_size": arch.patch, "hidden_act": v.act,
                          "layer_norm_eps": v.eps, "vision_use_head": True},
    }


def _mlp_ratio(width: int, hidden: int) -> float:
    """The shortest decimal ``r`` with ``int(width * r) == hidden`` (open_clip's rule for MLP widths)."""
    for digits in range(1, 18):
        for r in (round(hidden / width, digits), round(hidden / width, digits) + 10 ** -digits):
            if int(width * r) == hidden:
                return r
    raise ConfigError(f"transformers text_config.intermediate_size = {hidden} is not int({width} * mlp_ratio) for "
                      "any float mlp_ratio; open_clip cannot build it")


def _find_timm_tower(arch: _Arch, allow_act_change: bool) -> str:
    """The timm SigLIP tower with ``arch``'s vision facts (its name is all open_clip's config can say)."""
    import timm  # lazily, as in _timm_tower

    size = arch.image
    pattern = f"vit_*_patch{arch.patch}_siglip_{size}"
    tried, act_only = [], []
    for name in timm.list_models(pattern):
        try:
            found = _timm_tower(name)
        except ConfigError as e:  # a name of the pattern that is no SigLIP tower
            tried.append(str(e))
            continue
        diffs = [f for f in _Tower._fields if getattr(found.tower, f) != getattr(arch.vision, f)]
        if diffs in ([], ["act"]):
            try:
                _check_timm_structure(name, found, arch)
            except ConfigError as e:
                tried.append(str(e))
                continue
            if not diffs:
                return name
            act_only.append(name)
        tried.append(f"{name}: " + ", ".join(f"{f} {getattr(found.tower, f)!r} (transformers "
                                            f"{getattr(arch.vision, f)!r})" for f in diffs))
    if act_only and allow_act_change:
        return act_only[0]
    v = arch.vision
    raise ConfigError(
        f"no timm SigLIP tower ({pattern}) matches transformers' vision_config (hidden_size {v.width}, "
        f"num_hidden_layers {v.layers}, num_attention_heads {v.heads}, intermediate_size {v.mlp}, hidden_act "
        f"{v.act!r}, layer_norm_eps {v.eps}, patch_size {arch.patch}, image_size {size}); open_clip names its vision "
        f"tower by a timm model, so it cannot express this one. Tried: {tried or 'none registered'}"
        + ("; allow_act_change=True converts to the tower that differs only in its activation (the model's "
           "outputs then change)" if act_only else ""))


def _oc_config(arch: _Arch, timm_name: str, tokenizer_name: str) -> Dict[str, Any]:
    t = arch.text
    text_cfg: Dict[str, Any] = {
        "context_length": arch.context, "vocab_size": arch.vocab, "hf_tokenizer_name": tokenizer_name,
        "tokenizer_kwargs": {"clean": "canonicalize"}, "width": t.width, "heads": t.heads, "layers": t.layers,
    }
    if t.mlp != 4 * t.width:
        text_cfg["mlp_ratio"] = _mlp_ratio(t.width, t.mlp)
    text_cfg.update({"no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": t.eps}})
    if t.act == "gelu_pytorch_tanh":
        text_cfg["act_kwargs"] = {"approximate": "tanh"}
    model_cfg: Dict[str, Any] = {"embed_dim": arch.embed_dim, "init_logit_bias": _SIGLIP_INIT_LOGIT_BIAS,
                                 "custom_text": True}
    if t.act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    model_cfg["vision_cfg"] = {"image_size": arch.image, "timm_model_name": timm_name,
                               "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": "none"}
    model_cfg["text_cfg"] = text_cfg
    return model_cfg


# --- the two directions ----------------------------------------------------------------------

def siglip_open_clip_to_hf(open_clip_model_cfg: Mapping[str, Any],
                           state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """open_clip SigLIP ``model_cfg`` + ``CustomTextCLIP`` state dict -> (transformers ``config.json``
    dict, ``SiglipModel`` state dict).

    ``transformers.SiglipModel(SiglipConfig(**hf_config))`` loads the state dict with ``strict=True``
    and computes the same embeddings. The activations are carried exactly: timm's SigLIP B/16 towers
    use exact GELU (``hidden_act 'gelu'``) where Google's transformers checkpoints say
    ``gelu_pytorch_tanh``. Raises ``ConfigError`` for a config SiglipModel cannot express (another
    pooling or projection, a causal text mask, a text tower without projection, ...) and
    ``WeightsError`` for missing, unexpected or misshapen keys.
    """
    arch = _oc_arch(open_clip_model_cfg)
    return _hf_config(arch), _convert(state_dict, _pairs(arch), to_hf=True)


def siglip_hf_to_open_clip(hf_config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *,
                           tokenizer_name: Optional[str] = None,
                           allow_act_change: bool = False) -> Tuple[Dict[str, Any], StateDict]:
    """transformers ``SiglipModel`` ``config.json`` dict + state dict -> (open_clip ``model_cfg``,
    ``CustomTextCLIP`` state dict).

    The vision tower becomes the timm SigLIP tower with the same facts (found by name in timm's
    registry). ``tokenizer_name`` (open_clip's ``text_cfg.hf_tokenizer_name``: a Hub repo or folder
    with the tokenizer) defaults by vocabulary size to the released SigLIP tokenizers (32000,
    250000, 256000); any other vocabulary needs it. ``allow_act_change``: timm's SigLIP B/16 and
    L/16 towers use exact GELU, Google's checkpoints tanh-approximated GELU, and open_clip's config
    cannot choose; by default such a checkpoint is refused, with ``True`` it converts to the tower
    with the other activation (what open_clip's own ports of these weights do; the model's outputs
    then change slightly: 2e-4 relative on the image embedding of a random ViT-B/16).
    """
    arch = _hf_arch(hf_config)
    if tokenizer_name is None:
        tokenizer_name = _SIGLIP_TOKENIZERS.get(arch.vocab)
        if tokenizer_name is None:
            raise ConfigError(f"transformers text_config.vocab_size = {arch.vocab} is not a released SigLIP "
                              f"tokenizer's ({sorted(_SIGLIP_TOKENIZERS)}); pass tokenizer_name= (a Hub repo or "
                              "folder holding the tokenizer) for open_clip's text_cfg.hf_tokenizer_name")
    timm_name = _find_timm_tower(arch, allow_act_change)
    return _oc_config(arch, timm_name, tokenizer_name), _convert(state_dict, _pairs(arch), to_hf=False)


# --- preprocessing: open_clip's preprocess_cfg <-> SiglipImageProcessor --------------------------

_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's codes, as transformers stores them
_SIGLIP_MEAN = _SIGLIP_STD = (0.5, 0.5, 0.5)  # every SigLIP and SigLIP2 release


def siglip_preprocessor_config(preprocess_cfg: Optional[Mapping[str, Any]], image_size: int) -> Dict[str, Any]:
    """open_clip ``preprocess_cfg`` -> ``preprocessor_config.json`` for ``SiglipImageProcessor``.

    SiglipImageProcessor squashes (resizes to ``image_size`` x ``image_size``, no crop), so only
    ``resize_mode 'squash'`` fits; a missing ``preprocess_cfg`` or field takes SigLIP's defaults
    (mean/std 0.5, bicubic), never OpenAI's.
    """
    pp = dict(preprocess_cfg or {})
    unknown = set(pp) - {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}
    if unknown:
        raise ConfigError(f"open_clip preprocess_cfg has the fields {sorted(unknown)}, which SiglipImageProcessor "
                          "cannot express")
    size = square_size(pp.get("size", image_size), "open_clip preprocess_cfg.size")
    if pp.get("resize_mode", "squash") != "squash":
        raise ConfigError(f"open_clip preprocess_cfg.resize_mode = {pp['resize_mode']!r}: SiglipImageProcessor "
                          "only squashes (resize to size x size, no crop); expected 'squash'")
    if pp.get("interpolation", "bicubic") not in _RESAMPLE:
        raise ConfigError(f"open_clip preprocess_cfg.interpolation = {pp['interpolation']!r}; expected one of "
                          f"{list(_RESAMPLE)}")
    if pp.get("mode", "RGB") != "RGB":
        raise ConfigError(f"open_clip preprocess_cfg.mode = {pp['mode']!r}; expected 'RGB'")
    return {
        "image_processor_type": "SiglipImageProcessor", "processor_class": "SiglipProcessor",
        "do_convert_rgb": True, "do_resize": True, "size": {"height": size, "width": size},
        "resample": _RESAMPLE[pp.get("interpolation", "bicubic")], "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [float(x) for x in pp.get("mean", _SIGLIP_MEAN)],
        "image_std": [float(x) for x in pp.get("std", _SIGLIP_STD)],
    }


def siglip_preprocess_cfg(preprocessor_config: Optional[Mapping[str, Any]], image_size: int) -> Dict[str, Any]:
    """``preprocessor_config.json`` of a SigLIP repo (or ``None``: SigLIP's defaults at
    ``image_size``) -> open_clip ``preprocess_cfg`` (``size``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode 'squash'``)."""
    p = dict(preprocessor_config or {})
    kind = p.get("image_processor_type", "SiglipImageProcessor")
    if kind not in ("SiglipImageProcessor", "SiglipImageProcessorFast"):
        raise ConfigError(f"preprocessor_config.json image_processor_type = {kind!r}; expected SiglipImageProcessor")
    for key, default in (("do_resize", True), ("do_rescale", True)):
        if not p.get(key, default):
            raise ConfigError(f"preprocessor_config.json {key} = false is not supported: open_clip's "
                              "preprocessing always resizes and scales to [0, 1]")
    if abs(float(p.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise ConfigError(f"preprocessor_config.json rescale_factor = {p['rescale_factor']}; expected 1/255")
    size = p.get("size", {"height": image_size, "width": image_size})
    if not isinstance(size, Mapping) or set(size) != {"height", "width"} or size["height"] != size["width"]:
        raise ConfigError(f"preprocessor_config.json size = {size!r}; expected a square {{'height': n, 'width': n}}")
    resample = {code: name for name, code in _RESAMPLE.items()}
    if p.get("resample", 3) not in resample:
        raise ConfigError(f"preprocessor_config.json resample = {p['resample']!r}; expected one of "
                          f"{sorted(resample)} (PIL codes: {resample})")
    normalize = p.get("do_normalize", True)
    return {
        "size": square_size(size["height"], "preprocessor_config.json size"),
        "mean": [float(x) for x in p.get("image_mean", _SIGLIP_MEAN)] if normalize else [0.0, 0.0, 0.0],
        "std": [float(x) for x in p.get("image_std", _SIGLIP_STD)] if normalize else [1.0, 1.0, 1.0],
        "interpolation": resample[p.get("resample", 3)], "resize_mode": "squash",
    }


# --- the folder: config.json + model.safetensors (+ preprocessor_config.json) --------------------

_HF_CONFIG, _HF_WEIGHTS, _HF_WEIGHTS_INDEX, _HF_PREPROCESSOR = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "preprocessor_config.json")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def _read_hf_weights(folder: Path) -> StateDict:
    if (folder / _HF_WEIGHTS).is_file():
        return read_safetensors(folder / _HF_WEIGHTS)
    if not (folder / _HF_WEIGHTS_INDEX).is_file():
        raise ModelNotFoundError(f"{folder} has no {_HF_WEIGHTS} (or {_HF_WEIGHTS_INDEX}); a transformers SigLIP "
                                 f"folder holds its weights there (found: {sorted(p.name for p in folder.iterdir())})")
    weight_map = read_json(folder / _HF_WEIGHTS_INDEX).get("weight_map")
    if not isinstance(weight_map, Mapping):
        raise ConfigError(f"{folder / _HF_WEIGHTS_INDEX} has no weight_map object")
    sd: StateDict = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise ConfigError(f"{folder / _HF_WEIGHTS_INDEX} names the shard {shard!r} outside the folder")
        sd.update(read_safetensors(folder / shard))
    return sd


def read_siglip_transformers_folder(folder, *, tokenizer_name: Optional[str] = None,
                                    allow_act_change: bool = False) -> Tuple[Dict[str, Any], StateDict]:
    """A transformers SigLIP folder -> (open_clip config ``{"model_cfg", "preprocess_cfg"}``, as in
    an ``open_clip_config.json``, and the open_clip state dict).

    Reads ``config.json``, ``model.safetensors`` (or its sharded index) and
    ``preprocessor_config.json`` (SigLIP's defaults when absent). ``tokenizer_name`` and
    ``allow_act_change`` as in ``siglip_hf_to_open_clip``; when the vocabulary is not a released
    SigLIP one and the folder holds its tokenizer (``tokenizer.json`` or ``spiece.model``), the
    tokenizer name defaults to the folder.
    """
    folder = Path(folder)
    if not (folder / _HF_CONFIG).is_file():
        raise ModelNotFoundError(f"{folder} has no {_HF_CONFIG}; expected a transformers SiglipModel folder")
    hf_config = read_json(folder / _HF_CONFIG)
    arch = _hf_arch(hf_config)
    if tokenizer_name is None and arch.vocab not in _SIGLIP_TOKENIZERS and any(
            (folder / f).is_file() for f in _TOKENIZER_FILES):
        tokenizer_name = str(folder)
    model_cfg, sd = siglip_hf_to_open_clip(hf_config, _read_hf_weights(folder), tokenizer_name=tokenizer_name,
                                           allow_act_change=allow_act_change)
    pp_path = folder / _HF_PREPROCESSOR
    preprocess = siglip_preprocess_cfg(read_json(pp_path) if pp_path.is_file() else None,
                                       arch.image)
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess}, sd


def write_siglip_transformers_folder(folder, open_clip_config: Mapping[str, Any],
                                     state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Write an open_clip SigLIP model (``open_clip_config`` = ``{"model_cfg", "preprocess_cfg"}``,
    as in an ``open_clip_config.json``; ``preprocess_cfg`` may be absent) as a transformers folder:
    ``model.safetensors``, then ``config.json`` and ``preprocessor_config.json``, each atomically.

    ``SiglipModel.from_pretrained(folder)`` and ``SiglipImageProcessor.from_pretrained(folder)``
    read it; the tokenizer files are not written here.
    """
    if not isinstance(open_clip_config, Mapping) or "model_cfg" not in open_clip_config:
        got = sorted(open_clip_config) if isinstance(open_clip_config, Mapping) else open_clip_config
        raise ConfigError(f"expected an open_clip config {{'model_cfg': ..., 'preprocess_cfg': ...}}; got {got!r}")
    hf_config, hf_sd = siglip_open_clip_to_hf(open_clip_config["model_cfg"], state_dict)
    image_size = hf_config["vision_config"]["image_size"]
    preprocessor = siglip_preprocessor_config(open_clip_config.get("preprocess_cfg"), image_size)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in hf_sd.items()}
    atomic_write(folder / _HF_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(folder / _HF_CONFIG, json.dumps(hf_config, indent=2) + "\n")
    atomic_write_text(folder / _HF_PREPROCESSOR, json.dumps(preprocessor, indent=2) + "\n")
    return folder
