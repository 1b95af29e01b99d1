"""State-dict and config converters between CLIP checkpoint layouts.

Layouts (``detect_layout``):

- ``maskclip``: the native names: OpenAI CLIP's, with the text tower under ``text.``;
- ``openai``: OpenAI CLIP and open_clip's ``CLIP``: ``visual.*`` + top-level ``token_embedding.weight``;
- ``transformers``: ``CLIPModel``: ``vision_model.*``, ``text_model.*``, q/k/v projections split;
- ``timm``: a timm CLIP ViT, vision tower only: ``patch_embed.proj``, ``blocks.*``, ``head``;
- ``slip``: facebookresearch/SLIP: a timm ViT under ``visual.`` + ``image_projection`` + OpenAI text;
- ``rils``: hustvl/RILS: an MAE ViT under ``visual.`` (q and v biases, fixed sin-cos positions,
  mean of the normalised patch tokens) + ``image_projection`` + OpenAI text.

Each layout is a table of rules pairing a native key with its key(s) in the other layout and the
tensor operation between them; both directions come from the same table, so round trips are
exact. Imports are strict: a key that no rule consumes and that the layout's drop list does not
name raises ``WeightsError``, and a config field maskclip cannot honour raises ``ConfigError``:
a checkpoint never loads silently wrong.

What weights cannot tell (``to_native`` and the ``from_*`` functions infer the rest from shapes,
as OpenAI's ``build_model`` does):

- attention heads: OpenAI's rule, ``width // 64`` (SLIP's ViT-S/16 is the known exception: 12
  heads at width 384); pass ``vision_heads=`` / ``text_heads=`` for anything else;
- the activation: QuickGELU for OpenAI-layout weights, GELU for timm/SLIP/RILS vision towers,
  QuickGELU for SLIP/RILS text towers; ``act=`` overrides (a name for both towers, or a
  ``(vision, text)`` pair);
- LayerNorm eps: 1e-5 (OpenAI, transformers, timm CLIP ViTs), 1e-6 (timm's plain ViT, SLIP, RILS).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from .config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from .errors import ConfigError, WeightsError
from .layers import sincos_2d

StateDict = Dict[str, torch.Tensor]
Act = Union[str, Tuple[str, str], None]

LAYOUTS = ("maskclip", "openai", "transformers", "timm", "slip", "rils")
_WRAPPER_KEYS = ("state_dict", "model", "module")
_DEFAULT_LOGIT_SCALE = ModelConfig().logit_scale_init


# --- unwrapping and detection --------------------------------------------------------------

def unwrap_checkpoint(obj: Any, source: str = "the checkpoint") -> StateDict:
    """A ``torch.load`` result -> a flat state dict of tensors.

    Descends into ``{"state_dict": ...}``, ``{"model": ...}`` and ``{"module": ...}`` wrappers
    (SLIP saves ``{"epoch", "state_dict", "optimizer", "args", ...}``), strips the ``module.``
    prefix that DistributedDataParallel adds, and drops non-tensor entries.
    """
    while isinstance(obj, Mapping) and not _tensor_items(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    sd = dict(_tensor_items(obj))
    if not sd:
        raise WeightsError(
            f"no tensors found in {source}; its top-level keys are {sorted(map(str, obj))[:10]}. Expected a "
            f"state dict, or a dict holding one under {list(_WRAPPER_KEYS)}"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _tensor_items(d: Mapping) -> List[Tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)]


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Which key layout ``sd`` is in: one of ``LAYOUTS``; ``WeightsError`` if none fits."""
    keys = set(sd)
    if "text.token_embedding.weight" in keys and any(k.startswith("visual.") for k in keys):
        return "maskclip"
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "transformers"
    if "visual.patch_embed.proj.weight" in keys and "image_projection" in keys:
        return "rils" if any(k.endswith(".attn.q_bias") for k in keys) else "slip"
    if "token_embedding.weight" in keys and any(k.startswith("visual.") for k in keys):
        return "openai"
    if "patch_embed.proj.weight" in keys and any(k.startswith("blocks.") for k in keys):
        return "timm"
    raise WeightsError(
        f"cannot tell which checkpoint layout these {len(keys)} tensors are in; some keys: {sorted(keys)[:8]}. "
        "Known layouts: maskclip (visual.*, text.*), openai/open_clip (visual.*, token_embedding.weight), "
        "transformers (vision_model.*, text_model.*), timm (patch_embed.*, blocks.*), "
        "slip (visual.patch_embed.*, image_projection), rils (as slip, with attn.q_bias/v_bias)"
    )


# --- rules: one table per layout, applied in either direction -------------------------------

@dataclass(frozen=True)
class _Rule:
    """A native key, its key(s) in another layout, and the tensor operation between them."""

    native: str
    other: Tuple[str, ...]
    op: str = "id"  # id | T (transpose) | cls ([D] <-> [1, 1, D]) | pos ([N, D] <-> [1, N, D]) | qkv | qv


def _to_native_op(op: str, tensors: Sequence[torch.Tensor], rule: _Rule) -> torch.Tensor:
    (a, *_) = tensors
    if op == "id":
        return a
    if op == "T":
        return a.t().contiguous()
    if op in ("cls", "pos"):
        want = 3
        if a.dim() != want or a.shape[0] != 1 or (op == "cls" and a.shape[1] != 1):
            raise WeightsError(f"{rule.other[0]} has shape {list(a.shape)}; expected "
                               f"{'[1, 1, D]' if op == 'cls' else '[1, N, D]'}")
        return a.reshape(a.shape[-1]) if op == "cls" else a[0]
    if op == "qkv":
        return torch.cat(list(tensors), dim=0)
    if op == "qv":
        q, v = tensors
        return torch.cat([q, torch.zeros_like(q), v], dim=0)
    raise AssertionError(op)


def _from_native_op(op: str, t: torch.Tensor, rule: _Rule) -> List[torch.Tensor]:
    if op == "id":
        return [t]
    if op == "T":
        return [t.t().contiguous()]
    if op == "cls":
        return [t.reshape(1, 1, -1)]
    if op == "pos":
        return [t[None]]
    if op in ("qkv", "qv"):
        if t.shape[0] % 3:
            raise WeightsError(f"{rule.native} has {t.shape[0]} rows; expected 3 x width (q, k, v)")
        q, k, v = (x.clone() for x in t.chunk(3, dim=0))
        if op == "qkv":
            return [q, k, v]
        if torch.count_nonzero(k):
            raise WeightsError(f"{rule.native}: this layout has no key bias (it is fixed at 0), but the "
                               "checkpoint's key bias is non-zero; converting would change the model")
        return [q, v]
    raise AssertionError(op)


def _apply_to_native(sd: Mapping[str, torch.Tensor], rules: Iterable[_Rule], layout: str,
                     drop: Sequence[str] = ()) -> StateDict:
    """Rename/reshape ``sd`` (in ``layout``) to native keys; every key must be used or dropped."""
    out, used, missing = {}, set(), []
    for rule in rules:
        absent = [k for k in rule.other if k not in sd]
        if absent:
            missing.extend(absent)
            continue
        out[rule.native] = _to_native_op(rule.op, [sd[k] for k in rule.other], rule)
        used.update(rule.other)
    extra = [k for k in sd if k not in used and not any(fnmatch.fnmatchcase(k, p) for p in drop)]
    _raise_key_mismatch(layout, missing, extra)
    return out


def _apply_from_native(sd: Mapping[str, torch.Tensor], rules: Iterable[_Rule], layout: str) -> StateDict:
    """Native ``sd`` -> ``layout`` keys; every native key must be used."""
    out, used, missing = {}, set(), []
    for rule in rules:
        if rule.native not in sd:
            missing.append(rule.native)
            continue
        out.update(zip(rule.other, _from_native_op(rule.op, sd[rule.native], rule)))
        used.add(rule.native)
    _raise_key_mismatch(f"native (for {layout})", missing, [k for k in sd if k not in used])
    return out


def _raise_key_mismatch(layout: str, missing: List[str], extra: List[str]) -> None:
    if not missing and not extra:
        return
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra)):
        if items:
            more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
            parts.append(f"{label}: {sorted(items)[:6]}{more}")
    raise WeightsError(f"the {layout} state dict does not have the keys this conversion expects: " + "; ".join(parts))


_BLOCK_KEYS = (
    "ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
    "mlp.c_proj.weight", "mlp.c_proj.bias",
)


def _block_table(renames: Sequence[Tuple[str, str]] = (), special: Mapping[str, Tuple[Tuple[str, ...], str]] = None):
    """Native block key -> (other block keys, op), renaming by prefix unless ``special`` says otherwise."""
    table = []
    for key in _BLOCK_KEYS:
        if special and key in special:
            table.append((key, *special[key]))
            continue
        other = next((new + key[len(old):] for old, new in renames if key.startswith(old)), key)
        table.append((key, (other,), "id"))
    return table


_TIMM_RENAMES = (("ln_1", "norm1"), ("ln_2", "norm2"), ("attn.in_proj_weight", "attn.qkv.weight"),
                 ("attn.in_proj_bias", "attn.qkv.bias"), ("attn.out_proj", "attn.proj"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_OPENAI_BLOCK = _block_table()
_TIMM_BLOCK = _block_table(_TIMM_RENAMES)
_RILS_BLOCK = _block_table(_TIMM_RENAMES, {"attn.in_proj_bias": (("attn.q_bias", "attn.v_bias"), "qv")})
_HF_BLOCK = _block_table(
    (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")),
    {f"attn.in_proj_{p}": (tuple(f"self_attn.{x}_proj.{p}" for x in "qkv"), "qkv") for p in ("weight", "bias")},
)


def _blocks(native: str, other: str, layers: int, table) -> List[_Rule]:
    return [_Rule(f"{native}{i}.{key}", tuple(f"{other}{i}.{o}" for o in others), op)
            for i in range(layers) for key, others, op in table]


def _pairs(pairs: Sequence[Tuple[str, str]], native: str = "", other: str = "", op: str = "id") -> List[_Rule]:
    return [_Rule(native + n, (other + o,), op) for n, o in pairs]


class _Arch(NamedTuple):
    """What decides the key set: depth of each tower and the optional vision parameters."""

    vision_layers: int
    text_layers: int
    ln_pre: bool = True
    patch_bias: bool = False

    @classmethod
    def of(cls, config: ModelConfig) -> "_Arch":
        v = config.vision
        return cls(v.layers, config.text.layers, v.ln_pre, v.patch_bias)


def _ln(native: str, other: str) -> List[Tuple[str, str]]:
    return [(f"{native}.weight", f"{other}.weight"), (f"{native}.bias", f"{other}.bias")]


def _openai_text_rules(layers: int, other: str = "") -> List[_Rule]:
    """Native ``text.*`` <-> OpenAI's top-level text names (under ``other``)."""
    top = [("token_embedding.weight", "token_embedding.weight"), ("positional_embedding", "positional_embedding"),
           *_ln("ln_final", "ln_final"), ("text_projection", "text_projection")]
    return (_pairs(top, "text.", other)
            + _blocks("text.transformer.resblocks.", f"{other}transformer.resblocks.", layers, _OPENAI_BLOCK))


def _openai_rules(arch: _Arch) -> List[_Rule]:
    vision = [("conv1.weight", "conv1.weight"), ("class_embedding", "class_embedding"),
              ("positional_embedding", "positional_embedding"), *_ln("ln_post", "ln_post"), ("proj", "proj")]
    if arch.patch_bias:
        vision.append(("conv1.bias", "conv1.bias"))
    if arch.ln_pre:
        vision += _ln("ln_pre", "ln_pre")
    return (_pairs(vision, "visual.", "visual.")
            + _blocks("visual.transformer.resblocks.", "visual.transformer.resblocks.", arch.vision_layers, _OPENAI_BLOCK)
            + _openai_text_rules(arch.text_layers)
            + [_Rule("logit_scale", ("logit_scale",))])


def _native_rules(arch: _Arch) -> List[_Rule]:
    return [_Rule(r.native, (r.native,)) for r in _openai_rules(arch)]


def _timm_vision_rules(arch: _Arch, other: str, block=_TIMM_BLOCK) -> List[_Rule]:
    """Native ``visual.*`` (without ``proj``) <-> timm ViT names under ``other``."""
    pairs = [("conv1.weight", "patch_embed.proj.weight"), *_ln("ln_post", "norm")]
    if arch.patch_bias:
        pairs.append(("conv1.bias", "patch_embed.proj.bias"))
    if arch.ln_pre:
        pairs += _ln("ln_pre", "norm_pre")
    return (_pairs(pairs, "visual.", other)
            + [_Rule("visual.class_embedding", (f"{other}cls_token",), "cls"),
               _Rule("visual.positional_embedding", (f"{other}pos_embed",), "pos")]
            + _blocks("visual.transformer.resblocks.", f"{other}blocks.", arch.vision_layers, block))


def _timm_rules(arch: _Arch) -> List[_Rule]:
    return _timm_vision_rules(arch, "") + [_Rule("visual.proj", ("head.weight",), "T")]


def _slip_rules(arch: _Arch, block=_TIMM_BLOCK) -> List[_Rule]:
    return (_timm_vision_rules(arch, "visual.", block)
            + [_Rule("visual.proj", ("image_projection",)), _Rule("logit_scale", ("logit_scale",))]
            + _openai_text_rules(arch.text_layers))


def _rils_rules(arch: _Arch) -> List[_Rule]:
    return _slip_rules(arch, _RILS_BLOCK)


def _transformers_rules(arch: _Arch) -> List[_Rule]:
    v, t = "vision_model.", "text_model."
    vision = [("conv1.weight", "embeddings.patch_embedding.weight"), ("class_embedding", "embeddings.class_embedding"),
              ("positional_embedding", "embeddings.position_embedding.weight"),
              *_ln("ln_pre", "pre_layrnorm"), *_ln("ln_post", "post_layernorm")]
    text = [("token_embedding.weight", "embeddings.token_embedding.weight"),
            ("positional_embedding", "embeddings.position_embedding.weight"), *_ln("ln_final", "final_layer_norm")]
    return (_pairs(vision, "visual.", v) + _pairs(text, "text.", t)
            + _blocks("visual.transformer.resblocks.", f"{v}encoder.layers.", arch.vision_layers, _HF_BLOCK)
            + _blocks("text.transformer.resblocks.", f"{t}encoder.layers.", arch.text_layers, _HF_BLOCK)
            + [_Rule("visual.proj", ("visual_projection.weight",), "T"),
               _Rule("text.text_projection", ("text_projection.weight",), "T"),
               _Rule("logit_scale", ("logit_scale",))])


def _count_layers(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks ``prefix{i}.*`` in ``sd``; they must be numbered 0 .. n-1."""
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in sd
             if k.startswith(prefix) and _is_index(k[len(prefix):].split(".", 1)[0])}
    if found != set(range(len(found))):
        raise WeightsError(f"blocks under {prefix!r} are numbered {sorted(found)}; expected 0 .. {len(found) - 1}")
    return len(found)


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


_DROP_ALWAYS = ("attn_mask", "*.attn_mask", "*position_ids", "input_resolution", "context_length", "vocab_size")


def _logit_scale_scalar(sd: StateDict) -> StateDict:
    """open_clip may store ``logit_scale`` as ``[1]`` (``nonscalar_logit_scale``); native is a scalar."""
    if "logit_scale" in sd and sd["logit_scale"].numel() == 1:
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    return sd


# --- OpenAI / open_clip / native -----------------------------------------------------------

def _native_arch(sd: Mapping[str, torch.Tensor], text_prefix: str) -> _Arch:
    if "visual.conv1.weight" not in sd and any(k.startswith("visual.layer1.") for k in sd):
        raise WeightsError("this checkpoint has a ResNet image tower (visual.layer1.*); maskclip supports ViT "
                           "image towers only")
    return _Arch(_count_layers(sd, "visual.transformer.resblocks."), _count_layers(sd, f"{text_prefix}transformer.resblocks."),
                 "visual.ln_pre.weight" in sd, "visual.conv1.bias" in sd)


def openai_to_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenAI CLIP / open_clip ``CLIP`` state dict -> native names (the text tower moves under ``text.``)."""
    return _logit_scale_scalar(_apply_to_native(sd, _openai_rules(_native_arch(sd, "")), "openai", _DROP_ALWAYS))


def native_to_openai(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native state dict -> OpenAI CLIP / open_clip ``CLIP`` names."""
    return _apply_from_native(sd, _openai_rules(_native_arch(sd, "text.")), "openai")


def _check_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    return _logit_scale_scalar(_apply_to_native(sd, _native_rules(_native_arch(sd, "text.")), "maskclip", _DROP_ALWAYS))


# --- config inference from shapes ----------------------------------------------------------

def _acts(act: Act, default: Tuple[str, str]) -> Tuple[str, str]:
    if act is None:
        return default
    if isinstance(act, str):
        return act, act
    if isinstance(act, (tuple, list)) and len(act) == 2 and all(isinstance(a, str) for a in act):
        return tuple(act)
    raise ConfigError(f"act must be an activation name or a (vision, text) pair of names; got {act!r}")


def _heads(width: int, given: Optional[int], tower: str, default: Optional[int] = None) -> int:
    if given is not None:
        return given
    if default is not None:
        return default
    if width % 64:
        raise WeightsError(
            f"cannot infer the number of {tower} attention heads: they are not stored in the weights, and the "
            f"{tower} width {width} is not a multiple of 64 (OpenAI's head width). Pass {tower}_heads=<int>"
        )
    return width // 64


def _mlp_ratio(width: int, hidden: int, where: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ConfigError(f"{where}: MLP width {hidden} is not int({width} * ratio) for any float ratio maskclip can store")
    return ratio


def _shape(sd: Mapping[str, torch.Tensor], key: str, dims: int) -> Tuple[int, ...]:
    if key not in sd:
        raise WeightsError(f"the checkpoint lacks {key!r}, needed to infer the model's shape")
    shape = tuple(sd[key].shape)
    if len(shape) != dims:
        raise WeightsError(f"{key} has shape {list(shape)}; expected {dims} dimensions")
    return shape


def infer_config(sd: Mapping[str, torch.Tensor], act: Act = None, vision_heads: Optional[int] = None,
                 text_heads: Optional[int] = None, vision_eps: float = 1e-5, text_eps: float = 1e-5,
                 pool: str = "token", pos_embed: str = "learned", default_act: Tuple[str, str] = ("quick_gelu",) * 2,
                 default_vision_heads: Optional[int] = None) -> ModelConfig:
    """A ``ModelConfig`` read off a NATIVE state dict's shapes (what cannot be read comes from the arguments)."""
    arch = _native_arch(sd, "text.")
    width, _, patch, _ = _shape(sd, "visual.conv1.weight", 4)
    positions, _ = _shape(sd, "visual.positional_embedding", 2)
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise WeightsError(f"visual.positional_embedding has {positions} rows; expected 1 + a square grid of patches")
    v_hidden = _shape(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0] if arch.vision_layers else 4 * width
    vocab, t_width = _shape(sd, "text.token_embedding.weight", 2)
    context, _ = _shape(sd, "text.positional_embedding", 2)
    t_hidden = _shape(sd, "text.transformer.resblocks.0.mlp.c_fc.weight", 2)[0] if arch.text_layers else 4 * t_width
    _, embed = _shape(sd, "visual.proj", 2)
    _, t_embed = _shape(sd, "text.text_projection", 2)
    if embed != t_embed:
        raise WeightsError(f"the image projection maps to {embed} dims but the text projection to {t_embed}; "
                           "they must share the joint embedding size")
    v_act, t_act = _acts(act, default_act)
    config = ModelConfig(
        embed_dim=embed,
        vision=VisionConfig(
            image_size=grid * patch, patch_size=patch, width=width, layers=arch.vision_layers,
            heads=_heads(width, vision_heads, "vision", default_vision_heads),
            mlp_ratio=_mlp_ratio(width, v_hidden, "vision"), act=v_act, norm_eps=vision_eps, ln_pre=arch.ln_pre,
            patch_bias=arch.patch_bias, pool=pool, pos_embed=pos_embed),
        text=TextConfig(context_length=context, vocab_size=vocab, width=t_width, layers=arch.text_layers,
                        heads=_heads(t_width, text_heads, "text"), mlp_ratio=_mlp_ratio(t_width, t_hidden, "text"),
                        act=t_act, norm_eps=text_eps),
        preprocess=PreprocessConfig(image_size=grid * patch),
    )
    return config.validate()


def _with_logit_scale(sd: StateDict) -> StateDict:
    sd.setdefault("logit_scale", torch.tensor(_DEFAULT_LOGIT_SCALE))
    return sd


# --- to_native: any layout, config from shapes ---------------------------------------------

def to_native(sd: Mapping[str, torch.Tensor], *, act: Act = None, text_sd: Optional[Mapping[str, torch.Tensor]] = None,
              vision_heads: Optional[int] = None, text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """Any known layout -> (config inferred from shapes, native state dict).

    ``text_sd`` supplies the text tower for a vision-only timm state dict (see ``from_timm``).
    The module docstring lists what the weights cannot tell and the defaults used for it.
    """
    layout = detect_layout(sd)
    kw = dict(act=act, vision_heads=vision_heads, text_heads=text_heads)
    if layout == "timm":
        if text_sd is None:
            raise WeightsError(
                "this is a timm ViT state dict (patch_embed.*, blocks.*): it holds only an image tower, and a "
                "dual encoder also needs a text tower. Pass text_sd=<an OpenAI/open_clip or maskclip state dict "
                "with the text weights> (to_native(sd, text_sd=...) or from_timm(vision_sd, text_sd))"
            )
        return from_timm(sd, text_sd, **kw)
    if text_sd is not None:
        raise WeightsError(f"text_sd is only for vision-only timm state dicts; this one is in the {layout} layout "
                           "and has its own text tower")
    if layout == "slip":
        return from_slip(sd, **kw)
    if layout == "rils":
        return from_rils(sd, **kw)
    if layout == "transformers":
        native = transformers_to_native(sd)
    elif layout == "openai":
        native = openai_to_native(sd)
    else:
        native = _check_native(sd)
    return infer_config(native, **kw), _with_logit_scale(native)


# --- timm ----------------------------------------------------------------------------------

def _timm_arch(sd: Mapping[str, torch.Tensor], prefix: str, text_layers: int) -> _Arch:
    return _Arch(_count_layers(sd, f"{prefix}blocks."), text_layers, f"{prefix}norm_pre.weight" in sd,
                 f"{prefix}patch_embed.proj.bias" in sd)


def _text_to_native(text_sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The text tower (and ``logit_scale``) of an OpenAI/open_clip or native state dict, in native names."""
    if any(k.startswith("text.") for k in text_sd):
        sd = {k: v for k, v in text_sd.items() if k.startswith("text.")}
    else:
        sd = {"text." + k: v for k, v in text_sd.items() if not k.startswith("visual.") and k != "logit_scale"}
    rules = [_Rule(r.native, (r.native,)) for r in _openai_text_rules(_count_layers(sd, "text.transformer.resblocks."))]
    out = _apply_to_native(sd, rules, "text", _DROP_ALWAYS + ("text.attn_mask",))
    if "logit_scale" in text_sd:
        out["logit_scale"] = text_sd["logit_scale"].reshape(())
    return out


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
    text = _text_to_native(text_sd)
    arch = _timm_arch(vision_sd, "", _count_layers(text, "text.transformer.resblocks."))
    vision = _apply_to_native(vision_sd, _timm_rules(arch), "timm", ("head.bias",))
    native = _with_logit_scale({**vision, **text})
    eps = 1e-5 if arch.ln_pre else 1e-6
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=eps, default_act=("gelu", "quick_gelu"))
    return config, native


def native_to_timm(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The image tower of a native model -> a timm CLIP ViT state dict (``head`` = projection, zero bias)."""
    _check_pool(config, "token", "timm (global_pool='token')")
    vision = {k: v for k, v in sd.items() if k.startswith("visual.")}
    out = _apply_from_native(vision, _timm_rules(_Arch.of(config)), "timm")
    out["head.bias"] = torch.zeros(out["head.weight"].shape[0], dtype=out["head.weight"].dtype)
    return out


def _check_pool(config: ModelConfig, pool: str, layout: str) -> None:
    if config.vision.pool != pool:
        raise ConfigError(f"{layout} pools the image tower with {pool!r}; this model's vision pool is "
                          f"{config.vision.pool!r}, which that layout cannot express")


# --- SLIP and RILS -------------------------------------------------------------------------

# SLIP's ViT-S/16 is timm's vit_small with 12 heads at width 384 (MoCo v3's), not width // 64.
_SLIP_HEADS = {384: 12}
_SLIP_DROP = _DROP_ALWAYS + ("image_mlp.*",)
_RILS_DROP = _DROP_ALWAYS + ("visual.decoder_*", "visual.mask_token")


def from_slip(sd: Mapping[str, torch.Tensor], *, act: Act = None, vision_heads: Optional[int] = None,
              text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """A SLIP/CLIP checkpoint of facebookresearch/SLIP (after ``unwrap_checkpoint``) -> native.

    Vision: timm ``vit_*_patch16_224`` (GELU, no ``norm_pre``, LayerNorm eps 1e-6, class token
    after the final norm) under ``visual.``, projected by ``image_projection``; text: OpenAI's
    names with QuickGELU. The SimCLR head ``image_mlp.*`` is dropped.
    """
    arch = _timm_arch(sd, "visual.", _count_layers(sd, "transformer.resblocks."))
    native = _logit_scale_scalar(_apply_to_native(sd, _slip_rules(arch), "slip", _SLIP_DROP))
    width = native["visual.conv1.weight"].shape[0]
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=1e-6,
                          default_act=("gelu", "quick_gelu"), default_vision_heads=_SLIP_HEADS.get(width))
    return config, _with_logit_scale(native)


def native_to_slip(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> SLIP's names (the structure follows ``config``: ``norm_pre``/patch bias only if it has them)."""
    _check_pool(config, "token", "SLIP")
    return _apply_from_native(sd, _slip_rules(_Arch.of(config)), "slip")


def from_rils(sd: Mapping[str, torch.Tensor], *, act: Act = None, vision_heads: Optional[int] = None,
              text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """A RILS checkpoint (hustvl/RILS ``models.RILS``, after ``unwrap_checkpoint``) -> native.

    Vision: MAE ViT under ``visual.`` (``qkv`` without bias + ``q_bias``/``v_bias``, the key bias
    fixed at 0; GELU; LayerNorm eps 1e-6; no ``norm_pre``); the image embedding is the mean of the
    patch tokens after ``visual.norm``, @ ``image_projection``. The MAE decoder is dropped. The
    position embedding is kept as stored, and marked ``sincos`` when it equals MAE's fixed 2-D
    sin-cos table (so other input sizes recompute it rather than resample it).
    """
    arch = _timm_arch(sd, "visual.", _count_layers(sd, "transformer.resblocks."))
    native = _logit_scale_scalar(_apply_to_native(sd, _rils_rules(arch), "rils", _RILS_DROP))
    pos = native["visual.positional_embedding"]
    grid = math.isqrt(pos.shape[0] - 1)
    is_sincos = grid * grid == pos.shape[0] - 1 and pos.shape[1] % 4 == 0 and torch.allclose(
        pos.float(), sincos_2d(pos.shape[1], (grid, grid)), atol=1e-5)
    config = infer_config(native, act, vision_heads, text_heads, vision_eps=1e-6, pool="mean",
                          pos_embed="sincos" if is_sincos else "learned", default_act=("gelu", "quick_gelu"))
    return config, _with_logit_scale(native)


def native_to_rils(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> RILS's names (encoder only; the MAE decoder is not part of a dual encoder)."""
    _check_pool(config, "mean", "RILS")
    return _apply_from_native(sd, _rils_rules(_Arch.of(config)), "rils")


# --- open_clip -----------------------------------------------------------------------------

# open_clip config fields: ("map",) = translated below; ("ignore",) = training-only or unused by
# this kind of tower; ("default", value) = anything else changes the model and is refused.
_OC_VISION_FIELDS = {
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
_OC_TEXT_FIELDS = {
    "context_length": ("map",), "vocab_size": ("map",), "width": ("map",), "heads": ("map",), "layers": ("map",),
    "mlp_ratio": ("map",), "norm_kwargs": ("map",), "pad_id": ("ignore",), "eos_id": ("ignore",),
    "output_tokens": ("ignore",), "hf_model_pretrained": ("ignore",), "hf_proj_type": ("ignore",),
    "hf_pooler_type": ("ignore",), "pool_type": ("default", "argmax"), "proj_type": ("default", "linear"),
    "hf_tokenizer_name": ("default", None), "tokenizer_mode": ("default", None), "tokenizer_kwargs": ("default", None),
    "ls_init_value": ("default", None), "embed_cls": ("default", False), "no_causal_mask": ("default", False),
    "final_ln_after_pool": ("default", False), "proj_bias": ("default", False), "act_kwargs": ("default", None),
    "block_type": ("default", None), "qk_norm": ("default", False), "scaled_cosine_attn": ("default", False),
    "scale_heads": ("default", False), "scale_attn_inner": ("default", False), "scale_attn": ("default", False),
    "scale_fc": ("default", False), "hf_model_name": ("default", None),
}
_OC_MODEL_FIELDS = {
    "embed_dim": ("map",), "quick_gelu": ("map",), "vision_cfg": ("map",), "text_cfg": ("map",),
    "custom_text": ("ignore",), "init_logit_scale": ("map",), "nonscalar_logit_scale": ("ignore",),
    "output_dict": ("ignore",), "init_logit_bias": ("default", None), "multimodal_cfg": ("default", None),
}
_OC_DEFAULT_BLOCK_TYPES = (None, "default")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def _check_fields(cfg: Mapping[str, Any], spec: Mapping[str, tuple], where: str) -> None:
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"open_clip {where} must be an object; got {type(cfg).__name__}")
    for key, value in cfg.items():
        rule = spec.get(key)
        if rule is None:
            raise ConfigError(f"open_clip {where} has the field {key!r}, which maskclip does not know; refusing "
                              "to load a model it might build wrong")
        if rule[0] != "default":
            continue
        default = rule[1]
        ok = value in _OC_DEFAULT_BLOCK_TYPES if key == "block_type" else (
            value == default or (default in (None, False) and not value))
        if not ok:
            raise ConfigError(f"open_clip {where}.{key} = {value!r} is not supported by maskclip (supported: "
                              f"{default!r}); this model cannot be loaded without changing what it computes")


def _square(value, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"open_clip {field} = {list(value)} is not square; maskclip supports square sizes only")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"open_clip {field} must be an integer; got {value!r}")
    return value


def _oc_eps(cfg: Mapping[str, Any], where: str) -> float:
    kw = cfg.get("norm_kwargs") or {}
    if set(kw) - {"eps"}:
        raise ConfigError(f"open_clip {where}.norm_kwargs {kw} is not supported; maskclip reads only 'eps'")
    return float(kw.get("eps", 1e-5))


def _oc_vision(cfg: Mapping[str, Any], act: str) -> VisionConfig:
    _check_fields(cfg, _OC_VISION_FIELDS, "vision_cfg")
    layers = cfg.get("layers", 12)
    if isinstance(layers, (list, tuple)):
        raise ConfigError(f"open_clip vision_cfg.layers = {list(layers)} describes a ResNet; maskclip supports "
                          "ViT image towers only")
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
        image_size=_square(cfg.get("image_size", 224), "vision_cfg.image_size"),
        patch_size=_square(cfg.get("patch_size", 16), "vision_cfg.patch_size"), width=width, layers=layers,
        heads=width // head_width, mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=act,
        norm_eps=_oc_eps(cfg, "vision_cfg"), ln_pre=not cfg.get("no_ln_pre", False), pool=pool, pos_embed=pos)


def _oc_text(cfg: Mapping[str, Any], act: str) -> TextConfig:
    _check_fields(cfg, _OC_TEXT_FIELDS, "text_cfg")
    return TextConfig(context_length=cfg.get("context_length", 77), vocab_size=cfg.get("vocab_size", 49408),
                      width=cfg.get("width", 512), layers=cfg.get("layers", 12), heads=cfg.get("heads", 8),
                      mlp_ratio=float(cfg.get("mlp_ratio", 4.0)), act=act, norm_eps=_oc_eps(cfg, "text_cfg"))


def _oc_preprocess(cfg: Mapping[str, Any], image_size: int) -> PreprocessConfig:
    pp = PreprocessConfig(image_size=image_size)
    for key, value in cfg.items():
        if key in ("mean", "std"):
            setattr(pp, key, tuple(float(x) for x in value))
        elif key == "interpolation":
            if value not in _INTERPOLATIONS:
                raise ConfigError(f"open_clip preprocess_cfg.interpolation = {value!r} is not supported "
                                  f"(supported: {list(_INTERPOLATIONS)})")
            pp.interpolation = value
        elif key == "resize_mode":
            if value not in ("shortest", "squash"):
                raise ConfigError(f"open_clip preprocess_cfg.resize_mode = {value!r} is not supported "
                                  "(supported: 'shortest', 'squash')")
            pp.resize_mode = value
        elif key == "mode" and value != "RGB":
            raise ConfigError(f"open_clip preprocess_cfg.mode = {value!r} is not supported (supported: 'RGB')")
        elif key not in ("size", "mode", "fill_color"):  # open_clip itself sets size from the image tower
            raise ConfigError(f"open_clip preprocess_cfg has the field {key!r}, which maskclip does not know")
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
    _check_fields(model_cfg, _OC_MODEL_FIELDS, "model_cfg")
    for name in ("vision_cfg", "text_cfg", "embed_dim"):
        if name not in model_cfg:
            raise ConfigError(f"open_clip model_cfg lacks {name!r}")
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    vision = _oc_vision(model_cfg["vision_cfg"], act)
    config = ModelConfig(
        embed_dim=model_cfg["embed_dim"], vision=vision, text=_oc_text(model_cfg["text_cfg"], act),
        preprocess=_oc_preprocess(oc_config.get("preprocess_cfg") or {}, vision.image_size),
        logit_scale_init=float(model_cfg.get("init_logit_scale", _DEFAULT_LOGIT_SCALE)),
    ).validate()
    # CustomTextCLIP keeps its text tower under `text.` (the native names); CLIP at the top level.
    native = _check_native(sd) if detect_layout(sd) == "maskclip" else openai_to_native(sd)
    return config, _with_logit_scale(native)


def to_open_clip(config: ModelConfig, sd: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, Any], StateDict]:
    """Native -> (``open_clip_config.json`` dict, open_clip ``CLIP`` state dict).

    The folder (config + ``open_clip_model.safetensors``) loads in open_clip with
    ``create_model_and_transforms("local-dir:<folder>")`` or, on the Hub, ``"hf-hub:org/repo"``.
    """
    v, t, pp = config.vision, config.text, config.preprocess
    if v.act != t.act:
        raise ConfigError(f"open_clip has one activation for both towers (quick_gelu true/false); this model "
                          f"uses {v.act!r} for vision and {t.act!r} for text")
    if v.patch_bias:
        raise ConfigError("open_clip's patch embedding (conv1) has no bias; this model's vision patch_bias is True")
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
    if config.logit_scale_init != _DEFAULT_LOGIT_SCALE:
        model_cfg["init_logit_scale"] = config.logit_scale_init
    preprocess_cfg = {"mean": list(pp.mean), "std": list(pp.std), "interpolation": pp.interpolation,
                      "resize_mode": pp.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, native_to_openai(sd)


# --- transformers --------------------------------------------------------------------------

_HF_ACTS = ("quick_gelu", "gelu")  # transformers' "gelu" is the exact (erf) GELU, as torch's nn.GELU
_HF_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's codes, as CLIPImageProcessor stores them
_HF_TEXT_DEFAULTS = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                     "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
                     "layer_norm_eps": 1e-5, "eos_token_id": 49407}
_HF_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
                       "num_channels": 3}
_HF_DROP = _DROP_ALWAYS


def transformers_to_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """transformers ``CLIPModel`` state dict -> native (q/k/v fused into ``in_proj``, projections transposed)."""
    arch = _Arch(_count_layers(sd, "vision_model.encoder.layers."), _count_layers(sd, "text_model.encoder.layers."))
    return _apply_to_native(sd, _transformers_rules(arch), "transformers", _HF_DROP)


def native_to_transformers(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native -> transformers ``CLIPModel`` names (needs ``ln_pre`` and no patch bias)."""
    return _apply_from_native(sd, _transformers_rules(_native_arch(sd, "text.")), "transformers")


def _hf_sub(hf_config: Mapping[str, Any], name: str, defaults: Mapping[str, Any]) -> Dict[str, Any]:
    sub = hf_config.get(name) or hf_config.get(f"{name}_dict") or {}
    if not isinstance(sub, Mapping):
        raise ConfigError(f"transformers config {name} must be an object; got {type(sub).__name__}")
    merged = {**defaults, **{k: v for k, v in sub.items() if k in defaults and v is not None}}
    if merged["hidden_act"] not in _HF_ACTS:
        raise ConfigError(f"transformers {name}.hidden_act = {merged['hidden_act']!r} is not supported "
                          f"(supported: {list(_HF_ACTS)})")
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
    t, v = _hf_sub(hf_config, "text_config", _HF_TEXT_DEFAULTS), _hf_sub(hf_config, "vision_config", _HF_VISION_DEFAULTS)
    if t["eos_token_id"] not in (2, t["vocab_size"] - 1):
        raise ConfigError(f"transformers text_config.eos_token_id = {t['eos_token_id']} is not supported: maskclip "
                          f"pools at the largest token id ({t['vocab_size'] - 1}), the end-of-text token of CLIP's tokenizer")
    if v["num_channels"] != 3:
        raise ConfigError(f"transformers vision_config.num_channels = {v['num_channels']}; maskclip reads RGB (3)")
    image_size = _square(v["image_size"], "vision_config.image_size")
    config = ModelConfig(
        embed_dim=hf_config.get("projection_dim") or 512,
        vision=VisionConfig(
            image_size=image_size, patch_size=_square(v["patch_size"], "vision_config.patch_size"),
            width=v["hidden_size"], layers=v["num_hidden_layers"], heads=v["num_attention_heads"],
            mlp_ratio=_mlp_ratio(v["hidden_size"], v["intermediate_size"], "vision_config"),
            act=v["hidden_act"], norm_eps=float(v["layer_norm_eps"])),
        text=TextConfig(
            context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"], width=t["hidden_size"],
            layers=t["num_hidden_layers"], heads=t["num_attention_heads"],
            mlp_ratio=_mlp_ratio(t["hidden_size"], t["intermediate_size"], "text_config"),
            act=t["hidden_act"], norm_eps=float(t["layer_norm_eps"])),
        preprocess=PreprocessConfig(image_size=image_size),
        logit_scale_init=float(hf_config.get("logit_scale_init_value", 2.6592)),
    ).validate()
    return config, _with_logit_scale(transformers_to_native(sd))


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
                     (v.pos_embed == "learned", f"its position embedding is learned; this model's is {v.pos_embed!r}")):
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
    squash = pp.resize_mode == "squash"
    return {
        "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
        "do_convert_rgb": True, "do_resize": True,
        "size": {"height": s, "width": s} if squash else {"shortest_edge": s},
        "resample": _HF_RESAMPLE[pp.interpolation], "do_center_crop": not squash,
        "crop_size": {"height": s, "width": s}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(pp.mean), "image_std": list(pp.std),
    }


__all__ = [
    "LAYOUTS", "unwrap_checkpoint", "detect_layout", "to_native", "infer_config",
    "openai_to_native", "native_to_openai", "from_open_clip", "to_open_clip",
    "transformers_to_native", "native_to_transformers", "from_transformers", "to_transformers",
    "transformers_preprocessor_config", "from_timm", "native_to_timm", "from_slip", "native_to_slip",
    "from_rils", "native_to_rils",
]
