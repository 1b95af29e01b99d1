"""Any known layout -> native: detect the layout, convert the keys, infer the config from the shapes."""
from __future__ import annotations

from typing import Mapping, Optional, Tuple

import torch

from ..config import ModelConfig
from ..errors import WeightsError
from .detect import detect_layout
from .infer import Act, infer_config, with_logit_scale
from .openai_layout import checked_native, openai_to_native
from .rules import StateDict
from .timm_layout import from_rils, from_slip, from_timm
from .transformers_layout import transformers_to_native


def to_native(sd: Mapping[str, torch.Tensor], *, act: Act = None, text_sd: Optional[Mapping[str, torch.Tensor]] = None,
              vision_heads: Optional[int] = None, text_heads: Optional[int] = None) -> Tuple[ModelConfig, StateDict]:
    """Any known layout -> (config inferred from shapes, native state dict).

    ``text_sd`` supplies the text tower for a vision-only timm state dict (see ``from_timm``).
    ``maskclip.convert``'s docstring lists what the weights cannot tell and the defaults used for it.
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
        native = checked_native(sd)
    return infer_config(native, **kw), with_logit_scale(native)
