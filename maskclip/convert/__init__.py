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

Modules: ``rules`` (the engine), ``detect`` (unwrapping, layout detection), ``infer`` (shape
inference), one per layout family (``openai_layout``: OpenAI and native; ``timm_layout``: timm,
SLIP, RILS; ``open_clip_layout`` with ``open_clip_timm``; ``transformers_layout``; ``siglip_transformers``
and ``siglip_layout``: transformers' SiglipModel) and ``any_layout`` (``to_native``).
"""
from .any_layout import to_native
from .detect import LAYOUTS, detect_layout, unwrap_checkpoint
from .infer import count_blocks, infer_config
from .open_clip_layout import from_open_clip, to_open_clip
from .openai_layout import native_to_openai, openai_to_native
from .siglip_layout import from_siglip_transformers_folder, to_siglip_transformers
from .timm_layout import from_rils, from_slip, from_timm, native_to_rils, native_to_slip, native_to_timm
from .transformers_layout import (from_transformers, native_to_transformers, to_transformers,
                                  transformers_preprocessor_config, transformers_to_native)

__all__ = [
    "LAYOUTS", "unwrap_checkpoint", "detect_layout", "to_native", "infer_config", "count_blocks",
    "openai_to_native", "native_to_openai", "from_open_clip", "to_open_clip",
    "transformers_to_native", "native_to_transformers", "from_transformers", "to_transformers",
    "transformers_preprocessor_config", "from_timm", "native_to_timm", "from_slip", "native_to_slip",
    "from_rils", "native_to_rils", "from_siglip_transformers_folder", "to_siglip_transformers",
]
