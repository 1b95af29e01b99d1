"""The synthetic-shapes study: every recipe trained at the same budget on this CPU, evaluated by one suite.

    python benchmarks/shapes_study.py                      # all recipes, writes docs/results.md + docs/results.png
    python benchmarks/shapes_study.py --steps 100 --out /tmp/study --no-docs      # a quick look
    python benchmarks/shapes_study.py --bundle             # also ship the best MaskCLIP model as tiny-shapes

Question: does masked self-distillation (MaskCLIP) improve dense segmentation and linear probing
over CLIP at small scale, as the paper reports at large scale? Every run uses the ``shapes``
preset (a 32 px ViT, patch 4), the same training shards (``synthetic:train``, 32 px), the same
number of steps and batch size, and the same seed. The study is resumable: a finished run
(its ``model/`` folder exists) is evaluated, not retrained.

Evaluation (``maskclip.eval``; test images never seen in training):
- zero-shot classification on ``synthetic:test`` (1000 images): the shape of the most visible
  object (8 classes), and its colour and shape (80 classes), with the benchmark's templates;
- image-text retrieval on the same 1000 images and their 5000 captions;
- linear probe: frozen image embeddings of 2000 ``synthetic:train`` images, weight decay chosen on
  500 ``synthetic:val`` images, scored on the test images (8 shape classes);
- zero-shot segmentation on 200 test images at 32 px (an 8 x 8 patch grid), each dense method,
  mIoU over the 8 shapes with background pixels ignored (the "foreground" protocol).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ["clip", "slip", "clip_mae", "maskclip", "maskclip_cosine", "rils"]
VARIANTS = {"maskclip_cosine": ("maskclip", {"maskclip.loss": "cosine"})}
METHODS = ["vanilla", "maskclip", "sclip", "clearclip"]


def write_data(out: Path, n: int, seed: int) -> list:
    from maskclip.datasets import SyntheticShapes, write_shards

    folder = out / "data"
    shards = sorted(folder.glob("*.tar"))
    if not shards:
        t0 = time.perf_counter()
        write_shards(SyntheticShapes("train", size=32, n=n, seed=seed), folder, shards=16)
        shards = sorted(folder.glob("*.tar"))
        print(f"wrote {n} training samples in {len(shards)} shards ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [str(p) for p in shards]


def train_run(name: str, shards: list, out: Path, args) -> dict:
    from maskclip.train import TrainConfig, train

    recipe, extra = VARIANTS.get(name, (name, {}))
    run = out / name
    timing = run / "timing.json"
    if (run / "model").is_dir() and timing.is_file():
        return json.loads(timing.read_text())
    cfg = TrainConfig.from_preset("shapes", recipe, {
        "data": shards, "samples_per_epoch": args.n_train, "steps": args.steps, "seed": args.seed,
        "progress": False, "workers": args.workers, **extra})
    resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").iterdir())
    t0 = time.perf_counter()
    summary = train(cfg, run, resume=resume)
    record = {"recipe": name, "train_seconds": round(time.perf_counter() - t0, 1), "steps": summary["steps"],
              "batch_size": cfg.batch_size, "skipped": summary["skipped"], "nonfinite": summary["nonfinite"]}
    timing.write_text(json.dumps(record, indent=1))
    return record


def evaluate(model_dir: Path, args) -> dict:
    import maskclip
    from maskclip.eval import (image_text_retrieval, linear_probe_classification, zero_shot_classification,
                               zero_shot_segmentation)

    torch.manual_seed(0)
    model = maskclip.load(model_dir)
    test = f"synthetic:test,n={args.n_test},size=32"
    zs = zero_shot_classification(model, test, progress=False)
    zs80 = zero_shot_classification(model, test + ",label=colour_shape", progress=False)
    ret = image_text_retrieval(model, test, progress=False)
    probe = linear_probe_classification(model, "synthetic:train,n=2000,size=32", test, val="synthetic:val,n=500,size=32",
                                        progress=False)
    seg = zero_shot_segmentation(model, f"synthetic:test,n={args.n_seg},size=32", methods=METHODS, progress=False)
    return {
        "zeroshot_shape_top1": zs["top1"], "zeroshot_colour_shape_top1": zs80["top1"],
        "i2t_R@1": ret["image_to_text_R@1"], "t2i_R@1": ret["text_to_image_R@1"],
        "probe_top1": probe["top1"],
        **{f"miou_{m}": seg["methods"][m]["foreground"]["miou"] for m in METHODS},
        **{f"pixacc_{m}": seg["methods"][m]["foreground"]["pixel_accuracy"] for m in METHODS},
        "protocols": {"segmentation": seg["protocol"], "probe": probe["protocol"], "retrieval": ret["protocol"]},
    }


def markdown(rows: list, meta: dict) -> str:
    cols = [("train (s)", "train_seconds", "{:.0f}"), ("0-shot shape", "zeroshot_shape_top1", "{:.3f}"),
            ("0-shot colour+shape", "zeroshot_colour_shape_top1", "{:.3f}"), ("I2T R@1", "i2t_R@1", "{:.3f}"),
            ("T2I R@1", "t2i_R@1", "{:.3f}"), ("linear probe", "probe_top1", "{:.3f}"),
            *[(f"mIoU {m}", f"miou_{m}", "{:.3f}") for m in METHODS]]
    lines = ["| recipe | " + " | ".join(c[0] for c in cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | " + " | ".join(c[2].format(r[c[1]]) for c in cols) + " |")
    chance = ("| chance | | 0.125 | 0.0125 | 0.001 | 0.001 | 0.159 (majority) | | | | |")
    return "\n".join(lines + [chance])


MARK_START, MARK_END = "<!-- study-table -->", "<!-- /study-table -->"


def write_results_doc(path: Path, table: str, meta: dict) -> None:
    """Put the table between the markers of ``docs/results.md``, keeping the written analysis around it."""
    block = (f"{MARK_START}\n{table}\n\nMeasured {meta['date']} with `{meta['command']}` (torch {meta['torch']}, "
             f"{meta['cpus']} CPU cores, seed {meta['seed']}, {meta['steps']} steps of batch 128 on "
             f"{meta['n_train']} training images).\n{MARK_END}")
    text = path.read_text(encoding="utf-8") if path.exists() else f"# The synthetic-shapes study\n\n{MARK_START}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    path.write_text(head + block + tail, encoding="utf-8")


def plot(rows: list, path: Path) -> None:
    """Grouped bars of the dense and probe metrics per recipe, drawn with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    metrics = [("linear probe", "probe_top1"), ("0-shot shape", "zeroshot_shape_top1"),
               ("mIoU maskclip", "miou_maskclip"), ("mIoU clearclip", "miou_clearclip")]
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
    W, H, left, bottom, top = 900, 420, 60, 60, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    plot_h = H - bottom - top
    group_w = (W - left - 20) / len(metrics)
    bar_w = group_w * 0.8 / len(rows)
    for tick in range(0, 11, 2):
        y = H - bottom - plot_h * tick / 10
        d.line([(left, y), (W - 20, y)], fill=(225, 225, 225))
        d.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    for g, (label, key) in enumerate(metrics):
        x0 = left + g * group_w + group_w * 0.1
        for i, r in enumerate(rows):
            v = max(0.0, min(1.0, r[key]))
            x = x0 + i * bar_w
            d.rectangle([x, H - bottom - plot_h * v, x + bar_w - 2, H - bottom], fill=colours[i % len(colours)])
        d.text((x0, H - bottom + 8), label, fill="black")
    for i, r in enumerate(rows):
        d.rectangle([left + i * 140, 10, left + i * 140 + 12, 22], fill=colours[i % len(colours)])
        d.text((left + i * 140 + 16, 10), r["recipe"], fill="black")
    img.save(path)


def bundle(best: str, out: Path) -> Path:
    """Copy the chosen run's model, stored in fp16, into the package as tiny-shapes."""
    import maskclip
    from maskclip.serialization import write_safetensors

    model = maskclip.load(out / best / "model")
    model.config.name = "tiny-shapes"
    target = ROOT / "maskclip" / "weights" / "tiny-shapes"
    target.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.half() for k, v in model.state_dict().items()}, target / "model.safetensors",
                      metadata={"source": f"benchmarks/shapes_study.py, run {best}"})
    model.config.to_json(target / "config.json")
    return target


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-seg", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "runs" / "shapes-study"))
    p.add_argument("--no-docs", action="store_true", help="do not write docs/results.md and docs/results.png")
    p.add_argument("--bundle", action="store_true", help="ship the best MaskCLIP run as the tiny-shapes model")
    args = p.parse_args()
    out = Path(args.out)
    shards = write_data(out, args.n_train, args.seed)
    rows = []
    for name in args.recipes:
        record = train_run(name, shards, out, args)
        print(f"{name}: trained {record['steps']} steps in {record['train_seconds']} s", flush=True)
        t0 = time.perf_counter()
        record.update(evaluate(out / name / "model", args))
        record["eval_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(record)
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float)), flush=True)
    meta = {"steps": args.steps, "n_train": args.n_train, "seed": args.seed, "torch": torch.__version__,
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(markdown(rows, meta))
    if not args.no_docs:
        plot(rows, ROOT / "docs" / "results.png")
        write_results_doc(ROOT / "docs" / "results.md", markdown(rows, meta), meta)
    if args.bundle:
        candidates = [r for r in rows if r["recipe"].startswith("maskclip")]
        best = max(candidates, key=lambda r: r["zeroshot_shape_top1"] + r["miou_maskclip"] + r["probe_top1"])
        print(f"bundled {best['recipe']} as tiny-shapes in {bundle(best['recipe'], out)}")


if __name__ == "__main__":
    main()
