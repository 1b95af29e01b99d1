"""Evaluation data behind one interface: image folders, CSV files, tar shards, the synthetic benchmark.

``open_dataset(spec)`` reads what ``maskclip.datasets`` reads (``maskclip.datasets.spec``):

- ``synthetic:SPLIT[,n=N][,size=S|HxW][,seed=K][,label=shape|colour_shape]``: the generated
  benchmark (``maskclip.datasets.synthetic``), with labels, captions and masks;
- a folder of class subfolders (ImageNet layout ``root/<class>/<image>``): labels; class names
  are the folder names with ``_`` read as a space;
- tar shards: a folder of ``.tar`` files, a shard manifest ``.json``, ``.tar`` files, globs or
  brace ranges (``maskclip.datasets.tar``); labels from the samples' ``label_name``;
- a ``.csv`` / ``.tsv`` file (``maskclip.datasets.table``): an image column (``image``,
  ``filepath``, ``path`` or ``file``; relative paths are relative to the CSV's folder) and any of
  ``label`` (class name), ``caption`` / ``title`` / ``text`` (rows repeating an image add
  captions) and ``mask`` (path of an 8-bit label PNG). Class names come from ``classnames``
  or the sorted labels.

Every item is a ``Record``; a task asks the set for what it needs and gets a clear error if the
source lacks it (labels, captions or masks).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..datasets import DataSpec, Table, TarShards, open_synthetic, parse_spec, read_folder, read_mask
from ..errors import InputError

DEFAULT_SYNTHETIC_SIZE = 64


@dataclass(frozen=True)
class Record:
    """One evaluation item: an image (path or PIL), and whichever of label, captions, mask the source has.

    ``label`` is an index into the set's ``classnames``; the model decodes an image path itself.
    """

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
                 default_size: int = DEFAULT_SYNTHETIC_SIZE, image_column: Optional[str] = None,
                 caption_column: Optional[str] = None, separator: Optional[str] = None) -> EvalSet:
    """A data spec (see the module doc) -> ``EvalSet``; an ``EvalSet`` is returned as is.

    ``classnames`` / ``segmentation_classes`` replace the source's vocabularies (same order as
    the label indices). ``default_size``: image size of ``synthetic:`` sets without ``size=``.
    ``image_column`` / ``caption_column``: a CSV's columns, when not found by their names;
    ``separator``: its separator, when not sniffed (open_clip's ``--csv-separator``).
    """
    if isinstance(spec, EvalSet):
        return _override(spec, classnames, segmentation_classes)
    parsed = parse_spec(spec)
    if parsed.kind == "synthetic":
        ds = _synthetic(parsed, default_size)
    elif parsed.kind == "table":
        ds = _table(parsed, classnames, image_column, caption_column, separator)
    elif parsed.kind == "shards":
        ds = _shards(parsed)
    else:
        ds = _folder(parsed)
    return _override(ds, classnames, segmentation_classes)


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


# --- the sources, as maskclip.datasets reads them -------------------------------------------------


def _synthetic(spec: DataSpec, default_size: int) -> EvalSet:
    gen = open_synthetic(spec, default_size)

    def get(i: int) -> Record:
        s = gen[i]
        return Record(s.image, s.meta["label"], tuple(s.captions), s.mask)

    return EvalSet(spec.name, len(gen), get, gen.classnames, gen.segmentation_classes, gen.templates)


def _folder(spec: DataSpec) -> EvalSet:
    samples, classnames = read_folder(spec.paths[0])
    records = [Record(s.image, s.meta["label"]) for s in samples]
    return EvalSet(spec.name, len(records), records.__getitem__, classnames)


def _table(spec: DataSpec, classnames, image_column, caption_column, separator) -> EvalSet:
    """One record per image: rows repeating an image add their captions (and must agree on its label)."""
    table = Table(spec.paths[0], image_column, caption_column, separator)
    items = {}
    for s in (table[i] for i in range(len(table))):
        label = s.meta.get("label_name")
        item = items.setdefault(s.image, {"label": label, "captions": [], "mask": s.mask})
        if item["label"] != label:
            raise InputError(f"{table.path.name} line {s.meta['line']}: image {s.image!r} has two labels")
        item["captions"] += s.captions
    labelled = "label" in table.columns
    if labelled:
        labels = [item["label"] for item in items.values()]
        classnames = list(classnames) if classnames is not None else sorted(set(labels))
        index = {name: i for i, name in enumerate(classnames)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise InputError(f"{table.path.name}: labels {unknown[:5]} are not among the {len(classnames)} class names")
    records = [(image, index[item["label"]] if labelled else None, tuple(item["captions"]), item["mask"])
               for image, item in items.items()]

    def get(i: int) -> Record:
        image, label, captions, mask = records[i]
        return Record(image, label, captions, read_mask(mask) if mask else None)

    return EvalSet(spec.name, len(records), get, classnames if labelled else None)


def _shards(spec: DataSpec) -> EvalSet:
    reader = TarShards(list(spec.paths))
    samples = list(reader)
    classnames = spec.manifest.get("classnames")
    if classnames is None and samples and all("label_name" in s.meta for s in samples):
        classnames = sorted({s.meta["label_name"] for s in samples})
    index = {name: i for i, name in enumerate(classnames or [])}
    records = [Record(s.image, index.get(s.meta.get("label_name")) if classnames else None, tuple(s.captions), s.mask)
               for s in samples]
    return EvalSet(spec.name, len(records), records.__getitem__, classnames, spec.manifest.get("segmentation_classes"),
                   spec.manifest.get("templates"), skipped=reader.skipped + reader.broken_shards)
