"""Results as JSON: NaN (a class with no samples) becomes null, files are written atomically."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_write_text


def jsonable(value):
    """``value`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def to_json(results: dict) -> str:
    return json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n"


def write_results(results: dict, path) -> Path:
    """Write ``results`` to ``path`` as JSON (atomically); returns the path."""
    path = Path(path)
    atomic_write_text(path, to_json(results))
    return path
