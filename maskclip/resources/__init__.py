"""The package's data files: the model registry, architectures, training presets, prompt templates,
class names and the synthetic benchmark's vocabulary.

This package imports nothing from maskclip, so reading a data file never pulls in other code. JSON
files may carry documentation under keys that start with ``_``; ``read_json`` drops them.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict


def read_text(name: str) -> str:
    """The text of the bundled data file ``name`` (UTF-8)."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def read_json(name: str) -> Dict[str, Any]:
    """The bundled JSON file ``name`` as a dict, without its top-level ``_``-prefixed (comment) keys."""
    return {k: v for k, v in json.loads(read_text(name)).items() if not k.startswith("_")}
