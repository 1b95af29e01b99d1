"""Zero-shot classification: prompt templates, class names, the text classifier.

Per class: fill every template, encode, L2-normalise each prompt embedding, average, and
L2-normalise again; the classifier is ``[E, C]`` and logits are
``exp(logit_scale) * normalize(image_features) @ classifier``.

``check_labels`` and ``resolve_templates`` check user input; the public methods of
``DualEncoder`` call them once, then ``build_classifier`` and ``probabilities``, which take
checked lists and tensors.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import resources
from .errors import InputError, InputTypeError

Templates = Union[None, str, Sequence[str]]


@lru_cache(maxsize=None)
def _template_sets() -> dict:
    return {k: tuple(v) for k, v in resources.read_json("templates.json").items()}


def template_sets() -> List[str]:
    """Names of the bundled template sets (e.g. ``"openai_imagenet"``, 80 templates)."""
    return sorted(_template_sets())


@lru_cache(maxsize=None)
def imagenet_classnames() -> List[str]:
    """The 1000 ImageNet class names of OpenAI CLIP's notebook, in class-index order."""
    return resources.read_text("imagenet_classnames.txt").splitlines()


def resolve_templates(templates: Templates) -> List[str]:
    """``None`` -> ``["{}"]`` (labels used as written); a set name -> its templates; a list -> checked."""
    if templates is None:
        return ["{}"]
    if isinstance(templates, str):
        if "{}" in templates:
            return [templates]
        sets = _template_sets()
        if templates not in sets:
            raise InputError(
                f"unknown template set {templates!r}; expected one of {sorted(sets)} "
                "or a list of strings containing '{}'"
            )
        return list(sets[templates])
    if not isinstance(templates, (list, tuple)) or not templates:
        raise InputTypeError(
            f"templates must be None, a template set name or a non-empty list of strings; got {templates!r}"
        )
    for t in templates:
        if not isinstance(t, str) or "{}" not in t:
            raise InputError(f"every template must be a string containing '{{}}'; got {t!r}")
    return list(templates)


def check_labels(labels, allow_duplicates: bool = False) -> List[str]:
    """Validate class names / labels: a non-empty list of non-empty strings."""
    if isinstance(labels, str):
        raise InputTypeError(f"labels must be a list of strings, not a single string; got {labels!r}")
    if not isinstance(labels, (list, tuple)):
        raise InputTypeError(f"labels must be a list of strings; got {type(labels).__name__}")
    if not labels:
        raise InputError("labels is empty; give at least one class name")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise InputTypeError(f"labels[{i}] must be a string; got {type(label).__name__}: {label!r}")
        if not label.strip():
            raise InputError(f"labels[{i}] is empty or whitespace; every label needs text")
    if not allow_duplicates:
        seen, dupes = set(), []
        for label in labels:
            if label in seen and label not in dupes:
                dupes.append(label)
            seen.add(label)
        if dupes:
            raise InputError(f"labels contain duplicates {dupes}; each label must be unique")
    return list(labels)


def build_classifier(encode: Callable[[List[str]], torch.Tensor], classnames: Sequence[str],
                     templates: Sequence[str], batch_size: int = 8192) -> torch.Tensor:
    """Checked class names x templates -> zero-shot classifier ``[E, C]`` (unit-norm columns).

    ``encode``: prompts -> unit-norm embeddings ``[N, E]``. Prompts are encoded about
    ``batch_size`` at a time (whole classes per chunk), which the text tower runs in buckets of
    similar length: a large chunk gives the buckets more to choose from.
    """
    per_chunk = max(1, batch_size // len(templates))
    chunks = []
    for i in range(0, len(classnames), per_chunk):
        prompts = [t.replace("{}", c) for c in classnames[i:i + per_chunk] for t in templates]
        emb = encode(prompts)
        chunks.append(emb.view(-1, len(templates), emb.shape[-1]).mean(dim=1))
    return F.normalize(torch.cat(chunks), dim=-1).T.contiguous()


def probabilities(image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: torch.Tensor,
                  logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Unit-norm image features ``[B, E]``, classifier ``[E, C]`` -> probabilities ``[B, C]`` (float32).

    Without ``logit_bias`` (softmax-trained models): a softmax over labels, the logit scale capped
    at 100 as CLIP caps it in training. With it (sigmoid-trained, SigLIP): per label
    ``sigmoid(exp(logit_scale) * cos + logit_bias)``, uncapped as SigLIP trains it.
    """
    if logit_bias is not None:
        logits = logit_scale.exp() * image_features @ classifier.to(image_features.dtype) + logit_bias
        return logits.float().sigmoid()
    logits = logit_scale.exp().clamp(max=100) * image_features @ classifier.to(image_features.dtype)
    return logits.float().softmax(dim=-1)
