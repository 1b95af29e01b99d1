"""Zero-shot classification: top-1, top-5 and mean per-class recall against a text classifier.

Protocol: the classifier is ``model.zero_shot_classifier(classnames, templates)`` (each class's
prompts encoded, normalised, averaged, normalised); an image's scores are the cosine
similarities of its L2-normalised ``encode_image`` embedding to the class columns. Ties go to
the lower class index (see ``metrics``).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from ..zero_shot import resolve_templates
from . import metrics
from .datasets import open_dataset
from .features import evaluating, image_features, label_tensor


def zero_shot_classification(model, dataset, classnames: Optional[Sequence[str]] = None, templates=None,
                             batch_size: int = 64, progress: bool = True) -> dict:
    """Evaluate ``model`` on ``dataset`` (an ``EvalSet`` or a data spec) -> a JSON-able results dict.

    ``classnames`` default to the dataset's; ``templates`` (a set name, a list with ``{}``, or
    ``None``) default to the dataset's suggested templates, else the names as written.
    """
    start = time.perf_counter()
    ds = open_dataset(dataset, classnames=classnames, default_size=model.config.preprocess.image_size)
    ds.require("labels", "zero-shot classification")
    templates = resolve_templates(templates if templates is not None else ds.templates)
    with evaluating(model):
        classifier = model.zero_shot_classifier(ds.classnames, templates).float().cpu()  # [E, C]
        feats, labels, _ = image_features(model, ds, batch_size, show=progress, desc="zero-shot")
    targets = label_tensor(labels, len(ds.classnames), ds.name)
    scores = feats @ classifier
    preds = scores.argmax(dim=1)
    ks = [k for k in (1, 5) if k <= len(ds.classnames)]
    recall = metrics.per_class_recall(preds, targets, len(ds.classnames))
    return {
        "task": "zero_shot_classification",
        "model": model.config.name,
        "data": ds.name,
        "n": len(targets),
        "skipped": ds.skipped,
        "num_classes": len(ds.classnames),
        **{f"top{k}": v for k, v in metrics.topk_accuracy(scores, targets, ks).items()},
        "mean_per_class_recall": float(recall.nanmean()),
        "chance_top1": 1 / len(ds.classnames),
        "per_class_recall": dict(zip(ds.classnames, recall.tolist())),
        "classnames": ds.classnames,
        "templates": templates,
        "protocol": "cosine similarity of L2-normalised encode_image embeddings to the zero-shot classifier "
                    "(prompt embeddings normalised, averaged over templates, normalised); ties to the lower index",
        "seconds": round(time.perf_counter() - start, 3),
    }

