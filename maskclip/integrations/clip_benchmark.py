"""CLIP_benchmark (``pip install clip-benchmark``) running any model ``maskclip.load`` reads.

CLIP_benchmark finds model loaders by type in ``clip_benchmark.models.TYPE2FUNC``; each returns
``(model, transform, tokenizer)``: a model with ``encode_image(images [B, 3, H, W])`` and
``encode_text(ids [B, L])``, a PIL -> tensor transform, and a list-of-strings -> ids tokenizer.
A ``DualEncoder`` is already such a model, so the loader returns the model, its ``preprocess``
and its ``tokenize``. ``register()`` adds it as type ``maskclip``; running this module runs
CLIP_benchmark's command line with it registered:

    python -m maskclip.integrations.clip_benchmark eval --model_type maskclip --model openai-vitb16 \\
        --pretrained openai --dataset cifar10 --output result.json
"""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

MODEL_TYPE = "maskclip"


def load_maskclip(model_name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None,
                  device: Union[str, torch.device] = "cpu"):
    """A maskclip model for CLIP_benchmark: ``(model, transform, tokenizer)``.

    ``model_name``: anything ``maskclip.load`` accepts (a registered name, a checkpoint folder or
    file, ``hf-hub:org/repo[@revision]``). ``pretrained``: CLIP_benchmark's label of the weights
    (it goes into result file names); when it is an existing path, as open_clip users write
    ``--model ViT-B-16 --pretrained ckpt.safetensors``, the model is loaded from that path and
    ``model_name`` is only a label. ``cache_dir``: the Hugging Face cache to download into.
    """
    import maskclip

    source = pretrained if isinstance(pretrained, str) and pretrained and os.path.exists(pretrained) else model_name
    model = maskclip.load(source, device=device, cache_dir=cache_dir)
    return model, model.preprocess, model.tokenize


def register() -> None:
    """Make ``maskclip`` a model type of CLIP_benchmark (``load_clip(model_type="maskclip", ...)``, ``--model_type``).

    CLIP_benchmark checks types against ``MODEL_TYPES``, a list built once at import, so the
    name is added to that list too (in place: its command line's ``choices`` is the same list).
    """
    from clip_benchmark import models

    models.TYPE2FUNC[MODEL_TYPE] = load_maskclip
    if MODEL_TYPE not in models.MODEL_TYPES:
        models.MODEL_TYPES.append(MODEL_TYPE)


def main() -> None:
    """CLIP_benchmark's command line (``clip_benchmark eval ...``) with the ``maskclip`` type registered."""
    register()
    from clip_benchmark.cli import main as clip_benchmark_main

    clip_benchmark_main()


if __name__ == "__main__":
    main()
