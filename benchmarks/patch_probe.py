"""Per-patch linear probes on frozen patch features, and a paired bootstrap, for the shape study.

``patch_labels(ds, i, grid)`` gives each patch of sample ``i`` three labels from the scene's own
object map (the majority of its pixels): its shape (8 classes), its colour (10) and object vs
background (2); a patch that is mostly background has no shape or colour label (``-1``).
``patch_probe(model, train, test)`` fits one linear classifier per label on the frozen
``dense_features`` (``vanilla``: the patch tokens in the joint space) of the training images'
patches and scores it on the test images' patches: the most direct measure of the local
semantics the MaskCLIP paper claims. ``paired_bootstrap(a, b)`` is the 95 % interval of
``mean(a) - mean(b)`` over the same test items resampled together.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

LABELS = ("shape", "colour", "object")


def patch_labels(ds, index: int, grid: Tuple[int, int]) -> Dict[str, np.ndarray]:
    """Labels of each patch of ``ds[index]`` (a ``SyntheticShapes``) on a ``grid = (h, w)`` of patches.

    -> ``{"shape", "colour", "object"}``, each ``int64 [h * w]``: shape and colour indices of the
    object covering most of the patch (``-1`` where background does), and 1 / 0 for object /
    background.
    """
    from maskclip.datasets.render import render_scene
    from maskclip.datasets.synthetic import COLOURS, SHAPES

    scene = ds.scene(index)
    _, objmap = render_scene(scene, ds.height, ds.width)
    h, w = grid
    ph, pw = ds.height // h, ds.width // w
    blocks = objmap[:h * ph, :w * pw].reshape(h, ph, w, pw).transpose(0, 2, 1, 3).reshape(h * w, ph * pw)
    n = len(scene.objects) + 1
    majority = np.stack([np.bincount(b, minlength=n) for b in blocks]).argmax(1)  # 0: background, k + 1: object k
    shape = np.array([-1] + [SHAPES.index(o.shape) for o in scene.objects])[majority]
    colour = np.array([-1] + [COLOURS.index(o.colour) for o in scene.objects])[majority]
    return {"shape": shape, "colour": colour, "object": (majority > 0).astype(np.int64)}


@torch.no_grad()
def patch_features(model, images: Sequence, batch: int = 128) -> torch.Tensor:
    """Frozen ``vanilla`` patch features of ``images`` -> ``[N, h * w, E]`` (unit norm)."""
    out = []
    for i in range(0, len(images), batch):
        f = model.dense_features(list(images[i:i + batch]), normalize=True)  # [B, E, h, w]
        out.append(f.flatten(2).transpose(1, 2))
    return torch.cat(out)


def fit_linear(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float = 1e-4,
               iterations: int = 100) -> torch.nn.Linear:
    """Multinomial logistic regression on ``x [N, E]``, ``y [N]`` by full-batch L-BFGS."""
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return head


def patch_probe(model, train_ds, test_ds, n_train: int, n_test: int, weight_decay: float = 1e-4) -> Dict[str, dict]:
    """Per-patch linear probes -> ``{label: {"top1", "chance", "patches_train", "patches_test"}}``.

    ``chance`` is the test accuracy of always answering the training patches' majority class.
    ``top1`` also comes per test image (``"per_image"``, the mean over its labelled patches) for
    a paired bootstrap.
    """
    grid = model.config.vision.image_size // model.config.vision.patch_size
    sets = {}
    for name, ds, n in (("train", train_ds, n_train), ("test", test_ds, n_test)):
        feats = patch_features(model, [ds[i].image for i in range(n)])
        labels = [patch_labels(ds, i, (grid, grid)) for i in range(n)]
        sets[name] = (feats, {k: torch.from_numpy(np.stack([lab[k] for lab in labels])) for k in LABELS})
    out = {}
    classes = {"shape": 8, "colour": 10, "object": 2}
    for label in LABELS:
        (xtr, ytr), (xte, yte) = [(s[0].flatten(0, 1), s[1][label].flatten()) for s in (sets["train"], sets["test"])]
        keep_tr, keep_te = ytr >= 0, yte >= 0
        head = fit_linear(xtr[keep_tr], ytr[keep_tr], classes[label], weight_decay)
        with torch.no_grad():
            correct = (head(xte).argmax(-1) == yte).float().view(n_test, -1)
        mask = (yte >= 0).view(n_test, -1).float()
        per_image = (correct * mask).sum(1) / mask.sum(1).clamp(min=1)
        majority = int(torch.bincount(ytr[keep_tr], minlength=classes[label]).argmax())
        out[label] = {"top1": float((correct * mask).sum() / mask.sum()),
                      "chance": float((yte[keep_te] == majority).float().mean()),
                      "patches_train": int(keep_tr.sum()), "patches_test": int(keep_te.sum()),
                      "per_image": per_image[mask.sum(1) > 0].tolist()}
    return out


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 2000, seed: int = 0) -> Dict[str, float]:
    """``mean(a) - mean(b)`` and its 95 % percentile interval, resampling the paired items ``(a[i], b[i])``."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two equal-length 1-D sequences; got shapes {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(a.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi), "samples": samples}
