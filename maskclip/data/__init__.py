"""Package data files (registry, architectures, templates, class names) and the synthetic shapes benchmark.

>>> from maskclip.data import SyntheticShapes, write_shards, TarShards
>>> image, captions, mask, meta = SyntheticShapes("train", size=64, n=1000, seed=0)[0]
"""
from .shards import TarShards, write_shards
from .synthetic import SEGMENTATION_CLASSES, SHAPES, Sample, SyntheticShapes, classnames, templates

__all__ = ["SyntheticShapes", "Sample", "SHAPES", "SEGMENTATION_CLASSES", "classnames", "templates",
           "write_shards", "TarShards"]
