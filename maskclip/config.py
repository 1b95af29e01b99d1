"""Model and preprocessing configs: dataclasses with a versioned JSON round trip.

A ``ModelConfig`` fully describes a dual encoder (both towers, the joint embedding and the
image preprocessing), so ``config.json`` + ``model.safetensors`` is a complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from . import resources
from .atomic import atomic_write_text
from .errors import ConfigError

FORMAT_VERSION = 1
CONFIG_TYPE = "maskclip"
# The layouts save_pretrained writes: the native one, and open_clip's and transformers' (they load it too).
FORMATS = ("maskclip", "open_clip", "transformers")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")
RESIZE_MODES = ("shortest", "squash", "longest")  # PreprocessConfig.resize_mode, as open_clip names them
STEMS = ("patch", "conv")  # image tower stems (maskclip.stem)
# open_clip's pooling and projection of a timm image tower (``vision_cfg.timm_pool`` / ``timm_proj``).
# ConvNeXt towers take "avg" or "" (open_clip's "": the network's own pooling, average for ConvNeXt).
TIMM_POOLS = ("map", "token", "avg")
TIMM_CONV_POOLS = ("", "avg")
TIMM_PROJS = ("linear", "mlp", "none", None)
# timm models maskclip builds as image towers (``maskclip.timm_vision``): the ViT and EVA blocks whose
# attention it knows, and ConvNeXt (``maskclip.timm_conv``: open_clip's convnext_* CLIPs).
# "test_vit*" are timm's tiny test configs (reg tokens, layer scale, MAP over prefix tokens).
SUPPORTED_TIMM_MODELS = ("vit_*_siglip_*", "eva02_*_clip_*", "convnext_*", "test_vit", "test_vit2", "test_vit3",
                         "test_convnext*")
TIMM_CONV_MODELS = ("convnext_*", "test_convnext*")  # the convolutional ones among them
# Activations a timm ViT tower takes as ``act_layer`` instead of its own (VisionConfig.act names -> timm's).
TIMM_ACTS = {"gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}


def conv_stem_channels(patch_size: int, width: int) -> list:
    """Output channels of each stride-2 convolution: ``[width / 2^(k-1), ..., width / 2, width]``, ``k = log2(p)``."""
    k = patch_size.bit_length() - 1
    if patch_size < 2 or 1 << k != patch_size:
        raise ConfigError(f"vision stem 'conv' needs a patch_size that is a power of two; got {patch_size}")
    if width % (1 << (k - 1)):
        raise ConfigError(f"vision stem 'conv' needs a width divisible by patch_size / 2 = {1 << (k - 1)}; got {width}")
    return [width >> (k - 1 - i) for i in range(k)]


@dataclass
class VisionConfig:
    """ViT image tower. Defaults are OpenAI's ViT-B/16."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    norm_eps: float = 1e-5
    ln_pre: bool = True  # OpenAI/open_clip: True; timm's plain ViT (SLIP): False
    patch_bias: bool = False  # OpenAI conv1 has no bias; timm/SLIP/RILS patch embeddings do
    pool: str = "token"  # "token": class token (CLIP); "mean": mean of patch tokens (RILS)
    pos_embed: str = "learned"  # "learned" | "sincos" (fixed 2-D sin-cos, RILS/MAE)
    stem: str = "patch"  # "patch": one patch_size x patch_size projection; "conv": maskclip.stem.ConvStem
    # A timm model as the image tower, as open_clip builds it (``maskclip.timm_vision``): then the
    # fields above only describe it (patch_size, width, layers, heads: read from the timm model)
    # and ``timm_pool`` / ``timm_proj`` / ``timm_proj_bias`` are open_clip's ``vision_cfg`` fields.
    # ``act`` is then "gelu" (the timm model's own activation) or, for ViT towers, "gelu_tanh" /
    # "quick_gelu": timm's ``act_layer`` override (transformers' SigLIP checkpoints declare tanh GELU).
    timm_model_name: Optional[str] = None
    timm_pool: str = "avg"
    timm_proj: Optional[str] = "linear"
    timm_proj_bias: bool = False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def validate(self) -> None:
        _positive(self, "image_size", "patch_size", "width", "layers", "heads")
        _divides(self.width, self.heads, "vision width", "vision heads")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision image_size must be a multiple of patch_size; got image_size={self.image_size}, "
                f"patch_size={self.patch_size}"
            )
        _real(self, "mlp_ratio", "norm_eps")
        _flags(self, "ln_pre", "patch_bias")
        _hidden(self.width, self.mlp_ratio, "vision")
        _choice("vision act", self.act, ACTIVATIONS)
        _choice("vision pool", self.pool, ("token", "mean"))
        _choice("vision pos_embed", self.pos_embed, ("learned", "sincos"))
        _choice("vision stem", self.stem, STEMS)
        if self.stem == "conv":
            conv_stem_channels(self.patch_size, self.width)
        if self.pos_embed == "sincos" and self.width % 4:
            raise ConfigError(f"vision pos_embed 'sincos' needs a width divisible by 4; got width={self.width}")
        if self.timm_model_name is not None:
            self._validate_timm()

    def _validate_timm(self) -> None:
        check_timm_model_name(self.timm_model_name)
        if self.stem != "patch":
            raise ConfigError(f"vision stem {self.stem!r} is for maskclip's own ViT; a timm image tower "
                              f"({self.timm_model_name!r}) has its own patch embedding")
        conv = is_timm_conv(self.timm_model_name)
        _timm_pool_choice(self.timm_model_name, self.timm_pool, conv)
        _choice("vision timm_proj", self.timm_proj, TIMM_PROJS)
        _flags(self, "timm_proj_bias")
        if self.act != "gelu" and (conv or self.timm_model_name.startswith("eva") or self.act not in TIMM_ACTS):
            raise ConfigError(f"vision act {self.act!r} is not available for the timm image tower "
                              f"{self.timm_model_name!r}: 'gelu' (its own activation), or for ViT towers "
                              f"{list(TIMM_ACTS)} (timm's act_layer)")


@dataclass
class TextConfig:
    """Text transformer. Defaults are OpenAI's: causal, pooled at the end-of-text token (the max id).

    SigLIP's (open_clip ``no_causal_mask``, ``pool_type: "last"``, ``proj_bias``): full attention,
    pooled at the last position, a bias on the projection. ``hf_tokenizer_name`` and
    ``tokenizer_kwargs`` are open_clip's ``text_cfg`` fields naming a non-CLIP tokenizer (kept for
    export; the files come from the checkpoint folder). ``tokenizer_kwargs`` is a dict (maybe empty)
    for a model read from open_clip, whose clean-up (``clean``) then applies; ``None`` for one read
    from transformers, whose tokenizer cleans nothing.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    act: str = "quick_gelu"
    norm_eps: float = 1e-5
    causal: bool = True
    pool: str = "argmax"  # "argmax": the end-of-text token (CLIP) | "last": the last position (SigLIP)
    proj_bias: bool = False
    hf_tokenizer_name: Optional[str] = None
    tokenizer_kwargs: Optional[Dict[str, Any]] = None

    @property
    def padding_invariant(self) -> bool:
        """True when positions after the end of text cannot change the pooled output (causal, pooled at
        end of text): the tower may stop at a batch's longest text, an export may take any length."""
        return self.causal and self.pool == "argmax"

    def validate(self) -> None:
        _positive(self, "context_length", "vocab_size", "width", "layers", "heads")
        _flags(self, "causal", "proj_bias")
        _choice("text pool", self.pool, ("argmax", "last"))
        if self.hf_tokenizer_name is not None and not isinstance(self.hf_tokenizer_name, str):
            raise ConfigError(f"text hf_tokenizer_name must be a string or null; got {self.hf_tokenizer_name!r}")
        if self.tokenizer_kwargs is not None and not isinstance(self.tokenizer_kwargs, dict):
            raise ConfigError(f"text tokenizer_kwargs must be an object or null; got {self.tokenizer_kwargs!r}")
        _divides(self.width, self.heads, "text width", "text heads")
        _real(self, "mlp_ratio", "norm_eps")
        _hidden(self.width, self.mlp_ratio, "text")
        _choice("text act", self.act, ACTIVATIONS)


@dataclass
class PreprocessConfig:
    """Image preprocessing: resize the shorter side, center crop, normalise (OpenAI CLIP)."""

    image_size: int = 224
    mean: Tuple[float, float, float] = OPENAI_MEAN
    std: Tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    # "shortest" (+center crop) | "squash" (resize to S x S) | "longest" (longer side to S, centred on a
    # black S x S canvas: open_clip's ResizeKeepRatio(longest=1) + CenterCropOrPad with fill 0)
    resize_mode: str = "shortest"

    def validate(self) -> None:
        _positive(self, "image_size")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(map(_is_real, value)):
                raise ConfigError(f"preprocess {name} needs 3 values (R, G, B), each a finite number; got {value!r}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess std must be positive; got {list(self.std)}")
        _choice("preprocess interpolation", self.interpolation, ("bicubic", "bilinear", "nearest"))
        _choice("preprocess resize_mode", self.resize_mode, RESIZE_MODES)


@dataclass
class ModelConfig:
    """A whole dual encoder: both towers, the joint embedding size and the preprocessing."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    logit_scale_init: float = 2.6592600  # ln(1 / 0.07)
    # Sigmoid-trained models (SigLIP): the learned bias b of sigmoid(exp(logit_scale) * cos + b). None for
    # softmax-trained models, which then have no ``logit_bias`` parameter at all (state dicts unchanged).
    logit_bias_init: Optional[float] = None
    name: Optional[str] = None

    def validate(self) -> "ModelConfig":
        _positive(self, "embed_dim")
        if not _is_real(self.logit_scale_init, positive=False):
            raise ConfigError(f"logit_scale_init must be a finite number; got {self.logit_scale_init!r}")
        if self.logit_bias_init is not None and not _is_real(self.logit_bias_init, positive=False):
            raise ConfigError(f"logit_bias_init must be a finite number or null; got {self.logit_bias_init!r}")
        if self.name is not None and not isinstance(self.name, str):
            raise ConfigError(f"name must be a string or null; got {self.name!r}")
        self.vision.validate()
        self.text.validate()
        self.preprocess.validate()
        return self

    # --- JSON round trip -------------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("mean", "std"):
            d["preprocess"][key] = list(d["preprocess"][key])
        return {"config_type": CONFIG_TYPE, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object; got {type(d).__name__}")
        d = dict(d)
        kind = d.pop("config_type", CONFIG_TYPE)
        if kind != CONFIG_TYPE:
            raise ConfigError(f"expected config_type {CONFIG_TYPE!r}; got {kind!r}")
        version = d.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"unsupported maskclip config format_version {version!r}; this maskclip reads version "
                f"{FORMAT_VERSION} (upgrade maskclip to read newer checkpoints)"
            )
        parts = {
            "vision": _build(VisionConfig, d.pop("vision", {}), "vision"),
            "text": _build(TextConfig, d.pop("text", {}), "text"),
            "preprocess": _build(PreprocessConfig, d.pop("preprocess", {}), "preprocess"),
        }
        pp = parts["preprocess"]
        if isinstance(pp.mean, list) and isinstance(pp.std, list):  # JSON arrays; anything else fails validate()
            pp.mean, pp.std = tuple(pp.mean), tuple(pp.std)
        cfg = _build(cls, d, "model", **parts)
        return cfg.validate()

    def to_json(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path) -> "ModelConfig":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise ConfigError(f"{path} is not valid JSON: {type(e).__name__}: {e}") from None
        return cls.from_dict(d)


def check_timm_model_name(name) -> None:
    """``ConfigError`` unless ``name`` matches one of ``SUPPORTED_TIMM_MODELS`` (checked without importing timm)."""
    if not isinstance(name, str) or not any(fnmatch(name, p) for p in SUPPORTED_TIMM_MODELS):
        raise ConfigError(f"the timm image tower {name!r} is not supported by maskclip; supported timm models: "
                          f"{list(SUPPORTED_TIMM_MODELS)} (SigLIP / SigLIP2 ViTs, EVA02-CLIP, ConvNeXt)")


def check_timm_pool(name: str, pool) -> None:
    """``ConfigError`` unless ``pool`` is a pooling the timm tower ``name`` takes (ViT: ``TIMM_POOLS``,
    ConvNeXt: ``TIMM_CONV_POOLS``)."""
    _timm_pool_choice(name, pool, is_timm_conv(name))


def _timm_pool_choice(name: str, pool, conv: bool) -> None:
    _choice(f"vision timm_pool of {name!r}", pool, TIMM_CONV_POOLS if conv else TIMM_POOLS)


def is_timm_conv(name: Optional[str]) -> bool:
    """True for a timm tower that is a ConvNeXt (``maskclip.timm_conv``), False for ViTs and maskclip's own."""
    return isinstance(name, str) and any(fnmatch(name, p) for p in TIMM_CONV_MODELS)


def _build(cls, d, where, **extra):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {where!r} must be an object; got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {where} config keys {unknown}; known keys are {sorted(known)}")
    try:
        return cls(**d, **extra)
    except TypeError as e:
        raise ConfigError(f"bad {where} config: {e}") from None


def _positive(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive integer; got {value!r}")


def _is_real(value, positive: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 or not positive


def _real(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if not _is_real(value):
            raise ConfigError(f"{type(obj).__name__}.{name} must be a positive finite number; got {value!r}")


def _flags(obj, *names):
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, bool):
            raise ConfigError(f"{type(obj).__name__}.{name} must be true or false; got {value!r}")


def _hidden(width, mlp_ratio, tower):
    hidden = width * mlp_ratio
    if not math.isfinite(hidden) or int(hidden) < 1:
        raise ConfigError(f"{tower} MLP width int(width * mlp_ratio) = int({width} * {mlp_ratio}) must be at least 1")


def _divides(width, heads, wname, hname):
    if width % heads:
        raise ConfigError(f"{wname} ({width}) must be divisible by {hname} ({heads})")


def _choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}; got {value!r}")


def architectures() -> Dict[str, Dict[str, Any]]:
    """The named architectures bundled as data (``maskclip/resources/architectures.json``)."""
    return resources.read_json("architectures.json")


def architecture_config(name: str, act: Optional[str] = None) -> ModelConfig:
    """A ``ModelConfig`` for a named architecture (``"vit-b-16"``, ``"tiny"``, ...); ``act`` sets both towers."""
    archs = architectures()
    if name not in archs:
        raise ConfigError(f"unknown architecture {name!r}; known: {sorted(archs)}")
    d = json.loads(json.dumps(archs[name]))
    if act is not None:
        d.setdefault("vision", {})["act"] = act
        d.setdefault("text", {})["act"] = act
    d.setdefault("preprocess", {}).setdefault("image_size", d.get("vision", {}).get("image_size", 224))
    return ModelConfig.from_dict({"format_version": FORMAT_VERSION, "name": name, **d})
