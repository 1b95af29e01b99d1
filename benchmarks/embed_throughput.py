"""Images/s of ``maskclip embed --data`` against a plain open_clip loop, one process, the same weights.

    python benchmarks/embed_throughput.py                           # ViT-B/16, 256 JPEGs, 2 workers
    python benchmarks/embed_throughput.py --arch tiny --images 64   # a quick sanity run

The contenders read the same folder of JPEGs (``--size`` px, the sizes of web photos) with the
same number of DataLoader worker processes and the same batch size:

- ``open_clip``: a ``Dataset`` opening each file with PIL and applying open_clip's own eval
  transform, a ``DataLoader``, then ``model.encode_image`` under ``torch.no_grad``, normalised
  and kept as fp16 numpy arrays: the loop people write by hand;
- ``maskclip embed``: ``maskclip.embed.embed_collection`` on the same model weights loaded by
  maskclip from open_clip's layout, writing its shards (npy + metadata) into a fresh folder.

Before timing, both embeddings are checked to agree (fp16 rounding). Contenders alternate
within each repeat (``timing.alternate``); the median over repeats is reported. The goal is
>= 1.8x. On a shared machine the numbers are rough: the load average is printed with them.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import factories  # noqa: E402
import timing  # noqa: E402

import maskclip  # noqa: E402
from maskclip.embed import embed_collection  # noqa: E402


class OpenClipFiles(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return self.transform(im)


def open_clip_loop(model, transform, paths, batch_size: int, workers: int) -> np.ndarray:
    loader = torch.utils.data.DataLoader(OpenClipFiles(paths, transform), batch_size=batch_size, num_workers=workers)
    out = []
    with torch.no_grad():
        for x in loader:
            out.append(F.normalize(model.encode_image(x), dim=-1).half().numpy())
    return np.concatenate(out)


def maskclip_embed(model, folder: Path, batch_size: int, workers: int) -> np.ndarray:
    out = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    embed_collection(model, folder, out, shard_size=10 ** 9, batch_size=batch_size, workers=workers,
                     metadata_format="jsonl", progress=False)
    return np.load(out / "img_emb" / "img_emb_0.npy")


def write_images(folder: Path, n: int, size: int) -> list:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = size, size * 3 // 4
        pixels = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)  # smooth-ish content, JPEG-friendly
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR).save(path, quality=90)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vit-b-16", choices=["vit-b-16", "tiny"])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--size", type=int, default=400, help="width of the JPEGs in px (height 3/4 of it)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)

    import open_clip

    arch = factories.VIT_B_16 if args.arch == "vit-b-16" else factories.TINY
    work = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    cfg = factories.open_clip_model_cfg(arch)
    oc = factories.random_open_clip(cfg)
    model = maskclip.load(factories.write_open_clip_folder(work / "open_clip", oc, cfg))
    transform = open_clip.image_transform(arch.image_size, is_train=False)
    paths = write_images(work / "images", args.images, args.size)

    a = open_clip_loop(oc, transform, paths, args.batch_size, args.workers).astype(np.float32)
    b = maskclip_embed(model, work / "images", args.batch_size, args.workers).astype(np.float32)
    diff = float(np.abs(a - b).max())
    if diff > 2e-3:
        raise SystemExit(f"the contenders disagree: max abs diff {diff:.2e}")

    before = timing.loadavg()
    results = timing.alternate({
        "open_clip DataLoader loop": lambda: open_clip_loop(oc, transform, paths, args.batch_size, args.workers),
        "maskclip embed": lambda: maskclip_embed(model, work / "images", args.batch_size, args.workers),
    }, repeats=args.repeats, warmup=0)
    base = results["open_clip DataLoader loop"].median
    rows = []
    print(f"embed throughput: {arch.name}, {args.images} JPEGs of {args.size}x{args.size * 3 // 4}, batch "
          f"{args.batch_size}, {args.workers} workers, {args.repeats} repeats, "
          f"torch threads {torch.get_num_threads()}; "
          f"load average {before} before, {timing.loadavg()} after; max abs diff {diff:.1e}")
    print("| contender | median s | min-max s | images/s | vs open_clip |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        row = {"contender": name, "median_s": round(r.median, 3), "min_s": round(min(r.times), 3),
               "max_s": round(max(r.times), 3), "images_per_s": round(args.images / r.median, 1),
               "speedup": round(base / r.median, 2)}
        rows.append(row)
        print(f"| {name} | {row['median_s']} | {row['min_s']}-{row['max_s']} | {row['images_per_s']} | "
              f"{row['speedup']:.2f}x |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "max_abs_diff": diff, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
