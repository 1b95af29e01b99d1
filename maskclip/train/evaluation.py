"""The periodic evaluation hook of the training loop: zero-shot classification with ``maskclip.eval``."""
from __future__ import annotations

from typing import Callable, Dict

from ..eval import open_dataset, zero_shot_classification


def zero_shot_hook(spec: str) -> Callable[[object], Dict[str, float]]:
    """A function ``model -> {"zeroshot_top1", "zeroshot_top5", "zeroshot_mean_recall"}`` on ``spec``.

    ``spec`` is any labelled evaluation set (``synthetic:val,n=500``, a class-folder, a CSV); it
    is checked now, so a typo fails at the start of training, not at the first evaluation.
    """
    open_dataset(spec).require("labels", "the training loop's zero-shot evaluation")

    def evaluate(model) -> Dict[str, float]:
        r = zero_shot_classification(model, spec, progress=False)
        return {"zeroshot_top1": r["top1"], "zeroshot_top5": r.get("top5", float("nan")),
                "zeroshot_mean_recall": r["mean_per_class_recall"]}
    return evaluate
