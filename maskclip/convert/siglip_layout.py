"""transformers' ``SiglipModel`` folders <-> native, through open_clip's SigLIP layout.

``siglip_transformers`` converts ``SiglipModel`` <-> open_clip's ``CustomTextCLIP`` with a timm
SigLIP tower; ``open_clip_timm`` (via ``from_open_clip`` / ``to_open_clip``) converts that <->
native. The one thing open_clip's config cannot say is the vision activation: Google's
transformers checkpoints declare ``gelu_pytorch_tanh`` where timm's SigLIP towers compute exact
GELU. Native configs can (``VisionConfig.act`` "gelu_tanh" builds the timm tower with timm's
``act_layer``), so a transformers SigLIP loads with the activation it declares and is written back
with it: outputs equal transformers' exactly, not approximately.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Tuple

from ..config import ModelConfig
from ..errors import ConfigError
from .open_clip_layout import from_open_clip, to_open_clip
from .rules import StateDict
from .siglip_transformers import (_HF_VISION_DEFAULTS, _timm_tower, read_siglip_transformers_folder,
                                  siglip_open_clip_to_hf, siglip_preprocessor_config)

# transformers' hidden_act <-> the native VisionConfig.act that overrides a timm tower's own activation.
_TO_NATIVE_ACT = {"gelu_pytorch_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
_TO_HF_ACT = {native: hf for hf, native in _TO_NATIVE_ACT.items()}


def from_siglip_transformers_folder(folder, hf_config: Dict[str, Any]) -> Tuple[ModelConfig, StateDict]:
    """A transformers ``SiglipModel`` folder (its ``config.json`` already read as ``hf_config``) -> native.

    The vision tower is the timm SigLIP tower of the same shapes, built with the activation the
    checkpoint declares when that is not the tower's own. The tokenizer is transformers' (the
    folder's files, no open_clip clean-up: ``TextConfig.tokenizer_kwargs`` ``None``).
    """
    oc_config, oc_sd = read_siglip_transformers_folder(folder, allow_act_change=True)
    config, sd = from_open_clip(oc_config, oc_sd)
    declared = (hf_config.get("vision_config") or {}).get("hidden_act") or _HF_VISION_DEFAULTS["hidden_act"]
    own = _timm_tower(config.vision.timm_model_name).tower.act
    if declared != own:
        if declared not in _TO_NATIVE_ACT:
            raise ConfigError(f"{Path(folder) / 'config.json'}: vision_config.hidden_act = {declared!r}, but the timm "
                              f"tower {config.vision.timm_model_name!r} computes {own!r} and can be switched only to "
                              f"{sorted(_TO_NATIVE_ACT)}")
        config.vision.act = _TO_NATIVE_ACT[declared]
    config.text.tokenizer_kwargs = None  # transformers' tokenizer: no open_clip clean-up
    return config.validate(), sd


def to_siglip_transformers(config: ModelConfig, sd: StateDict) -> Tuple[Dict[str, Any], StateDict, Dict[str, Any]]:
    """Native SigLIP -> (``config.json`` dict, ``SiglipModel`` state dict, ``preprocessor_config.json`` dict)."""
    own_act = replace(config, vision=replace(config.vision, act="gelu"))  # what open_clip's layout can say
    oc_config, oc_sd = to_open_clip(own_act, sd)
    hf_config, hf_sd = siglip_open_clip_to_hf(oc_config["model_cfg"], oc_sd)
    if config.vision.act != "gelu":
        hf_config["vision_config"]["hidden_act"] = _TO_HF_ACT[config.vision.act]
    preprocessor = siglip_preprocessor_config(oc_config["preprocess_cfg"], hf_config["vision_config"]["image_size"])
    return hf_config, hf_sd, preprocessor
