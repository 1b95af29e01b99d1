"""Frozen features for evaluation, through the public model API only (``encode_image`` / ``encode_text``).

Any model that ``maskclip.load`` returns, whatever layout its weights came in, goes through
the same calls; the model's train/eval mode is restored afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import InputError
from .datasets import EvalSet, Record
from .progress import progress


@contextmanager
def evaluating(model):
    """Run the block with ``model.eval()``, then put back the mode the model was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def check_batch_size(batch_size) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer; got {batch_size!r}")
    return batch_size


def batches(dataset: EvalSet, batch_size: int, desc: str, show: bool) -> Iterator[List[Record]]:
    """The records of ``dataset`` in lists of ``batch_size``, with a progress bar per batch."""
    starts = range(0, len(dataset), check_batch_size(batch_size))
    for start in progress(starts, total=len(starts), desc=desc, enabled=show):
        yield [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]


@torch.no_grad()
def image_features(model, dataset: EvalSet, batch_size: int = 64, normalize: bool = True, show: bool = True,
                   desc: str = "images") -> Tuple[torch.Tensor, List[Optional[int]], List[Tuple[str, ...]]]:
    """Encode every image: (features ``float32 [N, E]`` on the CPU, labels, captions) in dataset order."""
    feats, labels, captions = [], [], []
    for batch in batches(dataset, batch_size, desc, show):
        feats.append(model.encode_image([r.image for r in batch], normalize=normalize).float().cpu())
        labels += [r.label for r in batch]
        captions += [r.captions for r in batch]
    return torch.cat(feats), labels, captions


@torch.no_grad()
def text_features(model, texts: Sequence[str], batch_size: int = 256, show: bool = True,
                  desc: str = "texts") -> torch.Tensor:
    """L2-normalised text embeddings ``float32 [T, E]`` on the CPU."""
    starts = range(0, len(texts), check_batch_size(batch_size))
    chunks = [model.encode_text(list(texts[s:s + batch_size]), normalize=True).float().cpu()
              for s in progress(starts, total=len(starts), desc=desc, enabled=show)]
    return torch.cat(chunks)


def label_tensor(labels: Sequence[Optional[int]], num_classes: int, name: str) -> torch.Tensor:
    """Labels -> ``LongTensor[N]``, checked to be class indices in ``[0, num_classes)``."""
    if any(label is None for label in labels):
        raise InputError(f"{name}: some items have no label")
    targets = torch.tensor(list(labels), dtype=torch.long)
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise InputError(f"{name}: labels must be in [0, {num_classes}) for {num_classes} class names")
    return targets
