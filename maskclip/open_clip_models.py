"""open_clip's model names, ``"<architecture>/<pretrained tag>"`` (``"ViT-B-16-SigLIP2/webli"``), as data.

``maskclip/resources/open_clip_models.json`` lists the names maskclip builds, each with the Hub
repo open_clip downloads it from, the activation its weights were trained with and its
preprocessing family; ``hub.load`` resolves them. A name of an open_clip family maskclip cannot
build (ResNets, CoCa, MobileCLIP, ViTamin, ...) is refused with what it can build.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional

from . import resources
from .errors import ModelNotFoundError

# Architecture names open_clip uses: a name "<arch>/<tag>" whose arch starts so is taken as open_clip's.
_OPEN_CLIP_PREFIXES = ("vit-", "eva", "rn", "convnext", "coca", "mobileclip", "vitamin", "xlm-roberta", "roberta",
                       "mt5", "nllb", "timm-", "vit_")


@lru_cache(maxsize=None)
def _data() -> Dict[str, dict]:
    return resources.read_json("open_clip_models.json")


def open_clip_names() -> List[str]:
    """Every ``"<architecture>/<tag>"`` maskclip builds."""
    return sorted(f"{arch}/{tag}" for arch, tags in _data()["models"].items() for tag in tags)


def open_clip_entry(name: str) -> Optional[dict]:
    """The entry (``repo``, ``act``, ``preprocess``) of an open_clip name; ``None`` if ``name`` is not one.

    ``ModelNotFoundError`` for an open_clip architecture or tag maskclip does not build, listing what it builds.
    """
    arch, sep, tag = name.partition("/")
    if not sep or "/" in tag:
        return None
    models = _data()["models"]
    if arch in models:
        if tag in models[arch]:
            return dict(models[arch][tag], name=name)
        raise ModelNotFoundError(f"maskclip does not know the open_clip pretrained tag {tag!r} of {arch!r}; known tags: "
                                 f"{sorted(models[arch])}. open_clip names maskclip builds: {open_clip_names()}")
    if not arch.lower().startswith(_OPEN_CLIP_PREFIXES):
        return None
    why = next((reason for key, reason in _data()["unsupported"].items() if key.lower() in arch.lower()), None)
    family = f" ({why} are not supported)" if why else ""
    raise ModelNotFoundError(f"the open_clip model {name!r} cannot be built by maskclip{family}. maskclip builds "
                             f"these open_clip names: {open_clip_names()} (OpenAI-style CLIP ViTs, "
                             f"SigLIP, SigLIP2, EVA02-CLIP, ConvNeXt); for a Hub repo write 'hf-hub:{name}'")
