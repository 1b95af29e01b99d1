"""Which layout a checkpoint is in, and the flat state dict inside a ``torch.load`` result."""
from __future__ import annotations

from typing import Any, List, Mapping, Tuple

import torch

from ..errors import WeightsError
from .rules import StateDict

# "maskclip" is the native layout, named like the others for the library that writes it.
LAYOUTS = ("maskclip", "openai", "transformers", "timm", "slip", "rils")
_WRAPPER_KEYS = ("state_dict", "model", "module")


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
