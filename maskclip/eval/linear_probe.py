"""Linear probe: logistic regression on frozen image features, weight decay chosen on a validation split.

Protocol: features are ``encode_image`` embeddings (the pooled joint-space output), extracted
once, standardised with the fitting set's mean and standard deviation. A multinomial logistic
regression (bias not decayed) is fitted by full-batch L-BFGS for each weight decay of the
sweep; the one with the best validation top-1 wins (ties: the larger weight decay), and is
refitted on train + validation and scored on the test set. Without a validation set, a
seeded 20% of the training set is held out for the sweep.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import InputError
from . import metrics
from .datasets import open_dataset
from .features import evaluating, image_features, label_tensor

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
VAL_FRACTION = 0.2


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                            max_iter: int = 300) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``mean cross-entropy + weight_decay / 2 * ||W||^2`` over W ``[D, C]`` and b ``[C]``.

    ``x [N, D]`` features, ``y [N]`` class indices; returns (W, b).

    Starts from zero, so the result is deterministic.
    """
    x = x.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-8,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():
        opt.step(closure)
    return w.detach(), b.detach()


@contextmanager
def _one_thread():
    """Run torch single-threaded inside the block, then restore the thread count.

    L-BFGS is a long chain of small ops, each a parallel region to enter: on a busy 2-core
    machine, 2 threads measured 7x (N=10000, D=512) to 150x (N=20, D=32) slower than 1.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def probe(train: Tuple[torch.Tensor, torch.Tensor], val: Tuple[torch.Tensor, torch.Tensor],
          test: Tuple[torch.Tensor, torch.Tensor], num_classes: int,
          weight_decays: Sequence[float] = WEIGHT_DECAYS, max_iter: int = 300) -> dict:
    """The sweep on (features, labels) pairs: fit on ``train``, select on ``val``, refit on both, score ``test``."""
    weight_decays = _check_weight_decays(weight_decays)
    sweep = []
    for wd in weight_decays:
        scores = _fit_and_score(train, val[0], num_classes, wd, max_iter)
        sweep.append({"weight_decay": wd, "val_top1": metrics.topk_accuracy(scores, val[1], (1,))[1]})
    best = max(reversed(sweep), key=lambda row: row["val_top1"])["weight_decay"]
    both = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    scores = _fit_and_score(both, test[0], num_classes, best, max_iter)
    ks = [k for k in (1, 5) if k <= num_classes]
    return {**{f"top{k}": v for k, v in metrics.topk_accuracy(scores, test[1], ks).items()},
            "mean_per_class_recall": metrics.mean_per_class_recall(scores.argmax(1), test[1], num_classes),
            "weight_decay": best, "sweep": sweep}


def _fit_and_score(fit, x_eval: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int) -> torch.Tensor:
    x, y = fit
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    w, b = fit_logistic_regression((x - mean) / std, y, num_classes, weight_decay, max_iter)
    return (((x_eval - mean) / std).double() @ w + b).float()


def linear_probe_classification(model, train, test, val=None, weight_decays: Sequence[float] = WEIGHT_DECAYS,
                                max_iter: int = 300, seed: int = 0, batch_size: int = 64,
                                progress: bool = True) -> dict:
    """Linear probe of ``model``'s image features; ``train`` / ``val`` / ``test``: ``EvalSet``s or data specs."""
    start = time.perf_counter()
    size = model.config.preprocess.image_size
    sets = {"train": open_dataset(train, default_size=size), "test": open_dataset(test, default_size=size)}
    if val is not None:
        sets["val"] = open_dataset(val, default_size=size)
    for name, ds in sets.items():
        ds.require("labels", f"the linear probe's {name} set")
    classnames = sets["train"].classnames
    for name, ds in sets.items():
        if ds.classnames != classnames:
            raise InputError(f"the {name} set's classes differ from the train set's "
                             f"({ds.name} vs {sets['train'].name})")
    data = {}
    with evaluating(model):
        for name, ds in sets.items():
            feats, labels, _ = image_features(model, ds, batch_size, normalize=False, show=progress,
                                              desc=f"probe {name}")
            data[name] = (feats, label_tensor(labels, len(classnames), ds.name))
    if "val" not in data:
        data["train"], data["val"] = _hold_out(data["train"], VAL_FRACTION, seed)
    result = probe(data["train"], data["val"], data["test"], len(classnames), weight_decays, max_iter)
    return {
        "task": "linear_probe",
        "model": model.config.name,
        "data": {name: ds.name for name, ds in sets.items()},
        "n_train": len(data["train"][1]), "n_val": len(data["val"][1]), "n_test": len(data["test"][1]),
        "num_classes": len(classnames),
        "feature_dim": data["train"][0].shape[1],
        **result,
        "chance_top1": 1 / len(classnames),
        "protocol": "frozen encode_image embeddings, standardised; multinomial logistic regression by full-batch "
                    "L-BFGS; weight decay chosen on the validation split, then refitted on train + validation",
        "seconds": round(time.perf_counter() - start, 3),
    }


def _hold_out(data, fraction: float, seed: int):
    """Split (features, labels) into a seeded (1 - fraction, fraction) pair."""
    x, y = data
    n_val = int(round(fraction * len(y)))
    if n_val < 1 or n_val >= len(y):
        raise InputError(f"the train set ({len(y)} items) is too small to hold out a validation split; pass val=")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return (x[order[n_val:]], y[order[n_val:]]), (x[order[:n_val]], y[order[:n_val]])


def _check_weight_decays(values) -> list:
    values = list(values) if not isinstance(values, (int, float)) else [values]
    if not values or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in values):
        raise InputError(f"weight_decays must be a non-empty list of non-negative numbers; got {values!r}")
    return [float(v) for v in sorted(values)]
