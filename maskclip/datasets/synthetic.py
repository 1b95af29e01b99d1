"""The synthetic shapes benchmark: 1-3 shapes on textured backgrounds, captions and label masks.

``SyntheticShapes(split, size, n, seed)`` is a map-style dataset generating each sample on the
fly (a ``maskclip.datasets.Sample``); ``write_shards`` writes the same samples to tar shards, and
``synthetic:SPLIT[,...]`` names it as a data spec (``maskclip.datasets.spec``).

Conventions:

- **classes**: ``SHAPES`` (8 shape names). Sample ``i`` is labelled by its *main object*, the
  one with the largest visible area: its shape (``label="shape"``, 8 classes) or its colour and
  shape, "red circle" (``label="colour_shape"``, 80 classes, colour-major order).
- **mask**: ``uint8 [H, W]``, 0 = background, ``1 + shape index`` where a shape is visible
  (``SEGMENTATION_CLASSES = ("background", *SHAPES)``). Each pixel takes whatever covers most
  of it. ``record.IGNORE_INDEX`` (255) is never generated; evaluation skips such pixels in masks from elsewhere.
- **captions**: several per image (default 5), each a different phrasing, all true.
- **versions**: ``version`` picks a generator setting of ``synthetic.json`` (``settings``):
  ``colour_free`` (fraction of noun phrases without a colour word), ``size_scale`` (object
  radii) and ``object_counts`` (per split, probabilities of 1-2-3 objects). Version 1 is the
  original benchmark, byte for byte; version 2 the shape study's (colour-free half the time,
  1.6x objects, 1-2 objects in training, 1-3 with occlusion in val and test). Keyword arguments
  replace single values (``objects=(1, 2)``: uniform over 1-2 objects, in every split).
- **determinism**: sample ``i`` of a split comes from its own generator seeded with
  ``(seed, split, i)``, so it is the same whatever the order, the worker count or ``n``; the
  scene (and so captions and label) is also the same at every image size of the same aspect.
  Splits use different seeds, so their images differ. Bytes are identical for the same
  NumPy and Pillow versions.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

from ..errors import InputError, InputTypeError
from .captions import captions as make_captions
from .record import Sample
from .render import render_scene
from .scene import Scene, sample_scene, vocabulary

SPLITS = ("train", "val", "test")
LABELS = ("shape", "colour_shape")
SHAPES: Tuple[str, ...] = tuple(vocabulary()["shapes"])
COLOURS: Tuple[str, ...] = tuple(vocabulary()["colours"])
SEGMENTATION_CLASSES: Tuple[str, ...] = ("background",) + SHAPES
BACKGROUND = 0
MIN_SIZE = 16


def classnames(label: str = "shape") -> List[str]:
    """Class names of the classification label: ``"shape"`` -> 8 names, ``"colour_shape"`` -> 80 ("red circle")."""
    _check_label(label)
    if label == "shape":
        return list(SHAPES)
    return [f"{c} {s}" for c in COLOURS for s in SHAPES]


def templates() -> List[str]:
    """Zero-shot prompt templates for the benchmark's class names (worded like its captions)."""
    return list(vocabulary()["templates"])


class SyntheticShapes(Dataset):
    """Map-style dataset: ``ds[i] -> Sample(image, captions, mask, meta)``, generated on the fly.

    ``size``: an int (square) or ``(height, width)``, at least 16 px. ``n``: number of samples
    (default 10000 / 1000 / 1000 for train / val / test). ``captions``: captions per image.
    """

    def __init__(self, split: str = "train", size: Union[int, Sequence[int]] = 64, n: Optional[int] = None,
                 seed: int = 0, captions: int = 5, label: str = "shape", version: int = 1,
                 colour_free: Optional[float] = None, size_scale: Optional[float] = None,
                 objects: Optional[Sequence[int]] = None):
        if split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}; got {split!r}")
        _check_label(label)
        self.split, self.label = split, label
        self.version = version
        self.setting = setting(version, split, colour_free, size_scale, objects)
        self.height, self.width = _check_size(size)
        self.n = vocabulary()["default_n"][split] if n is None else _check_int("n", n, 0)
        self.seed = _check_int("seed", seed, 0)
        self.captions_per_image = _check_int("captions", captions, 1)
        self.classnames = classnames(label)
        self.segmentation_classes = list(SEGMENTATION_CLASSES)
        self.templates = templates()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return (f"SyntheticShapes(split={self.split!r}, size=({self.height}, {self.width}), n={self.n}, "
                f"seed={self.seed}, captions={self.captions_per_image}, label={self.label!r}, "
                f"version={self.version}, setting={self.setting})")

    def key(self, index: int) -> str:
        """A stable sample name without dots (webdataset keys end at the first dot)."""
        version = f"v{self.version}-" if self.version != 1 else ""
        return f"{self.split}-{version}{self.seed}-{index:08d}"

    def _rng(self, index: int) -> np.random.Generator:
        seq = np.random.SeedSequence(self.seed, spawn_key=(SPLITS.index(self.split), index))
        return np.random.default_rng(seq)

    def scene(self, index: int) -> Scene:
        """The scene of sample ``index`` (what ``__getitem__`` draws)."""
        return self._scene(self._rng(self._check_index(index)))

    def _scene(self, rng: np.random.Generator) -> Scene:
        return sample_scene(rng, self.width / self.height, self.setting["object_counts"], self.setting["size_scale"])

    def __getitem__(self, index: int) -> Sample:
        rng = self._rng(self._check_index(index))
        scene = self._scene(rng)
        texts = make_captions(scene, rng, self.captions_per_image, self.setting["colour_free"])
        image, objmap = render_scene(scene, self.height, self.width)
        lut = np.array([BACKGROUND] + [1 + SHAPES.index(o.shape) for o in scene.objects], dtype=np.uint8)
        return Sample(image, texts, lut[objmap], self._meta(index, scene, objmap))

    def _meta(self, index: int, scene: Scene, objmap: np.ndarray) -> dict:
        scale = min(self.height, self.width)
        main = scene.objects[int(np.argmax(scene.visible))]
        label = SHAPES.index(main.shape)
        if self.label == "colour_shape":
            label += COLOURS.index(main.colour) * len(SHAPES)
        objects = [{"shape": o.shape, "colour": o.colour, "size": o.size,
                    "centre": [round(o.centre[0] * scale, 3), round(o.centre[1] * scale, 3)],
                    "radius": round(o.radius * scale, 3), "rotation": round(o.rotation, 3),
                    "outline": o.outline, "visible_px": int((objmap == k + 1).sum())}
                   for k, o in enumerate(scene.objects)]
        meta = {"key": self.key(index), "split": self.split, "index": index, "seed": self.seed,
                "size": [self.height, self.width], "background": scene.background, "objects": objects,
                "label": label, "label_name": self.classnames[label], "label_kind": self.label}
        if self.version != 1:
            meta.update(version=self.version, setting=self.setting)
        return meta

    def _check_index(self, index) -> int:
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise InputTypeError(f"index must be an integer; got {type(index).__name__}")
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} samples")
        return int(index) % self.n


def setting(version: int, split: str, colour_free: Optional[float] = None, size_scale: Optional[float] = None,
            objects: Optional[Sequence[int]] = None) -> dict:
    """The generator setting of ``version`` for ``split`` -> ``{"colour_free", "size_scale", "object_counts"}``
    (``object_counts``: probabilities of 1, 2, 3 objects), with the values given replacing the version's."""
    settings = vocabulary()["settings"]
    if isinstance(version, bool) or str(version) not in settings or not isinstance(version, numbers.Integral):
        raise InputError(f"version must be one of {[int(k) for k in settings]}; got {version!r}")
    base = settings[str(version)]
    out = {"colour_free": base["colour_free"], "size_scale": base["size_scale"],
           "object_counts": list(base["object_counts"][split])}
    if colour_free is not None:
        if not isinstance(colour_free, numbers.Real) or not 0 <= colour_free <= 1:
            raise InputError(f"colour_free must be a number in [0, 1]; got {colour_free!r}")
        out["colour_free"] = float(colour_free)
    if size_scale is not None:
        if not isinstance(size_scale, numbers.Real) or not 0.25 <= size_scale <= 2.5:
            raise InputError(f"size_scale must be a number in [0.25, 2.5]; got {size_scale!r}")
        out["size_scale"] = float(size_scale)
    if objects is not None:
        lo, hi = _check_objects(objects)
        out["object_counts"] = [1 / (hi - lo + 1) if lo <= k <= hi else 0.0 for k in (1, 2, 3)]
    return out


def _check_objects(objects) -> Tuple[int, int]:
    pair = tuple(objects) if isinstance(objects, (tuple, list)) else ()
    if (len(pair) != 2 or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in pair)
            or not 1 <= pair[0] <= pair[1] <= 3):
        raise InputError(f"objects must be a (fewest, most) pair within 1-3, e.g. (1, 2); got {objects!r}")
    return int(pair[0]), int(pair[1])


def _check_label(label) -> None:
    if label not in LABELS:
        raise InputError(f"label must be one of {list(LABELS)}; got {label!r}")


def _check_int(name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise InputError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _check_size(size) -> Tuple[int, int]:
    """An int or ``(height, width)`` of at least ``MIN_SIZE`` px -> ``(height, width)``."""
    pair = (size, size) if isinstance(size, numbers.Integral) and not isinstance(size, bool) else size
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= MIN_SIZE for s in pair)):
        raise InputError(f"size must be an integer or a (height, width) pair of integers >= {MIN_SIZE}; got {size!r}")
    return int(pair[0]), int(pair[1])
