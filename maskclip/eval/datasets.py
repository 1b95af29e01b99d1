"""Evaluation data behind one interface: image folders, CSV files, tar shards, the synthetic benchmark.

``open_dataset(spec)`` reads:

- ``synthetic:SPLIT[,n=N][,size=S|HxW][,seed=K][,label=shape|colour_shape]``: the generated
  benchmark (``maskclip.datasets.synthetic``), with labels, captions and masks;
- a folder of class subfolders (ImageNet layout ``root/<class>/<image>``): labels; class names
  are the folder names with ``_`` read as a space;
- a folder of ``.tar`` shards, a shard manifest ``.json`` or one ``.tar`` (``maskclip.datasets.shards``);
- a ``.csv`` / ``.tsv`` file with a header row: an image column (``image``, ``filepath``, ``path``
  or ``file``; relative paths are relative to the CSV's folder) and any of ``label`` (class
  name), ``caption`` / ``title`` / ``text`` (rows repeating an image add captions) and ``mask``
  (path of an 8-bit label PNG). Class names come from ``classnames`` or the sorted labels.

Every item is a ``Record``; a task asks the set for what it needs and gets a clear error if the
source lacks it (labels, captions or masks).
"""
from __future__ import annotations

import copy
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "filepath", "path", "file")
CAPTION_COLUMNS = ("caption", "title", "text")
SYNTHETIC = "synthetic:"
DEFAULT_SYNTHETIC_SIZE = 64


@dataclass(frozen=True)
class Record:
    """One evaluation item: an image (path or PIL), and whichever of label, captions, mask the source has."""

    image: Union[str, Image.Image]
    label: Optional[int] = None
    captions: Tuple[str, ...] = ()
    mask: Optional[np.ndarray] = None  # uint8 [H, W] class indices


class EvalSet:
    """A sized, indexable set of ``Record``s with its vocabularies.

    ``classnames``: classification classes (label index order). ``segmentation_classes``: mask
    values' names; a class named ``"background"`` is the background. ``templates``: prompt
    templates suggested by the source (``None``: class names as written). ``skipped``: items the
    source could not decode.
    """

    def __init__(self, name: str, length: int, get: Callable[[int], Record], classnames=None,
                 segmentation_classes=None, templates=None, skipped: int = 0):
        self.name, self._length, self._get = name, length, get
        self.classnames = list(classnames) if classnames is not None else None
        self.segmentation_classes = list(segmentation_classes) if segmentation_classes is not None else None
        self.templates = list(templates) if templates is not None else None
        self.skipped = skipped

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Record:
        if not 0 <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} items")
        return self._get(index)

    def __repr__(self) -> str:
        return f"EvalSet({self.name!r}, {self._length} items)"

    @property
    def background_index(self) -> Optional[int]:
        classes = self.segmentation_classes or []
        return classes.index("background") if "background" in classes else None

    def require(self, what: str, task: str) -> None:
        """Raise ``InputError`` unless the set has ``what`` (labels, captions or masks) for ``task``."""
        if not len(self):
            raise InputError(f"{self.name}: no items to evaluate")
        first = self[0]
        missing = {"labels": self.classnames is None or first.label is None,
                   "captions": not first.captions,
                   "masks": first.mask is None or self.segmentation_classes is None}[what]
        if missing:
            hint = {"labels": "a folder of class subfolders, a CSV with a label column, or synthetic:SPLIT",
                    "captions": "a CSV with a caption column, tar shards with .txt/.json, or synthetic:SPLIT",
                    "masks": "a CSV with a mask column and class names, shards with .mask.png, "
                             "or synthetic:SPLIT"}[what]
            raise InputError(f"{task} needs {what}, and {self.name} has none; use {hint}")


def open_dataset(spec, classnames: Optional[Sequence[str]] = None,
                 segmentation_classes: Optional[Sequence[str]] = None,
                 default_size: int = DEFAULT_SYNTHETIC_SIZE) -> EvalSet:
    """A data spec (see the module doc) -> ``EvalSet``; an ``EvalSet`` is returned as is.

    ``classnames`` / ``segmentation_classes`` replace the source's vocabularies (same order as
    the label indices). ``default_size``: image size of ``synthetic:`` sets without ``size=``.
    """
    if isinstance(spec, EvalSet):
        ds = spec
    elif isinstance(spec, str) and spec.startswith(SYNTHETIC):
        ds = _synthetic(spec, default_size)
    else:
        ds = _from_path(spec, classnames)
    return _override(ds, classnames, segmentation_classes)


def _from_path(spec, classnames) -> EvalSet:
    path = Path(spec)
    if not path.exists():
        raise InputError(f"data {str(spec)!r} not found; expected a folder, a .csv/.tsv file, shards (.tar, "
                         f"manifest .json) or synthetic:SPLIT")
    if path.suffix.lower() in (".csv", ".tsv"):
        return _csv(path, classnames)
    if path.suffix.lower() in (".json", ".tar") or (path.is_dir() and any(path.glob("*.tar"))):
        return _shards(path)
    if path.is_dir():
        return _folder(path)
    raise InputError(f"cannot read data {str(spec)!r}: expected a folder, a .csv/.tsv, a .tar or a manifest .json")


def _override(ds: EvalSet, classnames, segmentation_classes) -> EvalSet:
    for name, given, current in (("classnames", classnames, ds.classnames),
                                 ("segmentation classes", segmentation_classes, ds.segmentation_classes)):
        if given is not None and current is not None and len(given) != len(current):
            raise InputError(f"{ds.name} has {len(current)} {name}; {len(given)} were given")
    if classnames is None and segmentation_classes is None:
        return ds
    ds = copy.copy(ds)  # never change a caller's set
    if classnames is not None:
        ds.classnames = list(classnames)
    if segmentation_classes is not None:
        ds.segmentation_classes = list(segmentation_classes)
    return ds


# --- the synthetic benchmark --------------------------------------------------------------------------


def _synthetic(spec: str, default_size: int) -> EvalSet:
    from ..datasets.synthetic import from_spec

    gen = from_spec(spec, default_size)

    def get(i: int) -> Record:
        s = gen[i]
        return Record(s.image, s.meta["label"], tuple(s.captions), s.mask)

    return EvalSet(spec, len(gen), get, gen.classnames, gen.segmentation_classes, gen.templates)


def _folder(root: Path) -> EvalSet:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    records = [Record(str(f), label) for label, d in enumerate(classes)
               for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not records:
        raise InputError(f"{str(root)!r} has no class subfolders with images ({', '.join(IMAGE_SUFFIXES)}); "
                         "expected root/<class name>/<image>")
    return EvalSet(str(root), len(records), records.__getitem__, [d.name.replace("_", " ") for d in classes])


def _csv(path: Path, classnames) -> EvalSet:
    rows, columns = _read_rows(path)
    image_col = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_col is None:
        raise InputError(f"{str(path)!r} needs an image column named one of {list(IMAGE_COLUMNS)}; "
                         f"its columns are {columns}")
    caption_col = next((c for c in CAPTION_COLUMNS if c in columns), None)
    items = {}
    for line, row in rows:
        item = items.setdefault(row[image_col], {"label": row.get("label"), "captions": [], "mask": row.get("mask")})
        if item["label"] != row.get("label"):
            raise InputError(f"{path.name} line {line}: image {row[image_col]!r} has two labels")
        if caption_col and row[caption_col]:
            item["captions"].append(row[caption_col])
    if not items:
        raise InputError(f"{str(path)!r} has no rows")
    labels = [item["label"] for item in items.values()]
    if "label" in columns:
        classnames = list(classnames) if classnames is not None else sorted(set(labels))
        index = {name: i for i, name in enumerate(classnames)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise InputError(f"{path.name}: labels {unknown[:5]} are not among the {len(classnames)} class names")
    records = [(path.parent / image, index[item["label"]] if "label" in columns else None, tuple(item["captions"]),
                path.parent / item["mask"] if item["mask"] else None) for image, item in items.items()]

    def get(i: int) -> Record:
        image, label, captions, mask = records[i]
        return Record(str(image), label, captions, _read_mask(mask) if mask else None)

    return EvalSet(str(path), len(records), get, classnames if "label" in columns else None)


def _read_rows(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {str(path)!r}: {e}") from e
    lines = text.splitlines()
    delimiter = "\t" if path.suffix.lower() == ".tsv" or (lines and "\t" in lines[0]) else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    return [(n, {k: (v or "").strip() for k, v in row.items() if k is not None})
            for n, row in enumerate(reader, start=2)], columns


def _read_mask(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"mask file not found: {str(path)!r}")
    with Image.open(path) as m:
        if m.mode not in ("L", "P"):
            raise InputError(f"mask {str(path)!r} must be an 8-bit label image (mode L or P); got mode {m.mode}")
        return np.array(m, dtype=np.uint8)


# --- shards --------------------------------------------------------------------------------------------


def _shards(path: Path) -> EvalSet:
    from ..datasets.shards import TarShards

    source, manifest = _shard_source(path)
    reader = TarShards(source)
    samples = list(reader)
    classnames = manifest.get("classnames")
    if classnames is None and samples and all("label_name" in s.meta for s in samples):
        classnames = sorted({s.meta["label_name"] for s in samples})
    index = {name: i for i, name in enumerate(classnames or [])}
    records = [Record(s.image, index.get(s.meta.get("label_name")) if classnames else None, tuple(s.captions), s.mask)
               for s in samples]
    return EvalSet(str(path), len(records), records.__getitem__, classnames, manifest.get("segmentation_classes"),
                   manifest.get("templates"), skipped=reader.skipped + reader.broken_shards)


def _shard_source(path: Path):
    """(what to read, its manifest or ``{}``): a manifest, a .tar, or a folder holding at most one shard set."""
    from ..datasets.shards import find_manifests, read_manifest

    if path.suffix.lower() == ".json":
        return path, read_manifest(path)
    if not path.is_dir():
        return path, {}
    manifests = find_manifests(path)
    if len(manifests) > 1:
        raise InputError(f"{str(path)!r} holds several shard sets ({', '.join(p.name for p in manifests)}); "
                         "pass the manifest .json of the one to evaluate")
    return (manifests[0], read_manifest(manifests[0])) if manifests else (path, {})
