"""Zero-shot semantic segmentation: mIoU and pixel accuracy of ``dense_features`` for each dense method.

Protocol (written into the results): each image is resized so its shorter side is
``image_size`` (default: the model's), aspect ratio kept, no crop, optionally scored in sliding
windows; every patch's L2-normalised dense feature is compared by cosine with the text
classifier of the segmentation classes; the scores are upsampled bilinearly to the label
mask's size and the best class is taken per pixel. This is exactly ``model.segment``, with the
classifier built once. Confusion matrices are summed over the whole set before the IoUs.

Background (a segmentation class named ``"background"``) is reported two ways:

- ``all_classes``: background is one more class, prompted by its name like the others;
- ``foreground``: pixels labelled background are ignored and background is not a candidate,
  so only the object classes compete (the "no background" protocol of ClearCLIP's VOC20).

Pixels labelled ``ignore_index`` (255) never count.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from ..dense import METHODS, ORIGINAL_METHODS, resolve_method
from ..errors import InputError
from ..refine import check_refine
from ..segmentation import BATCH_SIZE, check_window
from ..transforms import segmentation_input
from ..zero_shot import resolve_templates
from . import metrics
from .metrics import IGNORE_INDEX
from .datasets import open_dataset
from .features import check_batch_size, evaluating
from .progress import progress as progress_bar


def zero_shot_segmentation(model, dataset, methods: Sequence[str] = ORIGINAL_METHODS,
                           classnames: Optional[Sequence[str]] = None,
                           templates=None, image_size: Optional[int] = None, window: Optional[int] = None,
                           stride: Optional[int] = None, progress: bool = True, refine: Optional[str] = None,
                           batch_size: int = BATCH_SIZE) -> dict:
    """Evaluate every dense ``method`` on ``dataset`` (an ``EvalSet`` or data spec with masks) -> results dict.

    Results are keyed by the method names as given (an alias such as ``"maskclip"`` keeps its
    spelling; it scores as ``"zhou"``). ``classnames`` replace the dataset's segmentation classes
    (one per mask value); ``templates`` default to the dataset's suggested ones. ``refine``:
    ``None`` or ``"pamr"`` (``maskclip.refine``), applied to every method's scores. ``batch_size``:
    images read at a time, and windows per forward pass (``segmentation.scores_many``).
    """
    start = time.perf_counter()
    ds = open_dataset(dataset, segmentation_classes=classnames, default_size=model.config.preprocess.image_size)
    ds.require("masks", "zero-shot segmentation")
    methods = {m: resolve_method(m, model.visual) for m in _check_methods(methods)}  # as given -> name in METHODS
    templates = resolve_templates(templates if templates is not None else ds.templates)
    classes, bg = ds.segmentation_classes, ds.background_index
    size = image_size if image_size is not None else model.config.preprocess.image_size
    window, stride = check_window(window, stride, model.config.vision.patch_size)
    refine = check_refine(refine)
    check_batch_size(batch_size)
    n_cls = len(classes)
    confusion = {m: torch.zeros(n_cls, n_cls, dtype=torch.long) for m in methods}
    fg_confusion = {m: torch.zeros(n_cls - 1, n_cls - 1, dtype=torch.long) for m in methods} if bg is not None else {}
    with evaluating(model), torch.no_grad():
        classifier = model.zero_shot_classifier(classes, templates)
        for chunk in progress_bar(_chunks(ds, model, size, n_cls, batch_size), total=-(-len(ds) // batch_size),
                                  desc="segmentation", enabled=progress):
            for m, name in methods.items():  # each method scores the chunk's windows in shared forward passes
                for target, scores in model._segmentation_scores_many(chunk, classifier, name, window, stride, refine,
                                                                      batch_size=batch_size):
                    confusion[m] += metrics.confusion_matrix(scores.argmax(0), target, n_cls, IGNORE_INDEX)
                    if bg is not None:
                        fg_confusion[m] += _foreground_confusion(scores, target, bg)
    results = {m: {"all_classes": _summary(confusion[m], classes)} for m in methods}
    for m in fg_confusion:
        results[m]["foreground"] = _summary(fg_confusion[m], [c for k, c in enumerate(classes) if k != bg])
    return {
        "task": "zero_shot_segmentation",
        "model": model.config.name,
        "data": ds.name,
        "n": len(ds),
        "skipped": ds.skipped,
        "classes": classes,
        "methods": results,
        "protocol": {
            "image_size": size, "resize": "shorter side to image_size, aspect ratio kept, no crop",
            "window": window, "stride": stride, "refine": refine,
            "scores": "cosine of L2-normalised dense features and the text classifier, bilinearly upsampled "
                      "to the mask size, argmax per pixel; confusion matrices summed over the set",
            "background": "no background class" if bg is None else (
                "all_classes: 'background' is a class prompted by its name; foreground: background pixels "
                "ignored and background not a candidate"),
            "ignore_index": IGNORE_INDEX,
            "templates": templates,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


def _chunks(ds, model, size: int, n_cls: int, batch_size: int):
    """``ds``'s records, ``batch_size`` at a time, as ``(x, out_size, target mask)`` lists."""
    chunk = []
    for i in range(len(ds)):
        record = ds[i]
        x, out_size = segmentation_input(record.image, model.config.preprocess, size=size)
        chunk.append((x, out_size, metrics.target_mask(record.mask, out_size, n_cls, f"{ds.name} item {i}")))
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _foreground_confusion(scores: torch.Tensor, target: torch.Tensor, bg: int) -> torch.Tensor:
    """Confusion over the object classes only: background pixels ignored, background never predicted."""
    keep = [k for k in range(scores.shape[0]) if k != bg]
    pred = scores[keep].argmax(0)
    shifted = torch.where(target > bg, target - 1, target)  # class k > bg moves to k - 1
    shifted[(target == bg) | (target == IGNORE_INDEX)] = IGNORE_INDEX
    return metrics.confusion_matrix(pred, shifted, len(keep), IGNORE_INDEX)


def _summary(confusion: torch.Tensor, classes) -> dict:
    iou = metrics.iou_per_class(confusion)
    return {"miou": metrics.mean_iou(confusion), "pixel_accuracy": metrics.pixel_accuracy(confusion),
            "per_class_iou": dict(zip(classes, iou.tolist()))}




def _check_methods(methods) -> list:
    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        raise InputError(f"methods must name at least one of {list(METHODS)}")
    return list(dict.fromkeys(methods))
