"""How hard is the synthetic shapes benchmark? Chance levels and model-free baselines.

Baselines are linear probes (the same sweep and refit as ``maskclip eval linear-probe``) on
features that need no training: raw pixels downsampled to k x k, and a joint RGB colour
histogram. A pretrained-free model that only matches these has learned nothing beyond pixels.

    python benchmarks/synthetic_difficulty.py --n-train 5000 --n-test 1000 --size 64 --out difficulty.json
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch

from maskclip.datasets.synthetic import SyntheticShapes
from maskclip.eval.linear_probe import probe


def pixels(image, k: int) -> np.ndarray:
    """Box-downsampled pixels, flattened: ``[k * k * 3]`` in 0..1."""
    return np.asarray(image.resize((k, k), resample=2), dtype=np.float32).reshape(-1) / 255  # 2 = BILINEAR


def colour_histogram(image, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram with ``bins`` levels per channel: ``[bins ** 3]``, fractions of the pixels."""
    q = (np.asarray(image, dtype=np.int64) * bins) // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    return np.bincount(codes.reshape(-1), minlength=bins ** 3).astype(np.float32) / codes.size


FEATURES = {"pixels 8x8": lambda im: pixels(im, 8), "pixels 16x16": lambda im: pixels(im, 16),
            "colour histogram 4^3": colour_histogram}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-val", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args()

    start = time.perf_counter()
    results = {"size": args.size, "n": {"train": args.n_train, "val": args.n_val, "test": args.n_test}, "tasks": {}}
    for label in ("shape", "colour_shape"):
        sets = {split: SyntheticShapes(split, size=args.size, n=n, label=label)
                for split, n in (("train", args.n_train), ("val", args.n_val), ("test", args.n_test))}
        data = {split: _features(ds) for split, ds in sets.items()}
        test_labels = data["test"][1].tolist()
        majority = Counter(test_labels).most_common(1)[0][1] / len(test_labels)
        row = {"classes": len(sets["train"].classnames), "chance_top1": 1 / len(sets["train"].classnames),
               "majority_top1": majority,
               "test_label_counts": dict(Counter(sets["test"].classnames[y] for y in test_labels))}
        for name in FEATURES:
            fit = {split: (feats[name], y) for split, (feats, y) in data.items()}
            r = probe(fit["train"], fit["val"], fit["test"], len(sets["train"].classnames))
            row[name] = {"top1": r["top1"], "top5": r.get("top5"), "mean_per_class_recall": r["mean_per_class_recall"],
                         "weight_decay": r["weight_decay"]}
            print(f"{label:<13} {name:<22} top1 {r['top1']:.3f}  top5 {r.get('top5', float('nan')):.3f}  "
                  f"mean per-class recall {r['mean_per_class_recall']:.3f}  (wd {r['weight_decay']:g})", flush=True)
        print(f"{label:<13} chance {row['chance_top1']:.3f}, majority class {majority:.3f}", flush=True)
        results["tasks"][label] = row
    results["retrieval_chance_R@1"] = 1 / args.n_test  # both ways: one image, or one of its 5 captions among 5 N
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(f"done in {results['seconds']} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


def _features(ds: SyntheticShapes):
    feats = {name: [] for name in FEATURES}
    labels = []
    for i in range(len(ds)):
        s = ds[i]
        for name, f in FEATURES.items():
            feats[name].append(f(s.image))
        labels.append(s.meta["label"])
    return {k: torch.from_numpy(np.stack(v)) for k, v in feats.items()}, torch.tensor(labels)


if __name__ == "__main__":
    main()
