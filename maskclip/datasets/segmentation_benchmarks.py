"""The eight open-vocabulary segmentation benchmarks: their protocol (bundled data) and their folder readers.

``benchmark(name)`` is one entry of ``resources/segmentation_benchmarks.json`` (SCLIP's and
NACLIP's configs, each value with its source) with its class names loaded: ``classes[k]`` lists
class ``k``'s synonyms. ``open_benchmark(name, root, split)`` reads the folder the way
mmsegmentation prepares it (``VOC2012/JPEGImages`` + ``SegmentationClass`` + the split file,
``ADEChallengeData2016/images/validation`` + ``annotations/validation``, ...) into ``Sample``s whose
mask is decoded on access, with 255 = ignore and ``reduce_zero_label`` applied where the
benchmark uses it. A folder that does not match the layout is an ``InputError`` naming what is
missing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from ..resources import read_json, read_text
from .record import IGNORE_INDEX, Sample, read_mask

_SPECS = read_json("segmentation_benchmarks.json")["benchmarks"]
BENCHMARKS: Tuple[str, ...] = tuple(_SPECS)  # the field's order: background sets first


def class_synonyms(text: str) -> List[List[str]]:
    """A classes file (one class a line, synonyms separated by ``", "``) -> ``[[name, ...], ...]``."""
    return [[n.strip() for n in line.split(", ") if n.strip()] for line in text.splitlines() if line.strip()]


def benchmark(name: str, variant: Optional[str] = None) -> dict:
    """The protocol of benchmark ``name`` (a copy), with ``classes`` loaded and ``variant``'s overrides applied.

    ``variant``: a key of the entry's ``variants`` (e.g. ``"naclip"``: NACLIP's configs), or ``None``
    for SCLIP's. The result carries ``name`` and ``variant``.
    """
    if name not in _SPECS:
        raise InputError(f"benchmark must be one of {list(BENCHMARKS)}; got {name!r}")
    spec = copy.deepcopy(_SPECS[name])
    variants = spec.pop("variants")
    if variant is not None:
        if variant not in variants:
            raise InputError(f"benchmark {name!r} has variants {sorted(variants)}; got {variant!r}")
        spec.update({k: v for k, v in variants[variant].items() if k != "source"})
        spec["sources"]["variant"] = variants[variant]["source"]
    spec["classes"] = class_synonyms(read_text(spec["classes_file"]))
    spec.update(name=name, variant=variant)
    return spec


def reduce_zero_label(mask: np.ndarray) -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 -> 255 (ignored), ``v`` -> ``v - 1``, 255 stays 255. ``uint8 [H, W]``."""
    out = mask.astype(np.int16) - 1
    out[(mask == 0) | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return out.astype(np.uint8)


@dataclass(frozen=True)
class BenchmarkFolder:
    """One split of a benchmark on disk: ``len``, indexing -> ``Sample`` (image path, decoded mask ``uint8 [H, W]``)."""

    name: str
    root: Path
    split: str
    pairs: Tuple[Tuple[Path, Path], ...]  # (image, mask) paths
    reduce_zero_label: bool

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        image, mask_path = self.pairs[index]
        mask = read_mask(mask_path)
        if mask.ndim != 2:
            raise InputError(f"mask {str(mask_path)!r} must be a single-channel label image; got shape {list(mask.shape)}")
        if self.reduce_zero_label:
            mask = reduce_zero_label(mask)
        return Sample(str(image), [], mask, {"key": image.name, "mask": str(mask_path)})


def open_benchmark(name: str, root, split: str = "val") -> BenchmarkFolder:
    """Benchmark ``name``'s ``split`` (``"val"`` or ``"train"``) in its usual layout under ``root``.

    ``root`` is the benchmark's own folder (``.../VOC2012``, ``.../ADEChallengeData2016``, ...).
    """
    spec = benchmark(name)
    layout = spec["layout"]
    if split not in layout["splits"]:
        raise InputError(f"benchmark {name!r} has splits {sorted(layout['splits'])}; got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{name}: data folder {str(root)!r} does not exist")
    part = layout["splits"][split]
    images = _folder(root, layout["images"].format(split=part), name)
    masks = _folder(root, layout["masks"].format(split=part), name)
    image_sfx, mask_sfx = layout["image_suffix"], layout["mask_suffix"]
    if layout["split_file"]:
        ids = _split_ids(root / layout["split_file"].format(split=part), name)
    else:
        ids = sorted(str(p.relative_to(images))[:-len(image_sfx)] for p in images.rglob("*" + image_sfx))
        if not ids:
            raise InputError(f"{name}: no '*{image_sfx}' images under {str(images)!r}")
    pairs = []
    for i in ids:
        image, mask = images / (i + image_sfx), masks / (i + mask_sfx)
        for path, what in ((image, "image"), (mask, "mask")):
            if not path.is_file():
                raise InputError(f"{name}: {what} file {str(path)!r} is missing (listed as {i!r})")
        pairs.append((image, mask))
    return BenchmarkFolder(name, root, split, tuple(pairs), spec["reduce_zero_label"])


def find_benchmark_root(name: str, data_root) -> Path:
    """The first of benchmark ``name``'s usual folder names that exists under ``data_root``."""
    data_root = Path(data_root)
    folders: Sequence[str] = benchmark(name)["folders"]
    for folder in folders:
        if (data_root / folder).is_dir():
            return data_root / folder
    raise InputError(f"{name}: none of the usual folders {list(folders)} exists under {str(data_root)!r}")


def benchmark_roots(data_root, names: Sequence[str] = BENCHMARKS) -> Dict[str, Path]:
    """``{name: folder}`` for each of ``names`` under ``data_root`` (``find_benchmark_root``)."""
    return {n: find_benchmark_root(n, data_root) for n in names}


def _folder(root: Path, relative: str, name: str) -> Path:
    path = root / relative
    if not path.is_dir():
        raise InputError(f"{name}: folder {str(path)!r} is missing (expected {relative!r} under {str(root)!r})")
    return path


def _split_ids(path: Path, name: str) -> List[str]:
    if not path.is_file():
        raise InputError(f"{name}: split file {str(path)!r} is missing")
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{name}: split file {str(path)!r} lists no images")
    return ids
