"""Reading a checkpoint's files: a JSON object, a safetensors state dict, every way either can be broken
turned into a ``ConfigError`` / ``WeightsError`` saying what was wrong with which file.

Apart from ``serialization`` (which re-exports both) so that converters reading a folder of their
own layout (``convert.siglip_transformers``) need not import it: it imports ``convert``.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import ConfigError, WeightsError

StateDict = Dict[str, torch.Tensor]
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object; got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> StateDict:
    """Load a safetensors file, turning every way it can be broken into a ``WeightsError``."""
    duplicates = _duplicate_header_keys(path)
    if duplicates:
        raise WeightsError(f"{path} has a safetensors header naming {duplicates[:5]} more than once; parsers "
                           "disagree on which entry wins, so the file is refused")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        size = Path(path).stat().st_size if Path(path).exists() else 0
        raise WeightsError(
            f"{path} is not a readable safetensors file ({size} bytes; truncated or corrupt?): {e}"
        ) from None


def _duplicate_header_keys(path: Path) -> list:
    """Keys that an object of a safetensors JSON header lists twice (its parser keeps one silently).

    Headers that are not readable JSON are left for ``safetensors`` to reject.
    """
    dupes = []

    def unique(items):
        keys = [k for k, _ in items]
        dupes.extend(sorted({k for k in keys if keys.count(k) > 1}))
        return dict(items)

    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, _MAX_HEADER):
                return []
            json.loads(f.read(n).decode("utf-8"), object_pairs_hook=unique)
    except (OSError, struct.error, UnicodeDecodeError, ValueError, RecursionError):
        return []
    return dupes
