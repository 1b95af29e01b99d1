"""Zero-shot segmentation on the field's benchmarks, under their published protocol.

``benchmark_segmentation(model, "voc21", root, method="naclip")`` reads the benchmark's folder
(``maskclip.datasets.segmentation_benchmarks``), resizes each image as mmseg's
``Resize(scale=(max_long_side, short_side), keep_ratio=True)`` does, scores every class name
(all synonyms, prompts = the 80 OpenAI ImageNet templates) in sliding windows with
``model``'s dense ``method``, upsamples the cosine scores to the original size and predicts as
``segmentation_protocol`` describes. Confusion matrices are summed over the split, then mIoU
(over the classes present in labels or predictions, as mmseg), per-class IoU and pixel accuracy.
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..datasets.record import read_image
from ..datasets.segmentation_benchmarks import BENCHMARKS, IGNORE_INDEX, benchmark, benchmark_roots, open_benchmark
from ..dense import default_method, resolve_method
from ..errors import InputError
from ..refine import check_refine
from ..resclip_sfr import check_sfr
from ..segmentation import BATCH_SIZE, check_window
from ..transforms import segmentation_input
from ..zero_shot import resolve_templates
from . import metrics
from .features import check_batch_size, evaluating
from .progress import progress as progress_bar
from .segmentation_protocol import class_probabilities, flatten_synonyms, predict

OVERRIDABLE = ("short_side", "window", "stride")


def protocol_size(height: int, width: int, short_side: int, max_long_side: int) -> int:
    """The shorter side of an ``height x width`` image after mmseg's keep-ratio resize to ``(max_long_side, short_side)``."""
    scale = min(max_long_side / max(height, width), short_side / min(height, width))
    return int(min(height, width) * scale + 0.5)


def benchmark_segmentation(model, name: str, root, method: Optional[str] = None, refine: Optional[str] = None,
                           variant: Optional[str] = None, limit: Optional[int] = None, progress: bool = True,
                           sfr: bool = False, batch_size: int = BATCH_SIZE, **overrides) -> dict:
    """Evaluate ``model``'s dense ``method`` on benchmark ``name`` in folder ``root`` -> results dict.

    ``method``: default ``clearclip`` (``vanilla`` for a ConvNeXt tower, ``dense.default_method``).
    ``refine``: a post-process of the scores (``"pamr"``, ``maskclip.refine``), before the logit
    scale and softmax, as NACLIP applies it. ``sfr``: ResCLIP's semantic feedback refinement
    (``method="resclip"`` only; ``maskclip.resclip_sfr``). ``variant``: another repository's settings (``"naclip"``).
    ``limit``: the first ``limit`` images only. ``batch_size``: windows per forward pass, shared by
    consecutive images (``segmentation.scores_many``). ``overrides``: any of ``OVERRIDABLE``
    (``window=None`` scores the whole image), recorded in the results.
    """
    start = time.perf_counter()
    spec = benchmark(name, variant)
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise InputError(f"protocol overrides must be among {list(OVERRIDABLE)}; got {sorted(unknown)}")
    spec.update(overrides)
    method = resolve_method(default_method(model.visual) if method is None else method, model.visual)
    refine = check_refine(refine)
    sfr = check_sfr(sfr, method)
    data = open_benchmark(name, root, "val")
    n = len(data) if limit is None else min(_check_positive("limit", limit), len(data))
    check_batch_size(batch_size)
    window, stride = check_window(spec["window"], spec["stride"], model.config.vision.patch_size)
    templates = resolve_templates(spec["templates"])
    classes, bg = spec["classes"], spec["background"]
    names, owner = flatten_synonyms(classes)
    n_cls = len(classes)
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    with evaluating(model), torch.no_grad():
        classifier = model.zero_shot_classifier(names, templates)  # [E, Q], built once
        inputs = _protocol_inputs(model, data, n, spec)
        scored = model._segmentation_scores_many(inputs, classifier, method, window, stride, refine, sfr=sfr,
                                                 batch_size=batch_size)
        for target, scores in progress_bar(scored, total=n, desc=name, enabled=progress):
            probs = class_probabilities(scores, owner, n_cls, spec["logit_scale"])
            label = predict(probs, bg, spec["prob_threshold"], spec["area_threshold"])
            confusion += metrics.confusion_matrix(label, target, n_cls, IGNORE_INDEX)
    class_names = [("background" if k == bg else synonyms[0]) for k, synonyms in enumerate(classes)]
    return {
        "task": "segmentation_benchmark",
        "benchmark": name,
        "title": spec["title"],
        "root": str(root),
        "model": model.config.name,
        "method": method,
        "refine": refine,
        "sfr": sfr,
        "n": n,
        "limit": limit,
        "batch_size": batch_size,
        "miou": metrics.mean_iou(confusion),
        "pixel_accuracy": metrics.pixel_accuracy(confusion),
        "per_class_iou": dict(zip(class_names, metrics.iou_per_class(confusion).tolist())),
        "protocol": {
            "variant": variant,
            "short_side": spec["short_side"], "max_long_side": spec["max_long_side"],
            "window": window, "stride": stride if window is not None else None,
            "logit_scale": spec["logit_scale"], "prob_threshold": spec["prob_threshold"],
            "area_threshold": spec["area_threshold"], "background": bg,
            "reduce_zero_label": spec["reduce_zero_label"], "ignore_index": IGNORE_INDEX,
            "templates": spec["templates"], "n_templates": len(templates), "classes": classes,
            "overrides": dict(overrides), "sources": spec["sources"],
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


def _protocol_inputs(model, data, n: int, spec: dict):
    """The first ``n`` samples of ``data`` resized by the protocol -> ``(x, out_size, target mask)``."""
    n_cls = len(spec["classes"])
    for i in range(n):
        sample = data[i]
        image = read_image(sample.image)
        size = protocol_size(image.height, image.width, spec["short_side"], spec["max_long_side"])
        x, out_size = segmentation_input(image, model.config.preprocess, size=size)
        target = metrics.target_mask(sample.mask, out_size, n_cls, f"mask {sample.meta['mask']!r}")
        yield x, out_size, target


def all_benchmarks(model, data_root, names: Optional[Sequence[str]] = None, **kwargs) -> dict:
    """``benchmark_segmentation`` on each of ``names`` (default all eight) from its usual folder under ``data_root``.

    Adds the average mIoU over them.
    """
    start = time.perf_counter()
    names = BENCHMARKS if names is None else tuple(names)
    roots = benchmark_roots(data_root, names)  # every folder found before the first image is scored
    results = {n: benchmark_segmentation(model, n, roots[n], **kwargs) for n in names}
    mious = [r["miou"] for r in results.values()]
    return {
        "task": "segmentation_benchmarks",
        "model": model.config.name,
        "method": next(iter(results.values()))["method"],
        "refine": kwargs.get("refine"),
        "sfr": bool(kwargs.get("sfr", False)),
        "average_miou": float(np.mean(mious)) if all(math.isfinite(m) for m in mious) else float("nan"),
        "miou": {n: r["miou"] for n, r in results.items()},
        "benchmarks": results,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}")
    return value


