"""open_clip's model names, ``"<architecture>/<pretrained tag>"`` (``"ViT-B-16-SigLIP2/webli"``), as data.

``maskclip/resources/open_clip_models.json`` lists the names maskclip builds, each with the Hub
repo open_clip downloads it from, the activation its weights were trained with and its
preprocessing family; ``hub.load`` resolves them. A name of an open_clip family maskclip cannot
build (ResNets, CoCa, MobileCLIP, ViTamin, ...) is refused with what it can build; another name
not in the table is refused as such, pointing at its Hub repo.
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
    if why:
        raise ModelNotFoundError(f"the open_clip model {name!r} cannot be built by maskclip ({why} are not "
                                 f"supported). maskclip builds these open_clip names: {open_clip_names()} "
                                 f"(OpenAI-style CLIP ViTs, SigLIP, SigLIP2, EVA02-CLIP, ConvNeXt)")
    raise ModelNotFoundError(f"the open_clip name {name!r} is not in maskclip's table of open_clip names "
                             f"(maskclip/resources/open_clip_models.json: {open_clip_names()}). An OpenAI-style "
                             f"CLIP ViT, SigLIP, SigLIP2, EVA02-CLIP or ConvNeXt may still load from its Hub repo: "
                             f"maskclip.load('hf-hub:ORG/REPO'), with the repo open_clip's pretrained.py gives "
                             f"for this name")
