"""Reading tar shards in the webdataset / img2dataset layout, with the standard library.

A shard is a plain tar (or a compressed one) whose members are grouped by key (the file name
up to its first dot), consecutive members sharing a key forming one sample:

- ``{key}.png`` / ``.jpg`` / ``.jpeg`` / ``.webp``: the image;
- ``{key}.txt``: the caption (img2dataset), each non-empty line a caption;
- ``{key}.json``: the sample's metadata; its ``"captions"`` (a list) or ``"caption"``, when
  present and not empty, are the captions instead of the ``.txt``;
- ``{key}.mask.png``: the label mask (8-bit, one class index per pixel, the image's size).

``tar_members`` reads a shard's members as a stream; ``decode_sample`` turns one key's members
into a ``Sample`` (the image decoded as inference decodes files: ``maskclip.images``), and
``TarShards`` iterates samples over shards. Training (``maskclip.train.data``) and evaluation
(``maskclip.eval.datasets``) read shards with these.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .record import Sample, caption_list, read_image, read_mask
from .spec import shard_paths

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def tar_members(path, keep_partial: bool = False) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """``(key, {extension: bytes})`` per sample of a tar shard, read as a stream: consecutive members
    sharing a key (the file name up to its first dot) form one sample (the webdataset convention).

    ``path``: a file's path, or a binary file object read from its start (e.g. one ``fsspec`` opened).
    A truncated or corrupt shard raises its error after the samples read so far; the sample it cut
    off is yielded first only with ``keep_partial``.
    """
    key, members = None, {}
    try:
        with (tarfile.open(fileobj=path, mode="r|*") if hasattr(path, "read") else tarfile.open(path, "r|*")) as tar:
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


def decode_sample(key: str, members: Dict[str, bytes]) -> Sample:
    """The members of one key (extension -> bytes) -> ``Sample`` (image RGB, mask ``uint8 [H, W]`` or ``None``).

    ``ValueError`` if they do not make one: no image, an undecodable image or mask, a ``.json``
    that is not an object, captions that are not strings, a mask of another size than the image.
    """
    ext = image_member(members)
    image = read_image(members[ext], f"{key}.{ext}")
    captions, meta = sample_captions(key, members)
    mask = None
    if "mask.png" in members:
        mask = read_mask(members["mask.png"], f"{key}.mask.png")
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {image.width}x{image.height}")
    meta.setdefault("key", key)
    return Sample(image, captions, mask, meta)


def image_member(members: Dict[str, bytes]) -> str:
    """The extension of a sample's image member (the first of ``IMAGE_EXTENSIONS`` present); ``ValueError`` if none."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if ext is None:
        raise ValueError(f"no image member (one of {', '.join(IMAGE_EXTENSIONS)}) among {sorted(members)}")
    return ext


def sample_captions(key: str, members: Dict[str, bytes]) -> Tuple[list, dict]:
    """(captions, the ``.json`` object without its ``"captions"``) of one sample's members.

    The ``.json``'s ``"captions"`` or ``"caption"``, when present and not empty, else the ``.txt``;
    ``ValueError`` for a ``.json`` that is not an object or captions that are not strings.
    """
    meta = json.loads(members["json"]) if "json" in members else {}
    if not isinstance(meta, dict):
        raise ValueError("the .json member is not an object")
    found = meta.pop("captions", None) or meta.get("caption") or members.get("txt", b"").decode("utf-8", "replace")
    return caption_list(found, f"the captions of {key}"), meta


class TarShards(IterableDataset):
    """Iterate ``Sample``s from tar shards; with DataLoader workers, each worker reads its own shards.

    ``source``: a shard spec or a list of them (``maskclip.datasets.spec``: ``.tar`` files,
    globs, brace ranges, a manifest ``.json``, a folder). ``skipped`` counts samples that could
    not be decoded (``decode_sample``) and ``broken_shards`` the shards that ended early
    (truncated or corrupt tar); both are counted in the process that reads (each DataLoader
    worker has its own counts). ``errors`` keeps the first messages. ``shuffle=True`` shuffles
    the shard order by ``(seed, epoch)``; call ``set_epoch`` before each epoch (as with
    ``DistributedSampler``: DataLoader workers iterate copies, so the dataset cannot count epochs itself).
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
