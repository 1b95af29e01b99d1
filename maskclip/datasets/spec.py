"""Data specs: the one parser of what training (``--data``), evaluation (``open_dataset``) and
``TarShards`` are told to read.

A spec is one of:

- ``synthetic:SPLIT[,n=N][,size=S|HxW][,seed=K][,label=shape|colour_shape][,version=V]
  [,colour_free=F][,size_scale=X][,objects=A-B][,cache=DIR]``: the generated benchmark
  (``maskclip.datasets.synthetic``; ``version`` picks a generator setting, ``colour_free``,
  ``size_scale`` and ``objects`` replace single values of it; ``cache``: a folder where
  training keeps the drawn images, ``maskclip.train.data.SyntheticPool``);
- a ``.csv`` / ``.tsv`` / ``.tab`` file: a table of image paths (``maskclip.datasets.table``);
- tar shards (``maskclip.datasets.tar``): a ``.tar`` (``.tgz``, ``.tar.gz``) file, a glob
  (``data/*.tar``), a brace range (``data/{00000..00099}.tar``, zero padding kept), a shard
  manifest ``.json``, or a folder holding ``.tar`` files (its manifest's shards if it holds one
  manifest, else every ``.tar``); a list of such specs reads them all, in order;
- a folder of class subfolders, ``root/<class>/<image>`` (``maskclip.datasets.folder``).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple, Union

from ..errors import InputError, InputTypeError
from .manifest import find_manifests, read_manifest
from .synthetic import SyntheticShapes

SYNTHETIC = "synthetic:"
TABLE_SUFFIXES = (".csv", ".tsv", ".tab")
TAR_SUFFIXES = (".tar", ".tgz", ".tar.gz")
EXPECTED = ("a folder, a .csv/.tsv file, tar shards (.tar files, globs, {a..b} ranges, a manifest .json) "
            "or synthetic:SPLIT")
_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind`` is ``"synthetic"``, ``"table"``, ``"shards"`` or ``"folder"``.

    ``paths``: the table file, the shard files, or the folder (one path but for shards).
    ``manifest``: the shard manifest naming the shards, if one does (else ``{}``).
    ``options``: for ``synthetic``, keyword arguments of ``SyntheticShapes`` (see ``open_synthetic``).
    """

    kind: str
    name: str
    paths: Tuple[Path, ...] = ()
    manifest: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def parse_spec(spec) -> DataSpec:
    """A spec (str or ``os.PathLike``), or a list of tar-shard specs -> ``DataSpec``; ``InputError`` if it
    names nothing readable (the message says what was given and what was expected)."""
    if isinstance(spec, (list, tuple)):
        return _several(spec)
    if isinstance(spec, str) and spec.startswith(SYNTHETIC):
        return DataSpec("synthetic", spec, options=synthetic_options(spec))
    if not isinstance(spec, (str, os.PathLike)):
        raise InputTypeError(f"a data spec must be a string or a path; got {type(spec).__name__}")
    name = os.fspath(spec)
    path = Path(name)
    if not path.exists() and not _is_pattern(name):
        raise InputError(f"data not found: {name!r} does not exist; expected {EXPECTED}")
    if path.is_dir() and not (find_manifests(path) or any(path.glob("*.tar"))):
        return DataSpec("folder", name, (path,))
    if path.is_file() and name.lower().endswith(TABLE_SUFFIXES):
        return DataSpec("table", name, (path,))
    if path.is_file() and not name.lower().endswith(TAR_SUFFIXES + (".json",)):
        raise InputError(f"cannot read data {name!r}: expected {EXPECTED}")
    return DataSpec("shards", name, *_shards(name))


def _several(specs) -> DataSpec:
    if not specs:
        raise InputError(f"no data given; expected {EXPECTED}")
    if len(specs) == 1:
        return parse_spec(specs[0])
    parts = [parse_spec(s) for s in specs]
    for part in parts:
        if part.kind != "shards":
            raise InputError(f"several data specs are read together only if all are tar shards; {part.name!r} is "
                             f"a {part.kind} (pass it alone)")
    return DataSpec("shards", ", ".join(p.name for p in parts), tuple(p for part in parts for p in part.paths))


def shard_paths(source) -> List[Path]:
    """The tar files of one shard spec or a list of them (any file named directly is taken as a shard)."""
    specs = list(source) if isinstance(source, (list, tuple)) else [source]
    return [path for spec in specs for path in _shards(os.fspath(spec))[0]]


def _shards(name: str) -> Tuple[Tuple[Path, ...], dict]:
    """(shard files, the manifest naming them or ``{}``) of one shard spec."""
    path = Path(name)
    if path.is_dir():
        return _folder_shards(path)
    if path.is_file() and path.suffix.lower() == ".json":
        manifest = read_manifest(path)
        return _manifest_paths(path, manifest), manifest
    if path.is_file():
        return (path,), {}
    return tuple(_pattern_paths(name)), {}


def _folder_shards(folder: Path) -> Tuple[Tuple[Path, ...], dict]:
    """(shards, manifest) of a folder: its manifest's shards, or every ``.tar`` if it has no manifest."""
    manifests = find_manifests(folder)
    if len(manifests) > 1:
        raise InputError(f"{str(folder)!r} holds several shard sets ({', '.join(p.name for p in manifests)}); "
                         "pass the manifest .json of the one to read")
    if manifests:
        manifest = read_manifest(manifests[0])
        return _manifest_paths(manifests[0], manifest), manifest
    paths = tuple(sorted(folder.glob("*.tar")))
    if not paths:
        raise InputError(f"no .tar shards in folder {str(folder)!r}")
    return paths, {}


def _manifest_paths(path: Path, manifest: dict) -> Tuple[Path, ...]:
    paths = tuple(path.parent / name for name in manifest["shards"])
    for p in paths:
        if not p.is_file():
            raise InputError(f"shard {str(p)!r} does not exist (listed in the manifest {str(path)!r})")
    return paths


def _is_pattern(text: str) -> bool:
    return bool(_BRACES.search(text)) or any(c in text for c in "*?[")


def _pattern_paths(pattern: str) -> List[Path]:
    """The files a glob / brace-range pattern names; ``InputError`` for any part that names none."""
    paths = []
    for part in expand_braces(pattern):
        if any(c in part for c in "*?["):
            found = [Path(f) for f in sorted(glob.glob(part))]
            if not found:
                raise InputError(f"shard {part!r} does not exist (no file matches)")
            paths += found
        elif Path(part).is_file():
            paths.append(Path(part))
        else:
            raise InputError(f"shard {part!r} does not exist")
    return paths


def expand_braces(pattern: str) -> List[str]:
    """``"a{00..02}.tar"`` -> ``["a00.tar", "a01.tar", "a02.tar"]`` (zero padding kept); nests left to right."""
    m = _BRACES.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0
    out = []
    for i in range(int(lo), int(hi) + 1):
        out += expand_braces(pattern[:m.start()] + str(i).zfill(width) + pattern[m.end():])
    return out


# --- synthetic: -----------------------------------------------------------------------------------


SYNTHETIC_OPTIONS = ("n", "size", "seed", "label", "version", "colour_free", "size_scale", "objects", "cache")


def synthetic_options(spec: str) -> dict:
    """``"synthetic:SPLIT[,n=N][,size=S|HxW][,seed=K][,label=NAME][,version=V][,colour_free=F][,size_scale=X]
    [,objects=A-B][,cache=DIR]"`` -> ``SyntheticShapes`` keyword arguments (and ``cache``, which is not one)."""
    if not isinstance(spec, str) or not spec.startswith(SYNTHETIC):
        raise InputError(f"expected 'synthetic:SPLIT[,n=N,size=S,seed=K,label=NAME,version=V]'; got {spec!r}")
    split, *options = spec[len(SYNTHETIC):].split(",")
    kwargs = {"split": split}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in SYNTHETIC_OPTIONS:
            raise InputError(f"bad option {option!r} in {spec!r}; expected n=N, size=S or HxW, seed=K, label=NAME, "
                             "version=V, colour_free=F, size_scale=X, objects=A-B or cache=DIR")
        parse = {"label": str, "cache": str, "size": parse_size, "colour_free": _parse_float, "size_scale": _parse_float,
                 "objects": _parse_range}.get(key, _parse_int)
        kwargs[key] = parse(value)
    return kwargs


def open_synthetic(spec: DataSpec, default_size: Union[int, Tuple[int, int]]) -> SyntheticShapes:
    """The benchmark a ``synthetic`` spec names, at ``default_size`` unless the spec gives ``size=``."""
    return SyntheticShapes(**{"size": default_size, **{k: v for k, v in spec.options.items() if k != "cache"}})


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"expected an integer in a synthetic: option; got {text!r}") from None


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"expected a number in a synthetic: option; got {text!r}") from None


def _parse_range(text: str) -> Tuple[int, int]:
    """``"1-2"`` -> (1, 2), ``"2"`` -> (2, 2)."""
    lo, _, hi = text.partition("-")
    return _parse_int(lo), _parse_int(hi or lo)


def parse_size(text: str) -> Union[int, Tuple[int, int]]:
    """``"64"`` -> 64, ``"48x64"`` -> (48, 64) (height x width), as written on a command line."""
    try:
        parts = [int(v) for v in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise InputError(f"size must be an integer or HxW (e.g. 64 or 48x64); got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])
