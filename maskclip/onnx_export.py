"""The two encoders as ONNX graphs, to run where neither PyTorch nor maskclip is installed (onnxruntime, ...).

``export_onnx(model, out_dir)`` writes into ``out_dir``:

- ``image_encoder.onnx``: ``pixel_values`` float32 ``[batch, 3, S, S]``, preprocessed as
  ``model.preprocess`` does (``S``: its image size) -> ``image_embeds`` ``[batch, E]``;
- ``text_encoder.onnx``: ``input_ids`` int64 ``[batch, length]``, ``length <= context_length``
  -> ``text_embeds`` ``[batch, E]``, each row pooled as the text tower pools: at its end-of-text
  token (its largest id) for CLIP's causal towers; for towers where padding changes the output
  (SigLIP's full attention, pooled at the last position) ``length`` is fixed at ``context_length``,
  so a text not padded as the tokenizer pads is refused instead of read wrong;
- the tokenizer: CLIP's as transformers files (``vocab.json``, ``merges.txt``, ...; ``CLIPTokenizer``),
  or a SentencePiece model's own files (``tokenizer.json`` / ``spiece.model``) as it was loaded;
- ``onnx_config.json`` (``ONNX_CONFIG``): the inputs and outputs, the preprocessing, the
  tokenizer's ids and the scoring (softmax over labels, or SigLIP's per-label sigmoid with its
  bias), so a user needs nothing else to run the graphs.

Embeddings are not normalised, like ``encode_image`` / ``encode_text``. The graphs come from
``torch.onnx.export(dynamo=True)`` (the ``torch.export`` based exporter, which needs
``onnxscript``); the TorchScript exporter is deprecated. Every file is replaced by one rename,
the JSON last, so an interrupted export leaves each file whole, old or new.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import nn

from .atomic import atomic_write_text, fsync_dir
from .errors import InputError, InputTypeError
from .serialization import TOKENIZER_FILES, copy_tokenizer_files
from .tokenizer import Tokenizer, get_tokenizer

ONNX_CONFIG = "onnx_config.json"
IMAGE_FILE, TEXT_FILE = "image_encoder.onnx", "text_encoder.onnx"
FORMAT_VERSION = 1


class ImageEncoder(nn.Module):
    """``pixel_values [B, 3, S, S]`` -> ``image_embeds [B, E]``: the vision tower as exported."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)


class TextEncoder(nn.Module):
    """``input_ids [B, L]`` -> ``text_embeds [B, E]``, pooled as the tower pools (``TextTower.pool``).

    The text tower's own forward cuts the batch at its longest text (a length read from the
    data) and sorts large batches into length buckets: neither is a fixed graph. Here every
    position up to ``L`` is computed; for causal towers pooled at end of text that is exact
    (positions after it cannot change it), so one graph serves every ``L``.
    """

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text.pool(input_ids, self.text.forward_embeddings(self.text.token_embedding(input_ids)))


def export_onnx(model, out_dir, opset: Optional[int] = None) -> Path:
    """Write ``model``'s encoders, its tokenizer and ``onnx_config.json`` to ``out_dir`` (see the module doc).

    The export runs on a float32 CPU copy of the towers when the model is elsewhere (GPU, fp16).
    ``opset``: the ONNX opset to target (default: the exporter's). Returns ``out_dir`` as a Path.
    """
    from .model import DualEncoder

    if not isinstance(model, DualEncoder):
        raise InputTypeError(f"model must be a maskclip.DualEncoder (maskclip.load(...)); got {type(model).__name__}")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < 18):
        raise InputError(f"opset must be an integer >= 18 (the dynamo exporter's minimum); got {opset!r}")
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {' and '.join(missing)}: pip install 'maskclip[onnx]'")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    stage = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out))
    try:
        image, text = _export_programs(model, opset)
        image.save(stage / IMAGE_FILE)  # weights past 2 GB go to IMAGE_FILE + ".data" beside it
        text.save(stage / TEXT_FILE)
        if cfg.text.hf_tokenizer_name:
            copy_tokenizer_files(model, stage)
        else:
            _tokenizer(cfg.text.context_length).save_transformers_files(stage)
        files = _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    meta = onnx_config(model, opset=image.model.opset_imports[""], files=files)
    atomic_write_text(out / ONNX_CONFIG, json.dumps(meta, indent=2) + "\n")
    return out


def _export_programs(model, opset: Optional[int]):
    """The two ``torch.onnx.ONNXProgram``s: batch dynamic in both, text length dynamic too."""
    visual, text = model.visual, model.text
    if model.device.type != "cpu" or model.dtype != torch.float32:
        visual, text = (copy.deepcopy(t).to("cpu", torch.float32) for t in (visual, text))
    size, context = model.config.preprocess.image_size, model.config.text.context_length
    batch = torch.export.Dim("batch", min=1)
    text_dims = {0: batch}
    if model.config.text.padding_invariant:
        text_dims[1] = torch.export.Dim("length", min=2, max=context)
    # Examples of batch 2, as torch.export specialises a dimension whose example is 0 or 1; ids
    # within any vocabulary (the graph does not depend on their values).
    pixels = torch.zeros(2, 3, size, size)
    ids = torch.arange(2 * context).view(2, context) % model.config.text.vocab_size
    modes = [(tower, tower.training) for tower in (visual, text)]
    try:
        # The oneDNN linear kernel of fp32 CPU inference (layers.py) has no ONNX form; with
        # oneDNN disabled the layers take F.linear. allow_tf32=None leaves that flag alone.
        with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False, allow_tf32=None):
            image = torch.onnx.export(ImageEncoder(visual).eval(), (pixels,), dynamo=True, opset_version=opset,
                                      input_names=["pixel_values"], output_names=["image_embeds"],
                                      dynamic_shapes=({0: batch},), verbose=False)
            text_program = torch.onnx.export(TextEncoder(text).eval(), (ids,), dynamo=True, opset_version=opset,
                                             input_names=["input_ids"], output_names=["text_embeds"],
                                             dynamic_shapes=(text_dims,), verbose=False)
    finally:
        for tower, was_training in modes:
            tower.train(was_training)
    return image, text_program


def _tokenizer(context_length: int) -> Tokenizer:
    default = get_tokenizer()
    return default if default.context_length == context_length else Tokenizer(context_length)


def _publish(stage: Path, out: Path) -> list:
    """Move every file of ``stage`` into ``out`` by one rename each, external weights before their graph."""
    names = sorted(os.listdir(stage), key=lambda n: (not n.endswith(".data"), n))
    for name in names:
        with open(stage / name, "rb") as f:
            os.fsync(f.fileno())
        os.replace(stage / name, out / name)
    fsync_dir(out)
    return names


def onnx_config(model, opset: int, files: list) -> Dict:
    """The JSON beside the graphs: what to feed them, how to preprocess and tokenize, how to score."""
    from .version import __version__

    cfg = model.config
    pp, embed = cfg.preprocess, cfg.embed_dim
    size = pp.image_size
    return {
        "format": "maskclip-onnx", "format_version": FORMAT_VERSION, "model": cfg.name,
        "maskclip_version": __version__, "opset": int(opset), "files": sorted(files + [ONNX_CONFIG]),
        "image_encoder": {
            "file": IMAGE_FILE,
            "inputs": {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, size, size]}},
            "outputs": {"image_embeds": {"dtype": "float32", "shape": ["batch", embed]}},
        },
        "text_encoder": {
            "file": TEXT_FILE,
            "inputs": {"input_ids": {"dtype": "int64", "max_length": cfg.text.context_length,
                                     "shape": ["batch", "length" if cfg.text.padding_invariant else cfg.text.context_length]}},
            "outputs": {"text_embeds": {"dtype": "float32", "shape": ["batch", embed]}},
        },
        "normalized": False,
        "preprocess": {
            "image_size": size, "resize_mode": pp.resize_mode, "interpolation": pp.interpolation,
            "mean": list(pp.mean), "std": list(pp.std),
            "steps": {"shortest": f"resize the shorter side to {size} ({pp.interpolation}) and centre-crop {size} x "
                                  f"{size}, as torchvision's Resize({size}) and CenterCrop({size}) do",
                      "squash": f"resize to {size} x {size} ({pp.interpolation})",
                      "longest": f"resize the longer side to {size} ({pp.interpolation}, the other side rounded) and "
                                 f"centre it on a black {size} x {size} canvas (the extra pixel right / below), as "
                                 "open_clip's ResizeKeepRatio(longest=1) and CenterCropOrPad do"}[pp.resize_mode]
                     + "; RGB; scale to [0, 1]; per channel (x - mean) / std; layout [3, H, W]",
        },
        "tokenizer": _tokenizer_meta(cfg, files),
        **_scoring(model),
    }


def _tokenizer_meta(cfg, files: list) -> Dict:
    if cfg.text.hf_tokenizer_name:
        shipped = [f for f in files if f in TOKENIZER_FILES]
        return {"kind": f"SentencePiece ({cfg.text.hf_tokenizer_name}; "
                        + (f"files in this folder: {', '.join(shipped)})" if shipped else
                           "its files were not with the model, so none are in this folder)"),
                "context_length": cfg.text.context_length,
                "layout": "every row padded (or cut) to context_length as the tokenizer pads; pooled at the "
                          + ("last position" if cfg.text.pool == "last" else "first largest id")}
    return {"kind": "OpenAI CLIP BPE (transformers CLIPTokenizer files in this folder)",
            "context_length": cfg.text.context_length, "lowercase": True,
            "start_of_text_id": Tokenizer.sot_token_id, "end_of_text_id": Tokenizer.eot_token_id, "pad_id": 0,
            "layout": "[start_of_text, ids..., end_of_text, padding]; each row is pooled at its first largest id, "
                      "the end of text, so padding (0, or end_of_text as transformers pads) does not matter"}


def _scoring(model) -> Dict:
    """How to turn the embeddings into label probabilities, as ``model.classify`` does (``zero_shot.probabilities``)."""
    if model.logit_bias is not None:
        return {"logit_scale": float(model.logit_scale.detach().exp()), "logit_bias": float(model.logit_bias.detach()),
                "scores": "probabilities = sigmoid(logit_scale * normalize(image_embeds) @ normalize(text_embeds).T "
                          "+ logit_bias), each label on its own (sigmoid-trained: rows need not sum to 1)"}
    return {"logit_scale": min(float(model.logit_scale.detach().exp()), 100.0),
            "scores": "probabilities = softmax(logit_scale * normalize(image_embeds) @ normalize(text_embeds).T)"}
