"""The model card: the ``README.md`` the Hugging Face Hub shows for a repo, YAML front matter first.

The front matter (``huggingface_hub.ModelCardData``) holds ``library_name: maskclip``, the
tags, the pipeline and, when known, the licence; the text gives the architecture, the
preprocessing, the full config, and how to load the repo in maskclip, open_clip and
transformers: directly when it is in their layout, through ``maskclip convert`` otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from . import resources
from .atomic import atomic_write_text
from .config import FORMATS
from .errors import InputError, InputTypeError

README = "README.md"
LIBRARY = "maskclip"
PIPELINE = "zero-shot-image-classification"
# Hub licence ids (https://huggingface.co/docs/hub/repositories-licenses) that registry entries may name.
HUB_LICENCES = ("mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0",
                "cc-by-sa-4.0", "openrail", "other")
PLACEHOLDER_REPO = "ORG/NAME"


def _registry_entry(name: Optional[str]) -> dict:
    # Read from the data file, not through maskclip.hub, which builds models and so sits above this module.
    return resources.read_json("registry.json").get(name or "", {})


def licence_of(config) -> Optional[str]:
    """The Hub licence id of a registered model (``model_info(name)["licence"]``), or ``None`` if unknown."""
    entry = _registry_entry(config.name)
    licence = str(entry.get("licence", "")).lower()
    return licence if licence in HUB_LICENCES else None


def model_card(model, repo_id: Optional[str] = None, format: str = "maskclip", license: Optional[str] = None) -> str:
    """``README.md`` text for ``model`` saved in ``format`` at ``repo_id`` (``"org/name"``).

    ``license``: a Hub licence id; default that of the registered model, else none is claimed.
    Without ``repo_id`` the loading examples name ``ORG/NAME``.
    """
    from huggingface_hub import ModelCardData

    if format not in FORMATS:
        raise InputError(f"format must be one of {list(FORMATS)}; got {format!r}")
    if license is not None and not isinstance(license, str):
        raise InputTypeError(f"license must be a Hub licence id such as 'mit'; got {type(license).__name__}")
    if license is not None and not license.strip():
        raise InputError("license is empty; give a Hub licence id such as 'mit', or None")
    repo = repo_id or PLACEHOLDER_REPO
    tags = [LIBRARY, "clip", "zero-shot-image-classification", "image-feature-extraction"]
    if format != "maskclip":
        tags.append(format)
    data = ModelCardData(library_name=LIBRARY, license=license or licence_of(model.config),
                         pipeline_tag=PIPELINE, tags=tags)
    body = "\n".join([_title(model, repo, format), _usage(repo, format, _transformers_class(model), _maskclip_only(model)),
                      _summary(model)])
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def write_model_card(model, folder, repo_id: Optional[str] = None, format: str = "maskclip",
                     license: Optional[str] = None) -> Path:
    """Write ``model_card(...)`` to ``folder/README.md`` (atomically); returns its path."""
    path = Path(folder) / README
    atomic_write_text(path, model_card(model, repo_id, format, license))
    return path


def _title(model, repo: str, format: str) -> str:
    cfg = model.config
    entry = _registry_entry(cfg.name)
    lines = [f"# {cfg.name or repo.split('/')[-1]}", ""]
    if entry.get("description"):
        lines += [entry["description"].rstrip(".") + ".", ""]
    lines += [f"A CLIP-style dual encoder (an image tower and a text tower sharing one {cfg.embed_dim}-d embedding "
              f"space), saved by maskclip in the `{format}` layout.", ""]
    if entry.get("source"):
        lines += [f"Source: {entry['source']}.", ""]
    return "\n".join(lines)


def _transformers_class(model) -> Optional[str]:
    """The transformers model class that reads this model's transformers export, or None if none does."""
    if model.config.vision.timm_model_name is None:
        return "CLIP"
    if "siglip" in model.config.vision.timm_model_name and model.config.logit_bias_init is not None:
        return "Siglip"
    return None  # e.g. EVA02: transformers has no class for it


def _maskclip_only(model) -> Optional[str]:
    """Why only maskclip can hold this architecture, or None when open_clip and transformers layouts can."""
    if model.config.vision.stem == "conv":
        return "a convolutional patch stem (maskclip's `VisionConfig.stem = \"conv\"`), which their layouts have no keys for"
    return None


def _usage(repo: str, format: str, hf_class: Optional[str] = "CLIP", maskclip_only: Optional[str] = None) -> str:
    convert = ("This repo is in the `{layout}` layout, which {library} does not read. Write a copy it reads with "
               "`maskclip convert hf-hub:{repo} {folder}/ --format {library}`, then:")
    open_clip = ["```python", "import open_clip", "",
                 'model, _, preprocess = open_clip.create_model_and_transforms("{source}")',
                 'tokenizer = open_clip.get_tokenizer("{source}")', "```"]
    transformers = ["```python", f"from transformers import {hf_class}Model, {hf_class}Processor, pipeline", "",
                    f'model = {hf_class}Model.from_pretrained("{{source}}")',
                    f'processor = {hf_class}Processor.from_pretrained("{{source}}")',
                    'classifier = pipeline("zero-shot-image-classification", model="{source}")', "```"]
    lines = ["## Use", "", "### maskclip", "", "```python", "import maskclip  # pip install maskclip", "",
             f'model = maskclip.load("hf-hub:{repo}")',
             'probs = model.classify("cat.jpg", ["a photo of a cat", "a photo of a dog"])  # [1, 2]',
             'patches = model.dense_features("cat.jpg")  # [1, E, h, w], for zero-shot segmentation', "```", ""]
    if maskclip_only:
        return "\n".join(lines + ["### open_clip and transformers", "",
                                   f"Neither can hold this architecture: it has {maskclip_only}. Load it with maskclip.", ""])
    for library, snippet, hub_source in (("open_clip", open_clip, f"hf-hub:{repo}"),
                                         ("transformers", transformers, repo)):
        lines += [f"### {library}", ""]
        if library == "transformers" and hf_class is None:
            lines += ["transformers has no model class for this architecture.", ""]
            continue
        if format == library:
            lines += [line.format(source=hub_source) for line in snippet]
        else:
            folder = f"{library}-copy"
            source = f"local-dir:{folder}" if library == "open_clip" else folder
            lines += [convert.format(layout=format, library=library, repo=repo, folder=folder), ""]
            lines += [line.format(source=source) for line in snippet]
        lines.append("")
    return "\n".join(lines)


def _summary(model) -> str:
    cfg = model.config
    v, t, p = cfg.vision, cfg.text, cfg.preprocess

    def millions(module) -> str:
        return f"{sum(x.numel() for x in module.parameters()) / 1e6:.1f} M"

    crop = {"shortest": f"resize the shorter side to {p.image_size} px ({p.interpolation}), centre crop",
            "squash": f"resize to {p.image_size} x {p.image_size} px ({p.interpolation})",
            "longest": f"resize the longer side to {p.image_size} px ({p.interpolation}), pad to a black square"}[p.resize_mode]
    if v.timm_model_name is None:
        tower = (f"ViT, {v.image_size} px, patch {v.patch_size}, width {v.width}, {v.layers} layers, "
                 f"{v.heads} heads, {v.act}, {v.pool} pooling")
    else:
        tower = (f"timm `{v.timm_model_name}` ({v.image_size} px, stride {v.patch_size}, width {v.width}, "
                 f"{v.layers} blocks), pooling {v.timm_pool or 'the network default'}, projection {v.timm_proj}")
    rows = [
        ("image tower", f"{tower}; {millions(model.visual)} parameters"),
        ("text tower", f"causal transformer, context {t.context_length}, vocabulary {t.vocab_size}, width {t.width}, "
                       f"{t.layers} layers, {t.heads} heads, {t.act}; {millions(model.text)} parameters"),
        ("embedding", f"{cfg.embed_dim}"),
        ("preprocessing", f"{crop}; mean {list(p.mean)}, std {list(p.std)}"),
        ("tokenizer", "OpenAI CLIP's BPE (maskclip.tokenize, open_clip.tokenize)"),
    ]
    config = json.dumps(cfg.to_dict(), indent=2)
    return "\n".join(["## Model", "", "| | |", "| --- | --- |", *(f"| {name} | {text} |" for name, text in rows), "",
                      "<details><summary>maskclip config</summary>", "",
                      "```json", config, "```", "", "</details>", ""])
