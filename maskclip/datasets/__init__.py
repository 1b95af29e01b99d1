"""Datasets: one sample record, one reader per format, one parser of data specs, the synthetic benchmark.

- ``record``: ``Sample(image, captions, mask, meta)``, what every reader yields, and
  ``read_image`` (the decoder inference uses) / ``read_mask``;
- ``spec``: ``parse_spec`` (``synthetic:...``, CSV/TSV, shards by path, glob or ``{a..b}``
  range, manifests, folders) and ``shard_paths``;
- ``table`` (CSV / TSV), ``tar`` (webdataset tar shards), ``folder`` (class subfolders),
  ``writer`` (``write_shards``), ``manifest``;
- ``synthetic`` (with ``scene``, ``render``, ``captions``): the generated shapes benchmark.

>>> from maskclip.datasets import SyntheticShapes, write_shards, TarShards
>>> image, captions, mask, meta = SyntheticShapes("train", size=64, n=1000, seed=0)[0]
"""
from .folder import read_folder
from .record import Sample, read_image, read_mask
from .spec import DataSpec, open_synthetic, parse_spec, shard_paths
from .synthetic import SEGMENTATION_CLASSES, SHAPES, SyntheticShapes, classnames, templates
from .table import ColumnError, Table, parse_separator
from .tar import TarShards, decode_sample, tar_members
from .writer import write_shards

__all__ = ["SyntheticShapes", "Sample", "SHAPES", "SEGMENTATION_CLASSES", "classnames", "templates",
           "write_shards", "TarShards", "Table", "ColumnError", "parse_separator", "DataSpec", "parse_spec",
           "open_synthetic",
           "shard_paths", "tar_members", "decode_sample", "read_folder", "read_image", "read_mask"]
