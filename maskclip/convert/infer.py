"""Shape inference: the architecture a native state dict's tensors imply.

What the weights cannot tell comes from the caller, with OpenAI's defaults (as its
``build_model`` does): attention heads ``width // 64``, QuickGELU, LayerNorm eps 1e-5.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Tuple, Union

import torch

from ..config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from ..errors import ConfigError, WeightsError
from .rules import Arch, StateDict

Act = Union[str, Tuple[str, str], None]

DEFAULT_LOGIT_SCALE = ModelConfig().logit_scale_init


def count_blocks(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of blocks ``prefix{i}.*`` in ``sd``; ``WeightsError`` unless they are numbered 0 .. n-1."""
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
    found = {int(k[len(prefix):].split(".", 1)[0]) for k in sd
             if k.startswith(prefix) and _is_index(k[len(prefix):].split(".", 1)[0])}
    if found != set(range(len(found))):
        raise WeightsError(f"blocks under {prefix!r} are numbered {sorted(found)}; expected 0 .. {len(found) - 1}")
    return len(found)


def _is_index(text: str) -> bool:
    return text.isascii() and text.isdigit()


def native_arch(sd: Mapping[str, torch.Tensor], text_prefix: str) -> Arch:
    """The key-set facts of native (or OpenAI, ``text_prefix=""``) weights: depths, ln_pre, patch bias."""
    if "visual.conv1.weight" not in sd and any(k.startswith("visual.layer1.") for k in sd):
        raise WeightsError("this checkpoint has a ResNet image tower (visual.layer1.*); maskclip supports ViT "
                           "image towers only")
    return Arch(count_blocks(sd, "visual.transformer.resblocks."), count_blocks(sd, f"{text_prefix}transformer.resblocks."),
                "visual.ln_pre.weight" in sd, "visual.conv1.bias" in sd)


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


def mlp_ratio(width: int, hidden: int, where: str) -> float:
    """The ``mlp_ratio`` that gives an MLP of ``hidden`` units at ``width``; ``ConfigError`` if none does."""
    ratio = hidden / width
    if int(width * ratio) != hidden:
        raise ConfigError(f"{where}: MLP width {hidden} is not int({width} * ratio) for any float ratio maskclip can store")
    return ratio


def square_size(value: Any, field: str) -> int:
    """A size given as ``n`` or ``[n, n]`` -> ``n``; ``ConfigError`` naming ``field`` otherwise."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"{field} = {list(value)} is not square; maskclip supports square sizes only")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{field} must be an integer; got {value!r}")
    return value


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
    """A ``ModelConfig`` read off a NATIVE state dict's shapes (what cannot be read comes from the arguments).

    Read: patch size and width from ``visual.conv1.weight`` ``[D, 3, p, p]``, the grid from
    ``visual.positional_embedding`` ``[1 + g*g, D]``, MLP widths from the first block, vocabulary,
    context and text width from the text embeddings, the joint size from the projections.
    """
    arch = native_arch(sd, "text.")
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
            mlp_ratio=mlp_ratio(width, v_hidden, "vision"), act=v_act, norm_eps=vision_eps, ln_pre=arch.ln_pre,
            patch_bias=arch.patch_bias, pool=pool, pos_embed=pos_embed),
        text=TextConfig(context_length=context, vocab_size=vocab, width=t_width, layers=arch.text_layers,
                        heads=_heads(t_width, text_heads, "text"), mlp_ratio=mlp_ratio(t_width, t_hidden, "text"),
                        act=t_act, norm_eps=text_eps),
        preprocess=PreprocessConfig(image_size=grid * patch),
    )
    return config.validate()


def with_logit_scale(sd: StateDict) -> StateDict:
    """``sd`` with CLIP's initial ``logit_scale`` added when the checkpoint has none."""
    sd.setdefault("logit_scale", torch.tensor(DEFAULT_LOGIT_SCALE))
    return sd
