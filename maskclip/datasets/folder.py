"""Image folders in the ImageNet layout, ``root/<class>/<image>``: one class per subfolder."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from ..errors import InputError
from .record import Sample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def read_folder(root) -> Tuple[List[Sample], List[str]]:
    """(one ``Sample`` per image, class names) of a folder of class subfolders.

    Classes are the subfolders in sorted order, named as the folder with ``_`` read as a space
    (``red_fox`` -> "red fox"); ``meta["label"]`` is the class index. Images (by suffix: one of
    ``IMAGE_SUFFIXES``) are paths, not decoded; hidden folders are skipped.
    """
    root = Path(root)
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = [d.name.replace("_", " ") for d in classes]
    samples = [Sample(str(f), [], None, {"key": f"{d.name}/{f.name}", "label": label, "label_name": names[label]})
               for label, d in enumerate(classes) for f in sorted(d.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not samples:
        raise InputError(f"{str(root)!r} has no class subfolders with images ({', '.join(IMAGE_SUFFIXES)}); "
                         "expected root/<class name>/<image>")
    return samples, names
