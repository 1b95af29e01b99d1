"""Speed of the synthetic training data path: drawing one image, and the training stream's samples/s.

    python benchmarks/data_speed.py                   # 32 px (shapes) and 64 px (shapes64)
    python benchmarks/data_speed.py --n 256 --batches 2 --sizes 32   # a quick look

Compares, per model image size:
- ``draw``: ms to draw one ``synthetic:train`` image at that size, and at 48 px (what training
  drew before it used the model's size, then resized);
- ``stream``: samples/s of ``TrainStream`` (crop, resize, tensor, captions, tokenizer) in one
  process, reading the images drawn on the fly at 48 px (before) or from a ``SyntheticPool``
  at the model's size (now), and the one-off time to fill the pool.
Numbers are rough on a loaded machine; they are written to ``benchmarks/results/data_speed.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def draw_ms(size: int, n: int, version: int) -> float:
    from maskclip.datasets import SyntheticShapes

    ds = SyntheticShapes("train", size=size, n=n, version=version)
    ds[0]
    t = time.perf_counter()
    for i in range(n):
        ds[i]
    return 1000 * (time.perf_counter() - t) / n


def stream_rate(source, size: int, batch: int, batches: int) -> float:
    from maskclip.config import PreprocessConfig
    from maskclip.train.data import StreamSpec, TrainStream, make_loader

    stream = TrainStream(source, StreamSpec(batch, batches + 1, 0, context_length=32), PreprocessConfig(image_size=size),
                         (0.9, 1.0))
    it = iter(make_loader(stream, 0))
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--n", type=int, default=2048, help="samples drawn / pooled")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="processes that fill the pool")
    p.add_argument("--version", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_speed.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from maskclip.datasets import SyntheticShapes
    from maskclip.train.data import IndexedSource, SyntheticPool

    rows = []
    for size in args.sizes:
        row = {"size": size, "draw_ms": draw_ms(size, min(args.n, 200), args.version),
               "draw_ms_at_48": draw_ms(48, min(args.n, 200), args.version)}
        on_the_fly = SyntheticShapes("train", size=48, n=args.n, version=args.version)
        row["stream_before_samples_per_s"] = stream_rate(IndexedSource(args.n, on_the_fly.__getitem__), size,
                                                         args.batch, args.batches)
        t = time.perf_counter()
        pool = SyntheticPool(SyntheticShapes("train", size=size, n=args.n, version=args.version), args.workers)
        row["pool_fill_s"] = time.perf_counter() - t
        row["stream_pooled_samples_per_s"] = stream_rate(IndexedSource(args.n, pool.__getitem__), size, args.batch,
                                                         args.batches)
        rows.append(row)
        print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    meta = {"n": args.n, "batch": args.batch, "batches": args.batches, "workers": args.workers,
            "version": args.version, "threads": args.threads, "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
