"""Model names, the registry, Hub downloads, and ``load``: one place that turns a name into a model.

``load`` accepts a registry name (``maskclip.available_models()``), an open_clip name
(``"ViT-B-16-SigLIP2/webli"``, ``maskclip.open_clip_names()``), a local checkpoint folder or weights
file, or ``hf-hub:org/repo[@revision]``. Hub files go through
``huggingface_hub.hf_hub_download`` (its cache, resumable downloads, ``HF_HUB_OFFLINE``).
"""
from __future__ import annotations

import difflib
import importlib
import os
import re
from functools import lru_cache, partial
from importlib import resources as package_files
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch

from . import resources, serialization
from .build import build_model
from .config import ModelConfig, TextConfig
from .errors import InputTypeError, ModelNotFoundError, WeightsError, WeightsUnavailableError
from .convert.open_clip_timm import family_preprocess
from .model import DualEncoder
from .open_clip_models import open_clip_entry, open_clip_names

HUB_PREFIX = "hf-hub:"


@lru_cache(maxsize=None)
def registry() -> Dict[str, dict]:
    """Registered names -> entries (repo, layout, files, sha256, act, source, licence, ...)."""
    return resources.read_json("registry.json")


def available_models() -> List[str]:
    """All registered model names (including those whose weights are not public; see ``model_info``)."""
    return sorted(registry())


def model_info(name: str) -> dict:
    """The registry entry of ``name`` (a copy)."""
    return dict(_entry(name))


def _entry(name: str) -> dict:
    reg = registry()
    if name not in reg:
        shown = name if len(name) <= 100 else name[:100] + "..."
        close = _close_names(name, list(reg))
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelNotFoundError(
            f"unknown model {shown!r}: not a registered name, an existing path, or 'hf-hub:org/repo'.{hint} "
            f"Registered: {', '.join(sorted(reg))}"
        )
    return reg[name]


def _close_names(name: str, names: List[str]) -> List[str]:
    """Up to 3 registered names closest to ``name``, ignoring case and ``_`` / ``-`` / space."""
    def key(s: str) -> str:
        return s.lower().replace("_", "-").replace(" ", "-")

    by_key = {key(n): n for n in names}
    return [by_key[k] for k in difflib.get_close_matches(key(name), list(by_key), n=3, cutoff=0.5)]


# --- Hub downloads -------------------------------------------------------------------------

def hub_file(repo: str, filename: str, revision: Optional[str] = None, cache_dir=None) -> Optional[Path]:
    """Download (or find in the cache) one file of a Hub repo; ``None`` if the repo lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub import errors as e

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir))
    except (e.EntryNotFoundError, e.LocalEntryNotFoundError) as err:
        if isinstance(err, e.LocalEntryNotFoundError) and _repo_unreachable(repo, revision, cache_dir):
            raise ModelNotFoundError(
                f"{repo}{'@' + revision if revision else ''} is not in the local Hugging Face cache and the Hub "
                "cannot be reached (offline, HF_HUB_OFFLINE=1, or no network). Download it once while online, "
                "or pass a local folder"
            ) from None
        return None
    except (e.RepositoryNotFoundError, e.RevisionNotFoundError, e.GatedRepoError) as err:
        raise ModelNotFoundError(f"cannot open Hub repo {repo!r} (revision {revision or 'main'}): "
                                 f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    except (e.HfHubHTTPError, e.OfflineModeIsEnabled, OSError) as err:
        raise ModelNotFoundError(f"cannot download {filename} from {repo!r}: {str(err).splitlines()[0]}") from None
    except e.HFValidationError as err:
        raise ModelNotFoundError(f"{repo!r} (revision {revision!r}) is not a valid Hub repo id and revision: "
                                 f"{str(err).splitlines()[0]}") from None


def _repo_unreachable(repo: str, revision: Optional[str], cache_dir) -> bool:
    """True when the repo is not cached at all (so a missing file says nothing about the repo)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True,
                          allow_patterns=["*.json"])
        return False
    except Exception:  # any failure here means: no usable local snapshot
        return True


def _verify_sha256(path: Path, expected: Optional[str], name: str) -> None:
    """Hash the weights file on disk and compare with ``expected`` (the registry's sha256).

    Without a registered digest, a file in the Hub cache is still checked against its blob name:
    ``huggingface_hub`` names each LFS blob by the sha256 the Hub reported, so a mismatch means
    the bytes changed after the download (bit rot, a partial copy, tampering).
    """
    real = Path(os.path.realpath(path))
    what = "the registered sha256"
    if not expected and real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        expected, what = real.name, "the sha256 the Hub cache names the file by"
    if not expected:
        return
    digest = serialization.sha256_file(real)
    if digest != expected:
        raise WeightsError(f"sha256 mismatch for {name} ({path}): expected {expected} ({what}), got {digest}. "
                           "The file is corrupt or not the expected one; delete it and download again")


def _hub_folder(repo: str, revision: Optional[str], cache_dir, files: Optional[Tuple[str, ...]] = None,
                sha256: Optional[str] = None, name: Optional[str] = None) -> Path:
    """Fetch the files of a checkpoint repo in any layout; return the snapshot folder holding them.

    The weights file is checked against ``sha256`` (or its Hub cache blob name, see ``_verify_sha256``).
    """
    candidates = [files] if files else [
        (serialization.NATIVE_CONFIG, serialization.NATIVE_WEIGHTS),
        (serialization.OPEN_CLIP_CONFIG, serialization.OPEN_CLIP_WEIGHTS),
    ]
    for config_name, weights_name in candidates:
        config = hub_file(repo, config_name, revision, cache_dir)
        if config is None:
            continue
        data = serialization.read_json(config)
        layout = serialization.config_json_layout(data)
        if config_name == serialization.NATIVE_CONFIG and layout is None:
            continue  # e.g. a timm config.json beside open_clip files
        weights = hub_file(repo, weights_name, revision, cache_dir)
        if weights is None:
            raise ModelNotFoundError(f"Hub repo {repo!r} has {config_name} but not {weights_name}")
        _verify_sha256(weights, sha256, name or repo)
        if layout == "transformers" and data.get("model_type") != "clip":  # SigLIP: its preprocessing (optional)
            hub_file(repo, serialization.HF_PREPROCESSOR, revision, cache_dir)
        return config.parent
    raise ModelNotFoundError(
        f"Hub repo {repo!r} has no checkpoint maskclip can read: expected config.json + model.safetensors "
        "(maskclip, transformers CLIPModel or SiglipModel) or open_clip_config.json + open_clip_model.safetensors"
    )


def parse_hub_name(name: str) -> Tuple[str, Optional[str]]:
    """``'hf-hub:org/repo@rev'`` -> ``('org/repo', 'rev')``."""
    repo = name[len(HUB_PREFIX):]
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelNotFoundError(f"expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'; got {name!r}")
    return repo, revision or None


# --- load ----------------------------------------------------------------------------------

# What resolution returns: native config, state dict, and the folder (local, or a Hub repo fetched on demand)
# that holds a non-CLIP tokenizer's files, if any.
Resolved = Tuple[ModelConfig, Dict[str, torch.Tensor], Optional[Callable[[], Path]]]


def resolve(name: Union[str, os.PathLike], revision: Optional[str] = None, cache_dir=None,
            allow_pickle: bool = False) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """A name, path or Hub repo -> native config and state dict (nothing built yet)."""
    return _resolve(name, revision, cache_dir, allow_pickle)[:2]


def _local(folder: Path) -> Callable[[], Path]:
    return lambda: folder


def _hub_tokenizer_folder(repo: str, revision: Optional[str], cache_dir, folder: Path) -> Callable[[], Path]:
    """A callable that fetches the tokenizer files of a Hub repo into its snapshot ``folder`` and returns it."""
    def fetch() -> Path:
        for filename in serialization.TOKENIZER_FILES:
            hub_file(repo, filename, revision, cache_dir)
        return folder
    return fetch


def _resolve(name, revision, cache_dir, allow_pickle) -> Resolved:
    if isinstance(name, os.PathLike) or (isinstance(name, str) and os.path.exists(name)):
        path = Path(name)
        if not path.exists():
            raise ModelNotFoundError(f"{path} does not exist")
        if path.is_dir():
            return (*serialization.read_folder(path, allow_pickle), _local(path))
        return (*serialization.read_file(path, allow_pickle), None)
    if not isinstance(name, str):
        raise InputTypeError(f"model name must be a string or a path; got {type(name).__name__}")
    if name.startswith(HUB_PREFIX):
        repo, rev = parse_hub_name(name)
        folder = _hub_folder(repo, revision or rev, cache_dir)
        return (*serialization.read_folder(folder, allow_pickle), _hub_tokenizer_folder(repo, revision or rev,
                                                                                         cache_dir, folder))
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        entry = open_clip_entry(name)
        if entry is not None:
            return _resolve_open_clip(entry, revision, cache_dir)
        raise ModelNotFoundError(f"{name!r} is neither a registered name, an open_clip name maskclip builds "
                                 f"({', '.join(open_clip_names())}) nor an existing path; "
                                 f"for a Hub repo write 'hf-hub:{name}'")
    if "/" in name or os.sep in name or name.endswith((".safetensors",) + serialization.PICKLE_SUFFIXES):
        raise ModelNotFoundError(f"path {name!r} does not exist")
    return _resolve_registered(name, revision, cache_dir)


def _resolve_open_clip(entry: dict, revision: Optional[str], cache_dir) -> Resolved:
    """An ``open_clip_names`` entry -> its open_clip Hub repo, with the entry's activation and preprocessing.

    The preprocessing family applies when the repo's ``open_clip_config.json`` has no ``preprocess_cfg``.
    """
    files = (serialization.OPEN_CLIP_CONFIG, serialization.OPEN_CLIP_WEIGHTS)
    folder = _hub_folder(entry["repo"], revision, cache_dir, files, None, entry["name"])
    config, sd = serialization.read_folder(folder)
    if entry.get("act"):
        config.vision.act = config.text.act = entry["act"]
    if not serialization.read_json(folder / serialization.OPEN_CLIP_CONFIG).get("preprocess_cfg"):
        config.preprocess = family_preprocess(entry["preprocess"], config.vision.image_size)
    config.name = entry["name"]
    return config, sd, _hub_tokenizer_folder(entry["repo"], revision, cache_dir, folder)


def _resolve_registered(name: str, revision: Optional[str], cache_dir) -> Resolved:
    entry = _entry(name)
    if entry.get("open_clip"):  # a short name for an open_clip name
        config, sd, tokenizer = _resolve_open_clip(open_clip_entry(entry["open_clip"]), revision, cache_dir)
        config.name = name
        return config, sd, tokenizer

    if not entry.get("weights_available", True):
        raise WeightsUnavailableError(f"no public weights exist for {name!r}. {entry.get('unavailable_reason', '')} "
                                      f"Instead: {entry.get('instead', '')}".strip())
    if entry.get("bundled"):
        folder = Path(str(package_files.files("maskclip").joinpath(entry["bundled"])))
        if not (folder / serialization.NATIVE_WEIGHTS).is_file():
            raise ModelNotFoundError(f"the bundled model {name!r} is missing from this installation ({folder}); "
                                     "reinstall maskclip")
        _verify_sha256(folder / serialization.NATIVE_WEIGHTS, entry.get("sha256"), name)
        config, sd = serialization.read_folder(folder)
        config.name = name
        return config, {k: v.float() for k, v in sd.items()}, _local(folder)  # fp16 in the wheel, to keep it small
    files = (entry["config_file"], entry["weights_file"]) if entry.get("config_file") else None
    folder = _hub_folder(entry["repo"], revision, cache_dir, files, entry.get("sha256") if files else None, name)
    config, sd = serialization.read_folder(folder)
    if entry.get("act"):
        config.vision.act = config.text.act = entry["act"]
    config.name = name
    return config, sd, _hub_tokenizer_folder(entry["repo"], revision, cache_dir, folder)


def folder_tokenizer(folder: Callable[[], Path], text: TextConfig):
    """The non-CLIP tokenizer (``maskclip.spm_tokenizer``) whose files ``folder()`` holds, for the text tower ``text``.

    A native folder has no ``open_clip_config.json``; its ``config.json`` carries open_clip's
    ``hf_tokenizer_name`` and ``tokenizer_kwargs`` (the clean-up), which are passed on unless
    ``tokenizer_kwargs`` is ``None`` (a model read from transformers: no open_clip clean-up).
    """
    try:  # by name: the module needs the optional 'tokenizers' package
        SentencePieceTokenizer = importlib.import_module("maskclip.spm_tokenizer").SentencePieceTokenizer
    except ImportError as e:
        raise ModelNotFoundError(
            "this model's tokenizer is SentencePiece (SigLIP's), which needs maskclip.spm_tokenizer and the "
            f"'tokenizers' package; it could not be imported ({e}). Install 'tokenizers', or pass token ids") from None
    path = folder()
    config = path / serialization.NATIVE_CONFIG
    native = config.is_file() and serialization.config_json_layout(serialization.read_json(config)) == "maskclip"
    text_cfg = {"hf_tokenizer_name": text.hf_tokenizer_name, "tokenizer_kwargs": text.tokenizer_kwargs}
    return SentencePieceTokenizer.from_folder(
        path, context_length=text.context_length,
        open_clip_text_cfg=text_cfg if native and text.tokenizer_kwargs is not None else None)


def load(name: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
         dtype: Optional[torch.dtype] = None, revision: Optional[str] = None, cache_dir=None,
         allow_pickle: bool = False, autocast: Optional[torch.dtype] = None, compile: bool = False) -> DualEncoder:
    """Load a pretrained model, in eval mode.

    Args:
        name: a registered name (``available_models()``), an open_clip name
            (``"<architecture>/<tag>"``, ``maskclip.open_clip_names()``), a checkpoint folder (maskclip,
            open_clip or transformers layout), a weights file, or ``"hf-hub:org/repo[@revision]"``.
        device, dtype: where and in which floating dtype to put the weights (default CPU, fp32).
        revision: Hub branch, tag or commit.
        allow_pickle: read pickled ``.bin``/``.pt`` files (with ``torch.load(weights_only=True)``).
        autocast: run the encoders in mixed precision (``torch.bfloat16`` or ``torch.float16``;
            see ``DualEncoder.autocast``), the weights staying in ``dtype``.
        compile: ``torch.compile`` the towers (``DualEncoder.compile``); the first calls compile.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InputTypeError(f"dtype must be a floating torch.dtype such as torch.float16; got {dtype!r}")
    config, sd, tokenizer_folder = _resolve(name, revision, cache_dir, allow_pickle)
    model = build_model(config, sd, source=str(name))
    if config.text.hf_tokenizer_name and tokenizer_folder is not None:
        model.tokenizer_loader = partial(folder_tokenizer, tokenizer_folder, config.text)
        model.tokenizer_files = tokenizer_folder
    model.to(device=device or "cpu", dtype=dtype)
    model.autocast = autocast
    model.eval()
    return model.compile() if compile else model

