"""Writing tar shards (the layout ``maskclip.datasets.tar`` reads) and their manifest.

Tar headers carry no time or owner, so the same samples give the same bytes; each file is
written atomically.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..atomic import atomic_write, atomic_write_text
from ..errors import InputError
from .manifest import MANIFEST_FORMAT
from .record import read_image, read_mask


IMAGE_FORMATS = ("png", "jpg")  # how the synthetic shards store images

def write_shards(dataset, out_dir, shards: int = 1, prefix: Optional[str] = None, image_format: str = "png",
                 progress: bool = False) -> Path:
    """Write ``dataset`` (``ds[i] -> Sample``) to ``shards`` tar files in ``out_dir``; returns the manifest path.

    Samples are split into contiguous runs, shard ``k`` named ``{prefix}-{k:05d}.tar`` (prefix
    default: the dataset's split). Each sample's image (decoded first if it is a path or bytes)
    is written as ``{key}.png`` (or ``.jpg``), its first caption as ``{key}.txt``, its meta and
    all captions as ``{key}.json`` and its mask as ``{key}.mask.png``. The manifest
    ``{prefix}.json`` lists the shards, the sample count and the dataset's ``classnames``,
    ``segmentation_classes`` and ``templates`` if it has them.
    """
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"image_format must be one of {list(IMAGE_FORMATS)}; got {image_format!r}")
    n = len(dataset)
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= max(n, 1):
        raise InputError(f"shards must be an integer in [1, {max(n, 1)}] (the sample count); got {shards!r}")
    prefix = prefix or getattr(dataset, "split", "shard")
    out = Path(out_dir)
    bounds = [round(k * n / shards) for k in range(shards + 1)]
    names = []
    for k in range(shards):
        name = f"{prefix}-{k:05d}.tar"
        indices = range(bounds[k], bounds[k + 1])
        atomic_write(out / name, lambda tmp, idx=indices: _write_tar(tmp, dataset, idx, image_format))
        names.append(name)
        if progress:
            print(f"wrote {out / name} ({len(indices)} samples)", flush=True)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "count": n, "shards": names,
                "image_format": image_format, "dataset": repr(dataset)}
    for field in ("classnames", "segmentation_classes", "templates"):
        if hasattr(dataset, field):
            manifest[field] = list(getattr(dataset, field))
    path = out / f"{prefix}.json"
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def _write_tar(path: str, dataset, indices, image_format: str) -> None:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in indices:
            image, captions, mask, meta = dataset[i]
            key = meta.get("key", f"{i:09d}")
            _add(tar, f"{key}.{image_format}", _encode(read_image(image), image_format))
            if captions:
                _add(tar, f"{key}.txt", captions[0].encode("utf-8"))
            _add(tar, f"{key}.json", json.dumps({**meta, "captions": list(captions)}, sort_keys=True).encode("utf-8"))
            if mask is not None:
                labels = Image.fromarray(np.asarray(read_mask(mask), dtype=np.uint8), "L")
                _add(tar, f"{key}.mask.png", _encode(labels, "png"))


def _encode(image: Image.Image, image_format: str) -> bytes:
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))
