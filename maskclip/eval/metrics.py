"""Evaluation metrics as pure functions on tensors.

Ties are broken by index everywhere, as ``argmax`` breaks them: among equal scores the lower
index ranks first. So a constant scorer always predicts class 0, and results never depend on
the sort implementation.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from ..datasets.record import IGNORE_INDEX
from ..errors import InputError, InputTypeError

_CHUNK = 1024  # rows scored at a time: bounds memory at _CHUNK x columns booleans


def pair_ranks(scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of ``scores[rows[p], cols[p]]`` within row ``rows[p]``, for every pair ``p``: ``[P]``.

    rank = #(scores in the row greater than it) + #(equal scores at a lower column index).
    """
    out = []
    order = torch.arange(scores.shape[1], device=scores.device)
    for start in range(0, rows.numel(), _CHUNK):
        r, c = rows[start:start + _CHUNK], cols[start:start + _CHUNK]
        s = scores[r]  # [p, K]
        g = s.gather(1, c[:, None])
        out.append((s > g).sum(1) + ((s == g) & (order[None] < c[:, None])).sum(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of the true class per sample: scores ``[N, C]``, targets ``[N]`` -> ``LongTensor[N]``."""
    scores, targets = _check_scores(scores, targets)
    return pair_ranks(scores, torch.arange(scores.shape[0]), targets)


def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, float]:
    """Fraction of samples whose true class is among the ``k`` best scores, for each ``k`` (ties by index)."""
    ranks = target_ranks(scores, targets)
    return {int(k): float((ranks < k).double().mean()) for k in ks}


def per_class_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Recall of each class ``[C]``; NaN for a class with no sample."""
    if preds.shape != targets.shape or preds.dim() != 1:
        raise InputError(f"predictions and labels must both be [N]; got {list(preds.shape)} and {list(targets.shape)}")
    preds, targets = _check_labels(preds, targets, num_classes)
    total = torch.bincount(targets, minlength=num_classes).double()
    hits = torch.bincount(targets[preds == targets], minlength=num_classes).double()
    return torch.where(total > 0, hits / total.clamp(min=1), torch.full_like(total, float("nan")))


def mean_per_class_recall(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Mean of the recalls of the classes that have samples (balanced accuracy)."""
    return float(per_class_recall(preds, targets, num_classes).nanmean())


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """Counts ``LongTensor[C, C]``: row = true class, column = predicted; pixels labelled ``ignore_index`` skipped."""
    if preds.shape != targets.shape:
        raise InputError(f"predictions and labels must have the same shape; got {list(preds.shape)} and "
                         f"{list(targets.shape)}")
    preds, targets = preds.reshape(-1), targets.reshape(-1)
    keep = targets != ignore_index
    preds, targets = _check_labels(preds[keep], targets[keep], num_classes)
    return torch.bincount(targets * num_classes + preds, minlength=num_classes ** 2).view(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """Intersection over union of each class ``[C]`` from a confusion matrix; NaN where the union is empty.

    A class absent from the labels but predicted somewhere has IoU 0 and counts in the mean (as in mmseg).
    """
    cm = confusion.double()
    inter = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes whose union is not empty."""
    return float(iou_per_class(confusion).nanmean())


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Correct pixels / labelled pixels; NaN when no pixel is labelled."""
    total = confusion.sum()
    return float(confusion.diagonal().sum() / total) if total > 0 else float("nan")


def retrieval_recall(scores: torch.Tensor, text_image: torch.Tensor,
                     ks: Sequence[int] = (1, 5, 10)) -> Dict[str, Dict[int, float]]:
    """Recall@k both ways from image-text similarities ``[N_images, N_texts]``.

    ``text_image[t]`` is the index of the image caption ``t`` describes; every image needs at
    least one caption. Image -> text: an image counts as found at ``k`` if any of its captions
    ranks among its ``k`` best texts. Text -> image: its one image ranks among the ``k`` best.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise InputError(f"scores must be a 2-D tensor [N_images, N_texts]; got {_describe(scores)}")
    n_images, n_texts = scores.shape
    text_image = torch.as_tensor(text_image).long().reshape(-1)
    if text_image.numel() != n_texts:
        raise InputError(f"text_image must give one image per text ({n_texts}); got {text_image.numel()} entries")
    if n_texts and (text_image.min() < 0 or text_image.max() >= n_images):
        raise InputError(f"text_image entries must be image indices in [0, {n_images})")
    if torch.bincount(text_image, minlength=n_images).min() == 0:
        raise InputError("every image needs at least one caption for retrieval")
    scores = scores.float()
    t2i = pair_ranks(scores.T, torch.arange(n_texts), text_image)
    caption_ranks = pair_ranks(scores, text_image, torch.arange(n_texts))
    i2t = torch.full((n_images,), n_texts, dtype=torch.long).scatter_reduce(0, text_image, caption_ranks, "amin")
    return {"image_to_text": {int(k): float((i2t < k).double().mean()) for k in ks},
            "text_to_image": {int(k): float((t2i < k).double().mean()) for k in ks}}


def _check_scores(scores, targets):
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[1] == 0:
        raise InputError(f"scores must be a tensor [N, C] with C > 0; got {_describe(scores)}")
    targets = torch.as_tensor(targets)
    if targets.dim() != 1 or targets.shape[0] != scores.shape[0]:
        raise InputError(f"targets must be [N] = [{scores.shape[0]}]; got {_describe(targets)}")
    _check_labels(targets, targets, scores.shape[1])
    return scores.float(), targets.long()


def _check_labels(preds: torch.Tensor, targets: torch.Tensor, num_classes: int):
    for name, t in (("predictions", preds), ("labels", targets)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InputTypeError(f"{name} must be integer class indices; got dtype {t.dtype}")
        if t.numel() and (t.min() < 0 or t.max() >= num_classes):
            raise InputError(f"{name} must be class indices in [0, {num_classes}); got values in "
                             f"[{int(t.min())}, {int(t.max())}]")
    return preds.long(), targets.long()


def _describe(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def target_mask(mask: np.ndarray, out_size, n_cls: int, where: str) -> torch.Tensor:
    """A ground-truth mask ``[H, W]`` -> ``LongTensor[H, W]``, checked against its image size and classes.

    ``where`` names the sample in errors. Values must be class indices below ``n_cls`` or ``IGNORE_INDEX``.
    """
    target = torch.from_numpy(np.ascontiguousarray(mask)).long()
    if tuple(target.shape) != tuple(out_size):
        raise InputError(f"{where}: mask is {list(target.shape)} but the image is {list(out_size)} (H, W)")
    bad = (target >= n_cls) & (target != IGNORE_INDEX)
    if bad.any():
        raise InputError(f"{where}: mask values must be class indices below {n_cls} or {IGNORE_INDEX}; "
                         f"found {int(target[bad].max())}")
    return target
