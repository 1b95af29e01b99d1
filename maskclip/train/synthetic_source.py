"""Training on the synthetic shapes benchmark: ``--data synthetic:train[,n=N,size=S,seed=K]``.

Samples are generated on the fly (each from its own seed, so the stream stays deterministic and
resumable); every sample offers all of its captions, one of which is drawn per epoch.
"""
from __future__ import annotations

from ..datasets.synthetic import from_spec
from .data import IndexedSource


def synthetic_source(spec: str, default_size: int = 48) -> IndexedSource:
    """``synthetic:SPLIT[,...]`` -> an indexed source of (key, PIL image, captions)."""
    ds = from_spec(spec, default_size)

    def record(i: int):
        sample = ds[i]
        return sample.meta["key"], sample.image, sample.captions
    return IndexedSource(len(ds), record)
