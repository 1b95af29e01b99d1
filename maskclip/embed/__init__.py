"""Embedding whole collections: ``maskclip embed --data SPEC --out DIR``, clip-retrieval's layout, resumable.

- ``inputs``: what is read (folders, CSV/TSV, tar shards local or by URL) and its fixed plan of parts;
- ``output``: the output folder (``img_emb/``, ``text_emb/``, ``metadata/``, stats), written atomically;
- ``collection``: ``embed_collection``, one process or one per torchrun rank.

>>> from maskclip.embed import embed_collection
>>> stats = embed_collection(maskclip.load("tiny-shapes"), "photos/", "out/", shard_size=10000)
"""
from .collection import embed_collection
from .inputs import Collection, open_collection
from .output import OutputFolder

__all__ = ["embed_collection", "open_collection", "Collection", "OutputFolder"]
