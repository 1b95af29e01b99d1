"""A supervised reference for the synthetic shapes benchmark: a small CNN trained for a fixed wall-clock budget.

Not a CLIP model: it sees the class labels directly, so it shows what a few minutes of CPU
training can reach on the classification task, i.e. whether the set is learnable and not
saturated at the study's budget.

    python benchmarks/synthetic_cnn.py --seconds 240 --size 32 --n-train 5000
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskclip.datasets.synthetic import SyntheticShapes


def tensors(split: str, n: int, size: int, label: str):
    """(images ``float [N, 3, S, S]`` in 0..1, labels ``[N]``, number of classes)."""
    ds = SyntheticShapes(split, size=size, n=n, label=label)
    samples = [ds[i] for i in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples])).permute(0, 3, 1, 2).float().div(255)
    return x, torch.tensor([s.meta["label"] for s in samples]), len(ds.classnames)


def block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2))


def small_cnn(classes: int) -> nn.Module:
    """Three conv-BN-ReLU blocks (16, 32, 64 channels), global average pooling, a linear classifier."""
    return nn.Sequential(block(3, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, classes))


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)])
    net.train()
    return float((pred == y).double().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=240)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--label", default="shape", choices=["shape", "colour_shape"])
    args = p.parse_args()

    x_train, y_train, classes = tensors("train", args.n_train, args.size, args.label)
    x_test, y_test, _ = tensors("test", args.n_test, args.size, args.label)
    torch.manual_seed(0)
    net = small_cnn(classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.05)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        idx = torch.randint(0, len(x_train), (128,))
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step} ({time.perf_counter() - start:.0f} s) loss {loss.item():.3f} "
                  f"test top1 {accuracy(net, x_test, y_test):.3f}", flush=True)
    print(f"{args.label} {args.size}px, {args.n_train} train images, {args.seconds:.0f} s: {step} steps "
          f"({step * 128 / args.n_train:.1f} epochs), test top1 {accuracy(net, x_test, y_test):.3f}, "
          f"chance {1 / classes:.3f}")


if __name__ == "__main__":
    main()
