"""Tar shards in the webdataset / img2dataset layout, written and read with the standard library.

A shard is a plain tar whose members are grouped by key (the file name up to its first dot),
consecutive members sharing a key forming one sample:

- ``{key}.png`` or ``{key}.jpg``: the image;
- ``{key}.txt``: one caption (the first), as img2dataset writes it;
- ``{key}.json``: the sample's metadata, with all its captions under ``"captions"``;
- ``{key}.mask.png``: the label mask (8-bit, one class index per pixel).

``write_shards`` also writes a manifest ``{prefix}.json`` beside the shards (sample count, shard
names, class vocabulary, templates). Shards from elsewhere (img2dataset: image + txt only) read
too. Reading skips, and counts, samples that cannot be decoded and shards that end early.
"""
from __future__ import annotations

import glob
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..atomic import atomic_write, atomic_write_text
from ..errors import InputError
from ..transforms import to_rgb
from .synthetic import Sample

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")
MANIFEST_FORMAT = "maskclip-shards"


def write_shards(dataset, out_dir, shards: int = 1, prefix: Optional[str] = None, image_format: str = "png",
                 progress: bool = False) -> Path:
    """Write ``dataset`` (``ds[i] -> Sample``) to ``shards`` tar files in ``out_dir``; returns the manifest path.

    Samples are split into contiguous runs, shard ``k`` named ``{prefix}-{k:05d}.tar`` (prefix
    default: the dataset's split). Tar headers carry no time or owner, so the same samples give
    the same bytes. Each file is written atomically.
    """
    if image_format not in ("png", "jpg"):
        raise InputError(f"image_format must be 'png' or 'jpg'; got {image_format!r}")
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
            _add(tar, f"{key}.{image_format}", _encode(image, image_format))
            _add(tar, f"{key}.txt", captions[0].encode("utf-8"))
            _add(tar, f"{key}.json", json.dumps({**meta, "captions": list(captions)}, sort_keys=True).encode("utf-8"))
            if mask is not None:
                _add(tar, f"{key}.mask.png", _encode(Image.fromarray(np.asarray(mask, dtype=np.uint8), "L"), "png"))


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


# --- reading -----------------------------------------------------------------------------------------


def shard_paths(source) -> List[Path]:
    """Shard paths from one spec or a list of them; a spec is a manifest ``.json``, a folder of ``.tar``
    files, or a ``.tar`` path, which may use brace ranges (``data/{00000..00099}.tar``) and globs."""
    specs = list(source) if isinstance(source, (list, tuple)) else [source]
    return [path for spec in specs for path in _spec_paths(spec)]


def _spec_paths(spec) -> List[Path]:
    p = Path(spec)
    if p.suffix == ".json" and p.is_file():
        paths = [p.parent / name for name in read_manifest(p)["shards"]]
    elif p.is_dir():
        paths = sorted(p.glob("*.tar"))
        if not paths:
            raise InputError(f"no .tar shards in folder {str(p)!r}")
    else:
        paths = []
        for pattern in expand_braces(str(spec)):
            found = [Path(f) for f in sorted(glob.glob(pattern))] if any(c in pattern for c in "*?[") else [Path(pattern)]
            if not found:
                raise InputError(f"shard {pattern!r} does not exist (no file matches)")
            paths += found
    for path in paths:
        if not path.is_file():
            raise InputError(f"shard {str(path)!r} does not exist")
    return paths


def expand_braces(pattern: str) -> List[str]:
    """``"a{00..02}.tar"`` -> ``["a00.tar", "a01.tar", "a02.tar"]`` (zero padding kept); nests left to right."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


def tar_members(path, keep_partial: bool = False) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a tar shard, read as a stream: consecutive members
    sharing a key (the file name up to its first dot) form one sample (the webdataset convention).

    A truncated or corrupt shard raises its error after the samples read so far; the sample it cut
    off is yielded first only with ``keep_partial``.
    """
    key, members = None, {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                k, _, ext = name.partition(".")
                if k != key and members:
                    yield key, members
                    members = {}
                key = k
                members[ext.lower()] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, ValueError):
        if keep_partial and members:
            yield key, members
        raise
    if members:
        yield key, members


def read_manifest(path) -> dict:
    """The manifest ``write_shards`` wrote (a ``.json``); ``InputError`` if it is not one."""
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


class TarShards(IterableDataset):
    """Iterate ``Sample``s from tar shards; with DataLoader workers, each worker reads its own shards.

    ``skipped`` counts samples that could not be decoded (no image, a corrupt image, mask or
    JSON) and ``broken_shards`` the shards that ended early (truncated or corrupt tar); both are
    counted in the process that reads (each DataLoader worker has its own counts). ``errors``
    keeps the first messages. ``shuffle=True`` shuffles the shard order by ``(seed, epoch)``;
    call ``set_epoch`` before each epoch (as with ``DistributedSampler``: DataLoader workers
    iterate copies, so the dataset cannot count epochs itself).
    """

    def __init__(self, source, shuffle: bool = False, seed: int = 0):
        self.paths = shard_paths(source)
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.skipped, self.broken_shards, self.errors = 0, 0, []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[Sample]:
        paths = list(self.paths)
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(paths)
        info = get_worker_info()
        if info is not None:
            paths = paths[info.id::info.num_workers]
        for path in paths:
            yield from self._read(path)

    def _read(self, path: Path) -> Iterator[Sample]:
        try:
            for key, members in tar_members(path):
                yield from self._decode(path, key, members)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            self.broken_shards += 1
            self._note(f"{path.name}: shard ends early ({type(e).__name__}: {e})")

    def _decode(self, path: Path, key: str, members: dict) -> Iterator[Sample]:
        try:
            yield decode_sample(key, members)
        except (ValueError, OSError, SyntaxError) as e:
            self.skipped += 1
            self._note(f"{path.name}:{key}: {e}")

    def _note(self, message: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(message)


def decode_sample(key: str, members: dict) -> Sample:
    """The members of one key (extension -> bytes) -> ``Sample``; ``ValueError`` if they do not make one."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        raise ValueError(f"no image member (one of {', '.join(IMAGE_EXTENSIONS)}) among {sorted(members)}")
    image = _open(members[ext], "image")
    meta = json.loads(members["json"].decode("utf-8")) if "json" in members else {}
    if not isinstance(meta, dict):
        raise ValueError("the .json member is not an object")
    captions = meta.pop("captions", None)
    if captions is None:
        captions = [members["txt"].decode("utf-8")] if "txt" in members else []
    mask = None
    if "mask.png" in members:
        m = _open(members["mask.png"], "mask", convert=False)
        if m.mode not in ("L", "P"):
            raise ValueError(f"the mask must be an 8-bit PNG (mode L or P); got mode {m.mode}")
        mask = np.array(m, dtype=np.uint8)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    meta.setdefault("key", key)
    return Sample(image, list(captions), mask, meta)


def _open(data: bytes, what: str, convert: bool = True) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return to_rgb(im) if convert else im
    except Exception as e:  # PIL raises many types on bad data
        raise ValueError(f"cannot decode the {what}: {type(e).__name__}: {e}") from e

