"""CSV / TSV tables of images (``Table``): the one reader, with one rule for which column is which.

A table has a header row, then one sample per row:

- the image column: the one named by the caller, else the one column named ``image``,
  ``filepath``, ``path`` or ``file``; relative paths are relative to the table's folder, URLs
  (``scheme://...``) are kept as written;
- the caption column: the one named by the caller, else the one named ``caption``, ``title``
  or ``text``, if any (each non-empty line of a cell is a caption: ``record.caption_list``);
- optional ``label`` (a class name) and ``mask`` (the path of an 8-bit label PNG) columns.

A named column that is missing, no candidate column, or two candidates (``image`` and
``path``, ``caption`` and ``title``) raise ``ColumnError`` (an ``InputError``) naming the
columns the table has.
Column names and cells are read with surrounding spaces stripped. The separator is the one
given (open_clip's ``--csv-separator``), else sniffed: a tab for ``.tsv`` / ``.tab`` files and
for any table whose header line has more tabs than commas (open_clip's ``.csv`` files are
tab-separated), else a comma.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import InputError
from .record import Sample, caption_list

IMAGE_COLUMNS = ("image", "filepath", "path", "file")
CAPTION_COLUMNS = ("caption", "title", "text")


def parse_separator(text: str) -> str:
    """A separator as typed on a command line -> the character: ``\\t`` and ``tab`` are a tab."""
    separator = {"\\t": "\t", "tab": "\t"}.get(text, text)
    if len(separator) != 1:
        raise InputError(f"a table separator must be one character (e.g. ',' or '\\t'); got {text!r}")
    return separator


class ColumnError(InputError):
    """A table lacks a column asked for, or has none or several that could play a role."""


class Table:
    """A CSV / TSV file's rows as ``Sample``s, in file order: ``len(table)``, ``table[i]``.

    ``Sample.image`` is the image's path (not decoded), ``mask`` the mask's path or ``None``;
    ``meta`` holds ``"key"`` (the row index), ``"line"`` (its line in the file) and, with a
    ``label`` column, ``"label_name"``. Only the cells are kept (samples are built on access),
    so a table of millions of rows costs little more memory than its text.
    """

    def __init__(self, path, image_column: Optional[str] = None, caption_column: Optional[str] = None,
                 separator: Optional[str] = None):
        self.path = Path(path)
        if separator is not None and len(separator) != 1:
            raise InputError(f"a table separator must be one character (e.g. ',' or a tab); got {separator!r}")
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                header = f.readline()
                f.seek(0)
                reader = csv.reader(f, delimiter=separator or self._sniff(header), skipinitialspace=True)
                self.columns = [c.strip() for c in next(reader, [])]
                roles = self._roles(image_column, caption_column)
                cells = {role: [] for role in roles}
                self._lines = []
                for row in reader:
                    if any(v.strip() for v in row):
                        self._lines.append(reader.line_num)
                        for role, k in roles.items():
                            cells[role].append(row[k].strip() if k < len(row) else "")
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise InputError(f"cannot read {str(self.path)!r}: {e}") from e
        if not self._lines:
            raise InputError(f"{str(self.path)!r} has no rows")
        self._images = cells["image"]
        self._captions, self._labels, self._masks = (cells.get(r) for r in ("caption", "label", "mask"))

    def _sniff(self, header: str) -> str:
        tabs = self.path.suffix.lower() in (".tsv", ".tab") or header.count("\t") > header.count(",")
        return "\t" if tabs else ","

    def _roles(self, image_column: Optional[str], caption_column: Optional[str]) -> Dict[str, int]:
        """{"image", and whichever of "caption", "label", "mask" the table has: the column's index}."""
        columns = self.columns
        named = [c for c in (image_column, caption_column) if c is not None]
        if any(c not in columns for c in named):
            plural = "s" if len(named) > 1 else ""
            raise ColumnError(f"{self.path} has columns {columns}; expected column{plural} "
                             f"{' and '.join(map(repr, named))}")
        chosen = {"image": image_column or _candidate(self.path, columns, IMAGE_COLUMNS, "image", required=True),
                  "caption": caption_column or _candidate(self.path, columns, CAPTION_COLUMNS, "caption",
                                                          required=False),
                  "label": "label", "mask": "mask"}
        return {role: columns.index(c) for role, c in chosen.items() if c in columns}

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, i: int) -> Sample:
        root = self.path.parent
        meta = {"key": str(i), "line": self._lines[i]}
        if self._labels is not None:
            meta["label_name"] = self._labels[i]
        mask = str(root / self._masks[i]) if self._masks and self._masks[i] else None
        captions = caption_list(self._captions[i]) if self._captions is not None else []
        image = self._images[i]
        return Sample(image if "://" in image else str(root / image), captions, mask, meta)

    def __repr__(self) -> str:
        return f"Table({str(self.path)!r}, {len(self)} rows)"


def _candidate(path: Path, columns: List[str], candidates: Sequence[str], role: str, required: bool) -> Optional[str]:
    """The one column among ``candidates`` the table has (``None`` if none and not ``required``)."""
    found = [c for c in candidates if c in columns]
    if len(found) > 1:
        raise ColumnError(f"{path}: the columns {found} could each be the {role} column; name the one to use "
                         f"({role}_column=...) or drop the others")
    if not found and required:
        raise ColumnError(f"{path} has no {role} column: expected one named {' or '.join(map(repr, candidates))}; "
                         f"its columns are {columns}")
    return found[0] if found else None
