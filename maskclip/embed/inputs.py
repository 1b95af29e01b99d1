"""What ``maskclip embed --data`` reads, dealt into numbered parts: part N becomes output shard N.

- a folder: every image under it (any depth; suffixes of ``maskclip.datasets.folder``), in
  sorted order of the path relative to the folder, which is the row's key;
- a ``.csv`` / ``.tsv`` table (``maskclip.datasets.table``: the image column, and the caption
  column if there is one, found by the table's rule unless named); the key is the row index.
  The table, and any image cell, may be a URL read with ``fsspec``;
- tar shards in the webdataset / img2dataset layout (``maskclip.datasets.spec``: files, globs,
  ``{a..b}`` ranges, a manifest, a folder of ``.tar``), or URLs of shards (``s3://``, ``https://``,
  brace ranges allowed) read with ``fsspec`` when it is installed; the key is the sample's key.

Folders and tables are cut into parts of ``shard_size`` rows. A tar shard's length is unknown
until it is read, so each input shard is one part. The plan depends only on the input and
``shard_size``, so every process, and every rerun, deals the same parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional

from ..datasets import Table, parse_spec
from ..datasets.folder import IMAGE_SUFFIXES
from ..datasets.spec import TABLE_SUFFIXES, TAR_SUFFIXES, expand_braces
from ..datasets.table import CAPTION_COLUMNS
from ..errors import InputError


class Item(NamedTuple):
    """One input of a folder or a table: the image's path, its caption (``None``: the source has none), its key."""

    image: str
    caption: Optional[str]
    key: str


@dataclass(frozen=True)
class Part:
    """Output shard ``index``: rows ``[start, stop)`` of a folder or table, or the samples of tar ``shard``."""

    index: int
    start: int = 0
    stop: int = 0
    shard: str = ""

    @property
    def rows(self) -> Optional[int]:
        """How many inputs the part holds (``None`` for a tar shard: unknown before it is read)."""
        return None if self.shard else self.stop - self.start


class Collection:
    """A collection's parts, and its rows (``item(i)``) when it is a folder or a table.

    ``has_captions``: whether the source has captions to embed (a table's caption column, tar shards).
    """

    def __init__(self, name: str, parts: List[Part], has_captions: bool, rows=None):
        self.name, self.parts, self.has_captions, self._rows = name, parts, has_captions, rows

    def item(self, i: int) -> Item:
        return self._rows(i)

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, {len(self.parts)} parts)"


def open_collection(spec: str, shard_size: int = 10000, image_column: Optional[str] = None,
                    caption_column: Optional[str] = None, separator: Optional[str] = None) -> Collection:
    """A ``--data`` spec -> its ``Collection``; ``InputError`` if it names nothing to embed."""
    if not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive number of rows; got {shard_size!r}")
    if "://" in str(spec) and not str(spec).lower().endswith(TABLE_SUFFIXES):
        return _remote_shards(str(spec))
    local = _local_copy(str(spec)) if "://" in str(spec) else spec
    parsed = parse_spec(local)
    if parsed.kind == "synthetic":
        raise InputError(f"embed reads image files; {spec!r} is the generated benchmark (write it to shards first: "
                         "maskclip data synth)")
    if parsed.kind == "shards":
        parts = [Part(i, shard=str(p)) for i, p in enumerate(parsed.paths)]
        return Collection(parsed.name, parts, True)
    if parsed.kind == "table":
        rows = _TableRows(Table(parsed.paths[0], image_column, caption_column, separator), caption_column)
        return Collection(str(spec), _ranges(len(rows.table), shard_size), rows.captions, rows)
    rows = _FolderRows(parsed.paths[0])
    return Collection(parsed.name, _ranges(len(rows.files), shard_size), False, rows)


class _TableRows:
    """``rows(i) -> Item`` of a table (a class, not a closure, so DataLoader workers can be spawned)."""

    def __init__(self, table: Table, caption_column: Optional[str]):
        self.table = table
        self.captions = caption_column is not None or any(c in table.columns for c in CAPTION_COLUMNS)

    def __call__(self, i: int) -> Item:
        s = self.table[i]
        return Item(s.image, "\n".join(s.captions) if self.captions else None, s.meta["key"])


class _FolderRows:
    """``rows(i) -> Item`` of the images under a folder, keyed by their path relative to it."""

    def __init__(self, root: Path):
        self.root, self.files = root, _image_files(root)

    def __call__(self, i: int) -> Item:
        return Item(str(self.files[i]), None, self.files[i].relative_to(self.root).as_posix())


def _ranges(n: int, shard_size: int) -> List[Part]:
    return [Part(k, start, min(start + shard_size, n)) for k, start in enumerate(range(0, n, shard_size))]


def _image_files(root: Path) -> List[Path]:
    files = sorted((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under the folder {str(root)!r}")
    return files


def _remote_shards(spec: str) -> Collection:
    """Tar shards named by URL (``fsspec``), brace ranges expanded; not checked before they are read."""
    _fsspec(spec)
    urls = expand_braces(spec)
    if not all(u.lower().endswith(TAR_SUFFIXES) for u in urls):
        raise InputError(f"a URL given to embed must name tar shards (.tar, .tgz, .tar.gz); got {spec!r}")
    return Collection(spec, [Part(i, shard=u) for i, u in enumerate(urls)], True)


def _fsspec(spec: str):
    try:
        import fsspec
    except ImportError:
        raise InputError(f"reading {spec!r} needs fsspec (pip install fsspec, and s3fs / gcsfs for those "
                         "stores)") from None
    return fsspec


def _local_copy(url: str) -> Path:
    """A table named by URL, copied to a temp file (the rows' relative paths then resolve against the copy's
    folder, so such a table should hold URLs or absolute paths)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="maskclip-table-"))
    target = folder / url.rstrip("/").rsplit("/", 1)[-1]
    with _fsspec(url).open(url, "rb") as src:
        target.write_bytes(src.read())
    return target


def read_bytes(url: str) -> bytes:
    """The bytes of a file named by URL (an image cell of a table), through fsspec."""
    with _fsspec(url).open(url, "rb") as f:
        return f.read()


def open_shard(shard: str):
    """A tar shard to read as a stream: its path, or for a URL a file object ``fsspec`` opened."""
    if "://" not in shard:
        return shard
    return _fsspec(shard).open(shard, "rb").open()


def width(parts: int) -> int:
    """Digits of the part numbers in file names (as clip-retrieval pads them): 10 parts -> 2."""
    return len(str(max(parts, 1)))
