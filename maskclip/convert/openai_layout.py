"""OpenAI CLIP's key layout (also open_clip's ``CLIP``) and the native one.

Native names are OpenAI's with the text tower under ``text.``: ``visual.*`` as OpenAI,
``text.token_embedding.weight``, ``text.transformer.resblocks.{i}.*``, ``text.text_projection``.
"""
from __future__ import annotations

from typing import List, Mapping

import torch

from .infer import count_blocks, native_arch
from .rules import DROP_ALWAYS, Arch, Rule, StateDict, apply_from_native, apply_to_native, block_table, blocks, ln, pairs

OPENAI_BLOCK = block_table()


def openai_text_rules(layers: int, other: str = "") -> List[Rule]:
    """Native ``text.*`` <-> OpenAI's top-level text names (under ``other``)."""
    top = [("token_embedding.weight", "token_embedding.weight"), ("positional_embedding", "positional_embedding"),
           *ln("ln_final", "ln_final"), ("text_projection", "text_projection")]
    return (pairs(top, "text.", other)
            + blocks("text.transformer.resblocks.", f"{other}transformer.resblocks.", layers, OPENAI_BLOCK))


def _openai_rules(arch: Arch) -> List[Rule]:
    vision = [("conv1.weight", "conv1.weight"), ("class_embedding", "class_embedding"),
              ("positional_embedding", "positional_embedding"), *ln("ln_post", "ln_post"), ("proj", "proj")]
    if arch.patch_bias:
        vision.append(("conv1.bias", "conv1.bias"))
    if arch.ln_pre:
        vision += ln("ln_pre", "ln_pre")
    return (pairs(vision, "visual.", "visual.")
            + blocks("visual.transformer.resblocks.", "visual.transformer.resblocks.", arch.vision_layers, OPENAI_BLOCK)
            + openai_text_rules(arch.text_layers)
            + [Rule("logit_scale", ("logit_scale",))])


def _native_rules(arch: Arch) -> List[Rule]:
    return [Rule(r.native, (r.native,)) for r in _openai_rules(arch)]


def logit_scale_scalar(sd: StateDict) -> StateDict:
    """open_clip may store ``logit_scale`` as ``[1]`` (``nonscalar_logit_scale``); native is a scalar."""
    if "logit_scale" in sd and sd["logit_scale"].numel() == 1:
        sd["logit_scale"] = sd["logit_scale"].reshape(())
    return sd


def openai_to_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """OpenAI CLIP / open_clip ``CLIP`` state dict -> native names (the text tower moves under ``text.``)."""
    return logit_scale_scalar(apply_to_native(sd, _openai_rules(native_arch(sd, "")), "openai", DROP_ALWAYS))


def native_to_openai(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """Native state dict -> OpenAI CLIP / open_clip ``CLIP`` names."""
    return apply_from_native(sd, _openai_rules(native_arch(sd, "text.")), "openai")


def checked_native(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """A native state dict with every key checked, buffers dropped and ``logit_scale`` made a scalar."""
    return logit_scale_scalar(apply_to_native(sd, _native_rules(native_arch(sd, "text.")), "maskclip", DROP_ALWAYS))


def text_tower_to_native(text_sd: Mapping[str, torch.Tensor]) -> StateDict:
    """The text tower (and ``logit_scale``) of an OpenAI/open_clip or native state dict, in native names."""
    if any(k.startswith("text.") for k in text_sd):
        sd = {k: v for k, v in text_sd.items() if k.startswith("text.")}
    else:
        sd = {"text." + k: v for k, v in text_sd.items() if not k.startswith("visual.") and k != "logit_scale"}
    rules = [Rule(r.native, (r.native,)) for r in openai_text_rules(count_blocks(sd, "text.transformer.resblocks."))]
    out = apply_to_native(sd, rules, "text", DROP_ALWAYS + ("text.attn_mask",))
    if "logit_scale" in text_sd:
        out["logit_scale"] = text_sd["logit_scale"].reshape(())
    return out
