"""The manifest ``write_shards`` writes beside a shard set: ``{prefix}.json`` naming the shards.

``{"format": "maskclip-shards", "version": 1, "count": N, "shards": [names...], ...}`` plus
the vocabularies of the dataset written (``classnames``, ``segmentation_classes``, ``templates``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from ..errors import InputError

MANIFEST_FORMAT = "maskclip-shards"


def read_manifest(path) -> dict:
    """The manifest at ``path`` (a ``.json``); ``InputError`` if it is not one."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read shard manifest {str(path)!r}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{str(path)!r} is not a maskclip shard manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    return manifest


def find_manifests(folder) -> List[Path]:
    """The shard manifests among the ``.json`` files of ``folder``."""
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            read_manifest(path)
        except InputError:
            continue
        found.append(path)
    return found
