"""Checkpoints on disk, in every supported layout: reading them as native weights, writing them.

Layouts of a folder (``FORMATS``; ``maskclip`` is the native one, named like the others for the
library that writes it):
- ``maskclip``: ``config.json`` (config_type "maskclip") + ``model.safetensors``;
- ``open_clip``: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (or the pickled ``.bin``);
- ``transformers``: ``config.json`` (model_type "clip") + ``model.safetensors`` (or ``pytorch_model.bin``),
  or a ``SiglipModel`` (model_type "siglip"; SigLIP and SigLIP2) + ``preprocessor_config.json``.
Single files: a ``.safetensors`` state dict in any known key layout (config inferred from shapes
unless a ``config.json`` sits beside it), or a pickled checkpoint when ``allow_pickle=True``.

Only safetensors loads by default: a pickle can execute code, so it is refused unless asked
for, and then read with ``torch.load(weights_only=True)``. Writes are atomic per file.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from safetensors.torch import save_file

from . import convert
from .atomic import atomic_write, atomic_write_text
from .config import CONFIG_TYPE, FORMATS, ModelConfig, is_timm_conv
from .errors import ConfigError, InputError, ModelNotFoundError, WeightsError
from .file_readers import read_json, read_safetensors

StateDict = Dict[str, torch.Tensor]

NATIVE_CONFIG, NATIVE_WEIGHTS = "config.json", "model.safetensors"
OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS, OPEN_CLIP_PICKLE = (
    "open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
HF_CONFIG, HF_WEIGHTS, HF_PICKLE = "config.json", "model.safetensors", "pytorch_model.bin"
HF_PREPROCESSOR = "preprocessor_config.json"
# transformers model types read here: CLIPModel, and SiglipModel (siglip2 for the NaFlex Siglip2Model,
# which the SigLIP converter refuses with the reason).
HF_MODEL_TYPES = ("clip", "siglip", "siglip2")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Files a non-CLIP (SentencePiece) tokenizer may need, beside the weights; fetched on first use.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


# --- reading -------------------------------------------------------------------------------

def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_pickle(path: Path, allow_pickle: bool) -> StateDict:
    """A pickled checkpoint, only when explicitly allowed, and only with ``weights_only`` loading."""
    if not allow_pickle:
        raise WeightsError(
            f"refusing to load the pickled file {path}: unpickling can run arbitrary code. Convert it "
            "explicitly (maskclip convert, or load(..., allow_pickle=True), which uses "
            "torch.load(weights_only=True)), or use a .safetensors file"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise WeightsError(f"cannot load {path} with torch.load(weights_only=True): {e}") from None
    return convert.unwrap_checkpoint(obj, source=str(path))


def read_weights(path: Path, allow_pickle: bool = False) -> StateDict:
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path, allow_pickle)
    raise WeightsError(f"unknown weights file type {path.name!r}; expected .safetensors (or a pickle "
                       f"{PICKLE_SUFFIXES} with allow_pickle=True)")


def config_json_layout(data: Mapping[str, Any]) -> Optional[str]:
    """Whose ``config.json`` this is: ``maskclip`` | ``transformers``, or ``None`` (e.g. timm's)."""
    if data.get("config_type") == CONFIG_TYPE:
        return "maskclip"
    if data.get("model_type") in HF_MODEL_TYPES:
        return "transformers"
    return None


def folder_layout(folder: Path) -> str:
    """Which layout a checkpoint folder is in: ``maskclip`` | ``open_clip`` | ``transformers``."""
    folder = Path(folder)
    config = folder / NATIVE_CONFIG
    layout = config_json_layout(read_json(config)) if config.is_file() else None
    if layout is not None:
        return layout
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return "open_clip"
    present = sorted(p.name for p in folder.iterdir())[:12]
    raise ModelNotFoundError(
        f"{folder} is not a checkpoint folder maskclip can read: expected config.json + model.safetensors "
        f"(maskclip, or transformers CLIPModel or SiglipModel) or open_clip_config.json + open_clip_model.safetensors; "
        f"found {present}"
    )


def _first_existing(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ModelNotFoundError(f"{folder} has no weights file; expected one of {list(names)}")


def read_folder(folder: Path, allow_pickle: bool = False) -> Tuple[ModelConfig, StateDict]:
    """A checkpoint folder in any layout -> native config and state dict."""
    folder = Path(folder)
    layout = folder_layout(folder)
    if layout == "maskclip":
        config = ModelConfig.from_json(folder / NATIVE_CONFIG)
        return config, read_weights(folder / NATIVE_WEIGHTS, allow_pickle)
    if layout == "open_clip":
        weights = _first_existing(folder, OPEN_CLIP_WEIGHTS, OPEN_CLIP_PICKLE)
        return convert.from_open_clip(read_json(folder / OPEN_CLIP_CONFIG), read_weights(weights, allow_pickle))
    hf_config = read_json(folder / HF_CONFIG)
    if hf_config.get("model_type") != "clip":
        return convert.from_siglip_transformers_folder(folder, hf_config)
    weights = _first_existing(folder, HF_WEIGHTS, HF_PICKLE)
    return convert.from_transformers(hf_config, read_weights(weights, allow_pickle))


def read_file(path: Path, allow_pickle: bool = False) -> Tuple[ModelConfig, StateDict]:
    """A single weights file -> native config and state dict.

    With a maskclip ``config.json`` beside it, that config is used; otherwise the key layout
    (native, OpenAI, open_clip, transformers, timm, SLIP, RILS) is detected and the config is
    inferred from the tensor shapes.
    """
    path = Path(path)
    sd = read_weights(path, allow_pickle)
    beside = path.parent / NATIVE_CONFIG
    if beside.is_file() and config_json_layout(read_json(beside)) == "maskclip":
        return ModelConfig.from_json(beside), sd
    return convert.to_native(sd)


# --- writing -------------------------------------------------------------------------------

def write_safetensors(tensors: StateDict, path: Path, metadata: Dict[str, str] = None) -> None:
    """Atomically write ``tensors`` (made contiguous, on the CPU) to ``path``."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_pretrained(model, path, format: str = "maskclip") -> Path:
    """Write ``model`` as a folder in ``format`` (weights first, then config, each atomically).

    The conversion runs first, so a model the layout cannot express is refused before anything is written.
    """
    if format not in FORMATS:
        raise InputError(f"format must be one of {list(FORMATS)}; got {format!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    sd = model.state_dict()
    if format == "maskclip":
        weights_name, weights, configs = NATIVE_WEIGHTS, sd, {}
    elif format == "open_clip":
        oc_config, weights = convert.to_open_clip(model.config, sd)
        weights_name, configs = OPEN_CLIP_WEIGHTS, {OPEN_CLIP_CONFIG: oc_config}
    else:
        weights_name, (weights, configs) = HF_WEIGHTS, _transformers_files(model.config, sd)
    folder.mkdir(parents=True, exist_ok=True)
    copy_tokenizer_files(model, folder)
    write_safetensors(weights, folder / weights_name)
    if format == "maskclip":
        model.config.to_json(folder / NATIVE_CONFIG)
    for name, data in configs.items():
        atomic_write_text(folder / name, json.dumps(data, indent=2) + "\n")
    if format == "transformers" and model.config.vision.timm_model_name is None:
        from .tokenizer import get_tokenizer

        get_tokenizer().save_transformers_files(folder)  # CLIP's; a SigLIP model's own files were copied
    return folder


def _transformers_files(config: ModelConfig, sd: StateDict) -> Tuple[StateDict, Dict[str, dict]]:
    """A timm (SigLIP) tower as ``SiglipModel``, else ``CLIPModel``: (state dict, {file name: JSON})."""
    if is_timm_conv(config.vision.timm_model_name):
        raise ConfigError(f"transformers has no CLIP model class with a ConvNeXt image tower "
                          f"({config.vision.timm_model_name!r}); save it as format='maskclip' or 'open_clip'")
    if config.vision.timm_model_name is not None:
        hf_config, hf_sd, preprocessor = convert.to_siglip_transformers(config, sd)
    else:
        hf_config, hf_sd = convert.to_transformers(config, sd)
        preprocessor = convert.transformers_preprocessor_config(config)
    return hf_sd, {HF_CONFIG: hf_config, HF_PREPROCESSOR: preprocessor}


def copy_tokenizer_files(model, folder: Path) -> None:
    """A non-CLIP tokenizer's files (``TOKENIZER_FILES``) from where the model was loaded into ``folder``."""
    source = getattr(model, "tokenizer_files", None)
    if source is None:
        return
    source = Path(source())
    if source.resolve() == folder.resolve():
        return
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            atomic_write(folder / name, lambda tmp, src=source / name: shutil.copyfile(src, tmp))


def push_to_hub(model, repo_id: str, private: bool = False, revision: str = None,
                commit_message: str = "Upload maskclip model", format: str = "maskclip", token: str = None,
                license: Optional[str] = None, model_card: bool = True):
    """Save ``model`` in ``format`` to a temporary folder and upload it to ``repo_id`` on the Hub.

    With ``model_card`` (the default) a ``README.md`` goes along (``maskclip.model_card``;
    ``license`` a Hub licence id, default the registered model's), unless the repo already has
    one: a card written or edited on the Hub is not replaced.
    """
    import tempfile

    from huggingface_hub import HfApi

    from . import model_card as cards

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise InputError(f"repo_id must look like 'org/name'; got {repo_id!r}")
    card = cards.model_card(model, repo_id, format, license) if model_card else None  # checks before any upload
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, format=format)
        if card is not None and not api.file_exists(repo_id, cards.README, revision=revision):
            atomic_write_text(Path(tmp) / cards.README, card)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message)
