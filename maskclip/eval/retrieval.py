"""Image-text retrieval: Recall@1/5/10 from images to texts and from texts to images.

Protocol: every caption of every image is a text; similarities are cosines of L2-normalised
``encode_image`` and ``encode_text`` embeddings. Image -> text counts an image as found when
any of its captions is among the k best texts; text -> image when its own image is among the
k best images. Ties go to the lower index (see ``metrics.retrieval_recall``).
"""
from __future__ import annotations

import time

import torch

from . import metrics
from .datasets import open_dataset
from .features import evaluating, image_features, text_features

KS = (1, 5, 10)


def image_text_retrieval(model, dataset, batch_size: int = 64, progress: bool = True) -> dict:
    """Evaluate ``model`` on ``dataset`` (an ``EvalSet`` or a data spec with captions) -> results dict."""
    start = time.perf_counter()
    ds = open_dataset(dataset, default_size=model.config.preprocess.image_size)
    ds.require("captions", "image-text retrieval")
    with evaluating(model):
        images, _, captions = image_features(model, ds, batch_size, show=progress, desc="retrieval images")
        texts = [c for caps in captions for c in caps]
        text_image = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], dtype=torch.long)
        text_feats = text_features(model, texts, show=progress, desc="retrieval texts")
    recall = metrics.retrieval_recall(images @ text_feats.T, text_image, KS)
    return {
        "task": "image_text_retrieval",
        "model": model.config.name,
        "data": ds.name,
        "n_images": images.shape[0],
        "n_texts": len(texts),
        "skipped": ds.skipped,
        "captions_per_image": len(texts) / images.shape[0],
        **{f"image_to_text_R@{k}": v for k, v in recall["image_to_text"].items()},
        **{f"text_to_image_R@{k}": v for k, v in recall["text_to_image"].items()},
        "chance_text_to_image_R@1": 1 / images.shape[0],
        "protocol": "cosine similarity of L2-normalised image and text embeddings; all captions of all images are "
                    "candidates; image->text hit if any own caption is in the top k; ties to the lower index",
        "seconds": round(time.perf_counter() - start, 3),
    }
