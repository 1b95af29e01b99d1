"""Datasets: the synthetic shapes benchmark and its tar shards.

>>> from maskclip.datasets import SyntheticShapes, write_shards, TarShards
>>> image, captions, mask, meta = SyntheticShapes("train", size=64, n=1000, seed=0)[0]
"""
from .shards import TarShards, write_shards
from .synthetic import SEGMENTATION_CLASSES, SHAPES, Sample, SyntheticShapes, classnames, templates

__all__ = ["SyntheticShapes", "Sample", "SHAPES", "SEGMENTATION_CLASSES", "classnames", "templates",
           "write_shards", "TarShards"]
