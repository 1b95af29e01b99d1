"""Can the study's image tower learn shape at all? Supervised shape classification, per architecture.

    python benchmarks/shape_learnability.py --arch vit cnn --steps 600
    python benchmarks/shape_learnability.py --arch vit-hmlp vit-conv --steps 600 --threads 1
    python benchmarks/shape_learnability.py --report

A diagnostic for the shape study (docs/results.md): contrastive training can only teach shape if the
image tower can learn it from labels in the same budget. Each architecture is trained with
cross-entropy on the shape of the main object (8 classes) of generator-version-2 training images at
64 px, and top-1 on 500 ``synthetic:test`` images (1-3 objects, occlusion, textured backgrounds) is
recorded every ``--eval-every`` steps.

Architectures: ``vit`` is the ``shapes64`` preset's image tower as it is (patch 8, learned positions,
class token); ``vit-sincos-mean`` the same with fixed 2-D sin-cos positions and mean pooling;
``vit-hmlp`` replaces the 8 x 8 patch projection by a non-overlapping two-layer stem (4 x 4 then 2 x 2
convolutions with a per-position LayerNorm and GELU between, after Touvron et al. 2022's hMLP: each
token still sees only its own patch, so token masking stays exact); ``vit-conv`` by an overlapping
stem of three 3 x 3 stride-2 convolutions (``VisionConfig.stem="conv"``, ``maskclip.stem``; Xiao et al.
2021; tokens see their neighbours' pixels);
``cnn`` is benchmarks/synthetic_cnn.py's small CNN, a reference that is not a ViT.

Each run's curve is rewritten to ``benchmarks/results/shape_learnability/<name>.json`` after every
evaluation; a finished run is skipped when the command is run again. The rendered images are cached
in ``--cache`` (default ``runs/shape_learnability``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_cnn import accuracy, small_cnn  # noqa: E402  (the same CNN and top-1 as the CNN reference)
RESULTS = ROOT / "benchmarks" / "results" / "shape_learnability"
ARCHS = ("vit", "vit-sincos-mean", "vit-hmlp", "vit-conv", "cnn")
SIZE = 64


class Tower(nn.Module):
    """The preset's image tower with a replaceable patch stem, and a linear head on its embedding."""

    def __init__(self, arch: str):
        super().__init__()
        from maskclip import DualEncoder
        from maskclip.config import architecture_config
        from maskclip.stem import ChannelNorm

        cfg = architecture_config("shapes")
        cfg.vision.image_size, cfg.vision.patch_size, cfg.preprocess.image_size = SIZE, 8, SIZE
        if arch == "vit-sincos-mean":
            cfg.vision.pos_embed, cfg.vision.pool = "sincos", "mean"
        if arch == "vit-conv":
            cfg.vision.stem = "conv"  # maskclip.stem.ConvStem
        self.visual = DualEncoder(cfg).visual
        w = cfg.vision.width
        if arch == "vit-hmlp":
            self.visual.conv1 = nn.Sequential(nn.Conv2d(3, w // 4, 4, 4), ChannelNorm(w // 4), nn.GELU(),
                                              nn.Conv2d(w // 4, w, 2, 2))
        self.head = nn.Linear(cfg.embed_dim, 8)
        self.mean = torch.tensor(cfg.preprocess.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.preprocess.std).view(1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual((x - self.mean) / self.std))


def images(split: str, n: int, objects, cache: Path):
    """``(float [N, 3, 64, 64] in 0..1, main-object shape [N])``, rendered once and cached."""
    from maskclip.datasets.synthetic import SyntheticShapes

    kw = {} if objects is None else {"objects": objects}
    name = f"{split}-v2-{n}-{'default' if objects is None else '%d-%d' % tuple(objects)}.pt"
    path = cache / name
    if path.exists():
        return torch.load(path)
    ds = SyntheticShapes(split, size=SIZE, n=n, version=2, **kw)
    samples = [ds[i] for i in range(n)]
    x = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples])).permute(0, 3, 1, 2).float().div(255)
    y = torch.tensor([s.meta["label"] for s in samples])
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save((x, y), tmp)
    tmp.replace(path)
    return x, y


def run(args, arch: str) -> dict:
    objects = None if args.objects == "default" else tuple(int(v) for v in args.objects.split("-"))
    name = f"{arch}-{args.objects}-lr{args.lr:g}-n{args.n_train}-{args.steps}steps-s{args.seed}"
    results = Path(args.results)
    out = results / f"{name}.json"
    if out.exists() and json.loads(out.read_text()).get("finished"):
        print(f"{name}: finished earlier, skipped", flush=True)
        return json.loads(out.read_text())
    x_train, y_train = images("train", args.n_train, objects, Path(args.cache))
    x_test, y_test = images("test", args.n_test, None, Path(args.cache))
    torch.manual_seed(args.seed)
    net = small_cnn(8) if arch == "cnn" else Tower(arch)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.05)
    record = {"name": name, "arch": arch, "objects": args.objects, "lr": args.lr, "batch": args.batch,
              "warmup": args.warmup, "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed,
              "threads": torch.get_num_threads(), "curve": [], "finished": False}
    start, window = time.perf_counter(), []
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / args.warmup)
        idx = torch.randint(0, len(x_train), (args.batch,))
        loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            point = {"step": step, "loss": round(float(np.mean(window)), 4),
                     "test_top1": round(accuracy(net, x_test, y_test), 4),
                     "seconds": round(time.perf_counter() - start, 1)}
            window = []
            record["curve"].append(point)
            record["finished"] = step == args.steps
            results.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(out)
            print(f"{name}: step {step} loss {point['loss']:.3f} test top1 {point['test_top1']:.3f} "
                  f"({point['seconds']:.0f} s)", flush=True)
    return record


def report(results: Path) -> str:
    lines = []
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        curve = ", ".join(f"{p['step']}: {p['test_top1']:.2f}" for p in r["curve"])
        lines.append(f"- **{r['name']}** ({'finished' if r['finished'] else 'unfinished'}; "
                     f"{r['curve'][-1]['seconds'] if r['curve'] else 0:.0f} s): test top-1 by step {curve}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", choices=ARCHS, default=["vit", "cnn"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--objects", default="1-1", help="training objects per image, 'A-B' or 'default' (1-2)")
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(ROOT / "runs" / "shape_learnability"))
    p.add_argument("--results", default=str(RESULTS), help="folder of the curves' JSON files")
    p.add_argument("--report", action="store_true", help="print every stored curve and exit")
    args = p.parse_args(argv)
    if args.report:
        print(report(Path(args.results)))
        return
    torch.set_num_threads(args.threads)
    for arch in args.arch:
        run(args, arch)


if __name__ == "__main__":
    main()
