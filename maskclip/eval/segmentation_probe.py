"""Linear segmentation probe: a 1x1 linear head on frozen patch features ("ADE20K linear").

Protocol: each image's shorter side is resized to ``size`` (aspect kept, no crop, padded to
whole patches); ``dense_features(..., method="vanilla")`` gives one feature per patch. Training
pairs are the patches of the train split labelled by the mask pixel under each patch's centre
(ignored pixels and padding dropped; optionally ``patches_per_image`` of them, seeded). The
features are standardised with the training mean and standard deviation and a multinomial
logistic regression (``linear_probe.fit_logistic_regression``: full-batch L-BFGS, weight decay
on the weights) is fitted. On the val split the head's logits are upsampled bilinearly to the
label's size and the argmax is scored: confusion summed over the split, then mIoU, per-class
IoU, pixel accuracy.
"""
from __future__ import annotations

import time
from typing import Callable, List, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.record import read_image
from ..datasets.segmentation_benchmarks import IGNORE_INDEX, benchmark, open_benchmark
from ..errors import InputError
from ..transforms import segmentation_input
from . import metrics
from .datasets import open_dataset
from .features import evaluating
from .linear_probe import fit_logistic_regression
from .progress import progress as progress_bar


class Split(NamedTuple):
    """A labelled split: ``get(i)`` -> (image, ``uint8 [H, W]`` mask), ``n`` items, its class names."""

    name: str
    n: int
    get: Callable[[int], Tuple[object, np.ndarray]]
    classes: List[str]


def benchmark_splits(name: str, root) -> Tuple[Split, Split]:
    """(train, val) of benchmark ``name`` in its usual layout under ``root``."""
    spec = benchmark(name)
    classes = [("background" if k == spec["background"] else s[0]) for k, s in enumerate(spec["classes"])]

    def split(part):
        data = open_benchmark(name, root, part)
        return Split(f"{name}:{part}", len(data), lambda i: (data[i].image, data[i].mask), classes)

    return split("train"), split("val")


def spec_split(spec) -> Split:
    """An ``EvalSet`` or data spec with masks (``synthetic:train``, a CSV with a mask column, shards) -> ``Split``."""
    ds = open_dataset(spec)
    ds.require("masks", "the segmentation probe")
    return Split(ds.name, len(ds), lambda i: (ds[i].image, ds[i].mask), ds.segmentation_classes)


def segmentation_probe(model, train: Split, val: Split, size: Optional[int] = None, weight_decay: float = 1e-4,
                       max_iter: int = 300, patches_per_image: Optional[int] = None, limit: Optional[int] = None,
                       seed: int = 0, progress: bool = True) -> dict:
    """Fit a linear head on ``train``'s frozen patch features, score it on ``val`` -> results dict."""
    start = time.perf_counter()
    if train.classes != val.classes:
        raise InputError(f"the val split's classes differ from the train split's ({val.name} vs {train.name})")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise InputError(f"weight_decay must be a non-negative number; got {weight_decay!r}")
    if patches_per_image is not None and (not isinstance(patches_per_image, int) or patches_per_image < 1):
        raise InputError(f"patches_per_image must be a positive integer; got {patches_per_image!r}")
    size = size if size is not None else model.config.preprocess.image_size
    n_train, n_val = (_count(s, limit) for s in (train, val))
    n_cls = len(train.classes)
    rng = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    with evaluating(model), torch.no_grad():
        for i in progress_bar(range(n_train), total=n_train, desc="probe features", enabled=progress):
            feats, labels = _patch_data(model, *train.get(i), size, n_cls, f"{train.name} item {i}")
            if patches_per_image is not None and len(labels) > patches_per_image:
                pick = torch.randperm(len(labels), generator=rng)[:patches_per_image]
                feats, labels = feats[pick], labels[pick]
            xs.append(feats)
            ys.append(labels)
        x, y = torch.cat(xs), torch.cat(ys)
        if not len(y):
            raise InputError(f"{train.name}: no labelled patches to fit the probe on")
        mean = x.mean(0)
        std = x.std(0).clamp(min=1e-6) if len(y) > 1 else torch.ones(x.shape[1])
        w, b = fit_logistic_regression((x - mean) / std, y, n_cls, float(weight_decay), max_iter)
        confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
        for i in progress_bar(range(n_val), total=n_val, desc="probe val", enabled=progress):
            image, mask = val.get(i)
            logits = _logits(model, image, size, mean, std, w, b)
            target = torch.from_numpy(np.ascontiguousarray(mask)).long()
            if tuple(target.shape) != tuple(logits.shape[-2:]):
                raise InputError(f"{val.name} item {i}: mask is {list(target.shape)} but the image is "
                                 f"{list(logits.shape[-2:])} (H, W)")
            confusion += metrics.confusion_matrix(logits.argmax(0), _checked(target, n_cls, f"{val.name} item {i}"),
                                                  n_cls, IGNORE_INDEX)
    return {
        "task": "segmentation_probe",
        "model": model.config.name,
        "data": {"train": train.name, "val": val.name},
        "n_train": n_train, "n_val": n_val, "n_train_patches": len(y),
        "miou": metrics.mean_iou(confusion),
        "pixel_accuracy": metrics.pixel_accuracy(confusion),
        "per_class_iou": dict(zip(train.classes, metrics.iou_per_class(confusion).tolist())),
        "feature_dim": x.shape[1],
        "protocol": {
            "features": "dense_features(method='vanilla'), frozen", "size": size,
            "resize": "shorter side to size, aspect ratio kept, no crop, padded to whole patches",
            "train_labels": "mask pixel under each patch's centre; ignored pixels and padding dropped",
            "patches_per_image": patches_per_image, "seed": seed,
            "head": "1x1 linear (multinomial logistic regression, standardised features, full-batch L-BFGS)",
            "weight_decay": float(weight_decay), "max_iter": max_iter,
            "scoring": "logits upsampled bilinearly to the label size, argmax; confusion summed over the split",
            "ignore_index": IGNORE_INDEX,
        },
        "seconds": round(time.perf_counter() - start, 3),
    }


def _count(split: Split, limit: Optional[int]) -> int:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer; got {limit!r}")
    n = split.n if limit is None else min(limit, split.n)
    if n < 1:
        raise InputError(f"{split.name}: no images")
    return n


def _features(model, image, size: int) -> Tuple[torch.Tensor, Tuple[int, int], Tuple[int, int]]:
    """One image -> (patch features ``[E, gh, gw]``, resized ``(h, w)``, original ``(H, W)``)."""
    x, out_size = segmentation_input(read_image(image), model.config.preprocess, size=size)
    p = model.config.vision.patch_size
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (-w) % p, 0, (-h) % p))
    return model.dense_features(x, method="vanilla")[0].float().cpu(), (h, w), tuple(out_size)


def _patch_data(model, image, mask: np.ndarray, size: int, n_cls: int, where: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """One training image -> (features ``[P, E]``, labels ``[P]``) of its labelled patches."""
    feats, (h, w), (big_h, big_w) = _features(model, image, size)
    target = _checked(torch.from_numpy(np.ascontiguousarray(mask)).long(), n_cls, where)
    if tuple(target.shape) != (big_h, big_w):
        raise InputError(f"{where}: mask is {list(target.shape)} but the image is {[big_h, big_w]} (H, W)")
    p = model.config.vision.patch_size
    gh, gw = feats.shape[-2:]
    centre_r, centre_c = (torch.arange(gh) + 0.5) * p, (torch.arange(gw) + 0.5) * p  # in resized pixels
    rows = (centre_r * big_h / h).long().clamp(max=big_h - 1)
    cols = (centre_c * big_w / w).long().clamp(max=big_w - 1)
    labels = target[rows][:, cols]
    labels[centre_r >= h] = IGNORE_INDEX  # patches of padding only
    labels[:, centre_c >= w] = IGNORE_INDEX
    keep = labels.reshape(-1) != IGNORE_INDEX
    return feats.reshape(feats.shape[0], -1).T[keep], labels.reshape(-1)[keep]


def _logits(model, image, size: int, mean, std, w, b) -> torch.Tensor:
    """One image -> the head's logits ``[C, H, W]`` at the original size."""
    feats, (h, w_px), out_size = _features(model, image, size)
    z = ((feats.permute(1, 2, 0) - mean) / std).double() @ w + b  # [gh, gw, C]
    p = model.config.vision.patch_size
    logits = F.interpolate(z.permute(2, 0, 1)[None].float(), scale_factor=p, mode="bilinear", align_corners=False)
    logits = logits[..., :h, :w_px]
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)[0]


def _checked(target: torch.Tensor, n_cls: int, where: str) -> torch.Tensor:
    bad = (target >= n_cls) & (target != IGNORE_INDEX)
    if bad.any():
        raise InputError(f"{where}: mask values must be class indices below {n_cls} or {IGNORE_INDEX}; "
                         f"found {int(target[bad].max())}")
    return target
