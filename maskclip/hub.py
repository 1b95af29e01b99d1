"""Model names, the registry, and loading: one place that turns a name into a model.

``load`` accepts a registry name (``maskclip.available_models()``), a local checkpoint folder
or weights file, or ``hf-hub:org/repo[@revision]``. Hub files go through
``huggingface_hub.hf_hub_download`` (its cache, resumable downloads, ``HF_HUB_OFFLINE``).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from . import io
from .config import ModelConfig
from .errors import InputTypeError, ModelNotFoundError, WeightsError, WeightsUnavailableError
from .model import MaskCLIP

HUB_PREFIX = "hf-hub:"


@lru_cache(maxsize=None)
def registry() -> Dict[str, dict]:
    """Registered names -> entries (repo, layout, files, sha256, act, source, licence, ...)."""
    text = resources.files("maskclip.data").joinpath("registry.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def available_models() -> List[str]:
    """All registered model names (including those whose weights are not public; see ``model_info``)."""
    return sorted(registry())


def model_info(name: str) -> dict:
    """The registry entry of ``name`` (a copy)."""
    return dict(_entry(name))


def _entry(name: str) -> dict:
    reg = registry()
    if name not in reg:
        close = difflib.get_close_matches(name, list(reg), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ModelNotFoundError(
            f"unknown model {name!r}: not a registered name, an existing path, or 'hf-hub:org/repo'.{hint} "
            f"Registered: {', '.join(sorted(reg))}"
        )
    return reg[name]


# --- Hub downloads -------------------------------------------------------------------------

def _hub_errors():
    from huggingface_hub import errors as e

    return (e.EntryNotFoundError, e.LocalEntryNotFoundError, e.RepositoryNotFoundError,
            e.RevisionNotFoundError, e.GatedRepoError, e.HfHubHTTPError, e.OfflineModeIsEnabled)


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
    if not expected:
        return
    real = Path(os.path.realpath(path))
    # The Hub cache stores LFS files under their sha256: no need to re-hash what the name proves.
    digest = real.name if len(real.name) == 64 and real.parent.name == "blobs" else _sha256(real)
    if digest != expected:
        raise WeightsError(f"sha256 mismatch for {name} ({path}): expected {expected}, got {digest}. "
                           "The file is corrupt or not the registered one; delete it and download again")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hub_folder(repo: str, revision: Optional[str], cache_dir, files: Optional[Tuple[str, ...]] = None) -> Path:
    """Fetch the files of a checkpoint repo in any layout; return the snapshot folder holding them."""
    candidates = [files] if files else [
        (io.NATIVE_CONFIG, io.NATIVE_WEIGHTS),
        (io.OPEN_CLIP_CONFIG, io.OPEN_CLIP_WEIGHTS),
    ]
    for config_name, weights_name in candidates:
        config = hub_file(repo, config_name, revision, cache_dir)
        if config is None:
            continue
        data = io.read_json(config)
        if config_name == io.NATIVE_CONFIG and data.get("config_type") != "maskclip" \
                and data.get("model_type") != "clip":
            continue  # e.g. a timm config.json beside open_clip files
        weights = hub_file(repo, weights_name, revision, cache_dir)
        if weights is None:
            raise ModelNotFoundError(f"Hub repo {repo!r} has {config_name} but not {weights_name}")
        return config.parent
    raise ModelNotFoundError(
        f"Hub repo {repo!r} has no checkpoint maskclip can read: expected config.json + model.safetensors "
        "(maskclip or transformers) or open_clip_config.json + open_clip_model.safetensors"
    )


def parse_hub_name(name: str) -> Tuple[str, Optional[str]]:
    """``'hf-hub:org/repo@rev'`` -> ``('org/repo', 'rev')``."""
    repo = name[len(HUB_PREFIX):]
    repo, _, revision = repo.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ModelNotFoundError(f"expected 'hf-hub:org/repo' or 'hf-hub:org/repo@revision'; got {name!r}")
    return repo, revision or None


# --- load ----------------------------------------------------------------------------------

def resolve(name: Union[str, os.PathLike], revision: Optional[str] = None, cache_dir=None,
            allow_pickle: bool = False) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """A name, path or Hub repo -> native config and state dict (nothing built yet)."""
    if isinstance(name, os.PathLike) or (isinstance(name, str) and os.path.exists(name)):
        path = Path(name)
        if not path.exists():
            raise ModelNotFoundError(f"{path} does not exist")
        return io.read_folder(path, allow_pickle) if path.is_dir() else io.read_file(path, allow_pickle)
    if not isinstance(name, str):
        raise InputTypeError(f"model name must be a string or a path; got {type(name).__name__}")
    if name.startswith(HUB_PREFIX):
        repo, rev = parse_hub_name(name)
        return io.read_folder(_hub_folder(repo, revision or rev, cache_dir), allow_pickle)
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{name!r} is neither a registered name nor an existing path; "
                                 f"for a Hub repo write 'hf-hub:{name}'")
    if "/" in name or os.sep in name or name.endswith((".safetensors",) + io.PICKLE_SUFFIXES):
        raise ModelNotFoundError(f"path {name!r} does not exist")
    return _resolve_registered(name, revision, cache_dir)


def _resolve_registered(name: str, revision: Optional[str], cache_dir):
    entry = _entry(name)
    if not entry.get("weights_available", True):
        raise WeightsUnavailableError(f"no public weights exist for {name!r}. {entry.get('unavailable_reason', '')} "
                                      f"Instead: {entry.get('instead', '')}".strip())
    files = (entry["config_file"], entry["weights_file"]) if entry.get("config_file") else None
    folder = _hub_folder(entry["repo"], revision, cache_dir, files)
    if files:
        _verify_sha256(folder / entry["weights_file"], entry.get("sha256"), name)
    config, sd = io.read_folder(folder)
    if entry.get("act"):
        config.vision.act = config.text.act = entry["act"]
    config.name = name
    return config, sd


def load(name: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
         dtype: Optional[torch.dtype] = None, revision: Optional[str] = None, cache_dir=None,
         allow_pickle: bool = False, autocast: Optional[torch.dtype] = None, compile: bool = False) -> MaskCLIP:
    """Load a pretrained model, in eval mode.

    Args:
        name: a registered name (``available_models()``), a checkpoint folder (maskclip,
            open_clip or transformers layout), a weights file, or ``"hf-hub:org/repo[@revision]"``.
        device, dtype: where and in which floating dtype to put the weights (default CPU, fp32).
        revision: Hub branch, tag or commit.
        allow_pickle: read pickled ``.bin``/``.pt`` files (with ``torch.load(weights_only=True)``).
        autocast: run the encoders in mixed precision (``torch.bfloat16`` or ``torch.float16``;
            see ``MaskCLIP.autocast``), the weights staying in ``dtype``.
        compile: ``torch.compile`` the towers (``MaskCLIP.compile``); the first calls compile.
    """
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InputTypeError(f"dtype must be a floating torch.dtype such as torch.float16; got {dtype!r}")
    config, sd = resolve(name, revision, cache_dir, allow_pickle)
    model = MaskCLIP(config)
    load_state_dict(model, sd, source=str(name))
    model.to(device=device or "cpu", dtype=dtype)
    model.autocast = autocast
    model.eval()
    return model.compile() if compile else model


def load_state_dict(model: MaskCLIP, sd: Dict[str, torch.Tensor], source: str = "the checkpoint") -> None:
    """Strict load with one readable error for missing keys, extra keys, shapes and dtypes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(v.shape)}"
              for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    dtypes = [f"{k}: {sd[k].dtype}" for k in expected if k in sd and not sd[k].is_floating_point()]
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", extra),
                         ("shape mismatches", shapes), ("non-float tensors", dtypes)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{label}: {items[:5]}{more}")
    if problems:
        raise WeightsError(f"weights from {source} do not match the config "
                           f"({model.config.name or 'unnamed'}): " + "; ".join(problems))
    bad = [k for k, v in sd.items() if not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"weights from {source} contain NaN or Inf in {bad[:5]}")
    model.load_state_dict(sd, strict=True)
