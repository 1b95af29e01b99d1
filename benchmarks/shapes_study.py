"""The synthetic-shapes study: every recipe trained at the same budget, evaluated by one suite, resumable.

    python benchmarks/shapes_study.py                              # every run (see RUNS), in parts if need be
    python benchmarks/shapes_study.py --max-runs 1                 # train and evaluate one unfinished run
    python benchmarks/shapes_study.py --steps 2 --n-train 64 --n-test 16 --n-seg 8 --n-probe 16 --n-val 8 \\
        --n-patch 8 --seeds 2 --batch 16 --out /tmp/study --no-docs   # a quick look
    python benchmarks/shapes_study.py --bundle                     # also ship the best MaskCLIP model as tiny-shapes

Question: does masked self-distillation (MaskCLIP) improve dense segmentation and linear probing
over CLIP at small scale, as the paper reports at large scale? Runs: CLIP, MaskCLIP (soft
prototype loss) and MaskCLIP with the cosine loss with ``--seeds`` seeds each (default 3);
SLIP, CLIP+MAE and RILS with one. Every run uses the same preset (``shapes64``: 64 px, patch 8),
the same training data (``synthetic:train,version=2``, drawn once into a pool cached in
``<out>/cache``) and the same number of steps.

Resumable: a run's folder ``<out>/<name>`` holds its checkpoints (an interrupted run resumes
exactly) and, once it is trained and evaluated, ``results.json``; a rerun skips runs that have
it. ``--max-runs`` bounds how many runs one invocation trains, so the study runs in parts.

Evaluation (``maskclip.eval`` and ``patch_probe``; test images never seen in training):
- zero-shot classification of ``--n-test`` ``synthetic:test`` images (1-3 objects, occlusion,
  textured backgrounds): the main object's shape (8 classes) and colour + shape (80);
- image-text retrieval R@1 both ways on those images and their captions;
- linear probe of the pooled embedding: ``--n-probe`` training images, weight decay chosen on
  ``--n-val`` ``synthetic:val`` images, scored on the test images (8 shape classes);
- per-patch linear probes on frozen patch features (shape, colour, object vs background);
- zero-shot segmentation mIoU per dense method on ``--n-seg`` test images, for shape labels
  and for colour labels (background ignored: the "foreground" protocol).
The summary gives mean +- std over seeds per recipe and, for each MaskCLIP variant against CLIP,
a paired bootstrap 95 % interval of the difference (test items resampled together, each item's
score averaged over seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from patch_probe import paired_bootstrap, patch_probe  # noqa: E402  (a sibling script, not a package)

RECIPES = ["clip", "maskclip", "maskclip_cosine", "slip", "clip_mae", "rils"]
SEEDED = ("clip", "maskclip", "maskclip_cosine")  # the recipes the question compares: several seeds
VARIANTS = {"maskclip_cosine": ("maskclip", {"maskclip.loss": "cosine"})}
METHODS = ["vanilla", "maskclip", "sclip", "clearclip"]
SCALARS = ["train_seconds", "zeroshot_shape_top1", "zeroshot_colour_shape_top1", "i2t_R@1", "t2i_R@1", "probe_top1",
           "patch_shape_top1", "patch_colour_top1", "patch_object_top1",
           *[f"miou_shape_{m}" for m in METHODS], *[f"miou_colour_{m}" for m in METHODS]]


def runs(args) -> list:
    """``[(name, recipe, seed)]`` in the order they are trained: the seeded comparison first, seed by seed."""
    out = []
    for seed in range(args.seeds):
        for r in args.recipes:
            if r in SEEDED or seed == 0:
                out.append((f"{r}-s{seed}", r, seed))
    return out


def specs(args) -> dict:
    v = f"version={args.version}"
    return {"train": f"synthetic:train,{v},n={args.n_train},cache={Path(args.out) / 'cache'}",
            "test": f"synthetic:test,{v},n={args.n_test}", "seg": f"synthetic:test,{v},n={args.n_seg}",
            "probe_train": f"synthetic:train,{v},n={args.n_probe}", "val": f"synthetic:val,{v},n={args.n_val}"}


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def train_run(name: str, recipe_name: str, seed: int, args) -> dict:
    from maskclip.train import TrainConfig, train
    from maskclip.train import checkpoint as ckpt

    recipe, extra = VARIANTS.get(recipe_name, (recipe_name, {}))
    run = Path(args.out) / name
    cfg = TrainConfig.from_preset(args.preset, recipe, {
        "data": [specs(args)["train"]], "steps": args.steps, "seed": seed, "progress": False,
        "workers": args.workers, **({"batch_size": args.batch} if args.batch else {}), **extra})
    found = ckpt.latest(run / "checkpoints")
    t0 = time.perf_counter()
    summary = train(cfg, run, resume=found is not None)
    seconds = time.perf_counter() - t0
    timing = run / "timing.json"  # train time summed over the invocations that trained this run
    before = json.loads(timing.read_text())["train_seconds"] if timing.is_file() and found is not None else 0.0
    record = {"recipe": recipe_name, "seed": seed, "train_seconds": round(before + seconds, 1),
              "steps": summary["steps"], "batch_size": cfg.batch_size, "skipped": summary["skipped"],
              "nonfinite": summary["nonfinite"]}
    write_json(timing, record)
    return record


def colour_masks(ds):
    """An ``EvalSet`` of ``ds``'s images whose masks hold ``1 + colour index`` (0: background)."""
    from maskclip.datasets.render import render_scene
    from maskclip.datasets.synthetic import COLOURS
    from maskclip.eval.datasets import EvalSet, Record

    def get(i: int) -> Record:
        scene = ds.scene(i)
        _, objmap = render_scene(scene, ds.height, ds.width)
        lut = np.array([0] + [1 + COLOURS.index(o.colour) for o in scene.objects], dtype=np.uint8)
        return Record(ds[i].image, mask=lut[objmap])
    return EvalSet(f"{ds!r} (colour masks)", len(ds), get, segmentation_classes=["background", *COLOURS],
                   templates=ds.templates)


def zero_shot_per_image(model, ds, label: str) -> list:
    """1.0 / 0.0 per image of ``ds``: is the main object's ``label`` (shape or colour_shape) the top class?"""
    from maskclip.datasets import classnames

    names = classnames(label)
    targets = []
    for i in range(len(ds)):
        main = max(ds[i].meta["objects"], key=lambda o: o["visible_px"])
        targets.append(names.index(main["shape"] if label == "shape" else f"{main['colour']} {main['shape']}"))
    with torch.no_grad():
        classifier = model.zero_shot_classifier(names, ds.templates)
        feats = torch.cat([model.encode_image([ds[j].image for j in range(i, min(i + 128, len(ds)))], normalize=True)
                           for i in range(0, len(ds), 128)])
    return ((feats @ classifier).argmax(-1) == torch.tensor(targets)).float().tolist()


def evaluate(model_dir: Path, args) -> dict:
    import maskclip
    from maskclip.datasets import open_synthetic, parse_spec
    from maskclip.eval import image_text_retrieval, linear_probe_classification, zero_shot_segmentation

    torch.manual_seed(0)
    model = maskclip.load(model_dir).eval()
    size = model.config.preprocess.image_size
    s = specs(args)
    test, seg = (open_synthetic(parse_spec(s[k]), size) for k in ("test", "seg"))
    zs = zero_shot_per_image(model, test, "shape")
    zs80 = zero_shot_per_image(model, test, "colour_shape")
    ret = image_text_retrieval(model, s["test"], progress=False)
    probe = linear_probe_classification(model, s["probe_train"], s["test"], val=s["val"], progress=False)
    patches = patch_probe(model, open_synthetic(parse_spec(s["probe_train"]), size), test,
                          min(args.n_patch, args.n_probe), min(args.n_patch, args.n_test))
    seg_shape = zero_shot_segmentation(model, s["seg"], methods=METHODS, progress=False)
    seg_colour = zero_shot_segmentation(model, colour_masks(seg), methods=METHODS, progress=False)
    return {
        "zeroshot_shape_top1": float(np.mean(zs)), "zeroshot_colour_shape_top1": float(np.mean(zs80)),
        "i2t_R@1": ret["image_to_text_R@1"], "t2i_R@1": ret["text_to_image_R@1"], "probe_top1": probe["top1"],
        **{f"patch_{k}_top1": v["top1"] for k, v in patches.items()},
        **{f"patch_{k}_chance": v["chance"] for k, v in patches.items()},
        **{f"miou_shape_{m}": seg_shape["methods"][m]["foreground"]["miou"] for m in METHODS},
        **{f"miou_colour_{m}": seg_colour["methods"][m]["foreground"]["miou"] for m in METHODS},
        "per_image": {"zeroshot_shape": zs, "zeroshot_colour_shape": zs80,
                      **{f"patch_{k}": v["per_image"] for k, v in patches.items()}},
        "protocols": {"segmentation": seg_shape["protocol"], "probe": probe["protocol"], "retrieval": ret["protocol"]},
    }


def summarise(results: list) -> dict:
    """Mean +- std over seeds per recipe; paired bootstrap of each MaskCLIP variant against CLIP."""
    by_recipe = {}
    for r in results:
        by_recipe.setdefault(r["recipe"], []).append(r)
    table = {}
    for recipe, rows in by_recipe.items():
        table[recipe] = {"seeds": [r["seed"] for r in rows],
                         **{k: {"mean": float(np.mean([r[k] for r in rows])), "std": float(np.std([r[k] for r in rows]))}
                            for k in SCALARS}}
    intervals = {}
    clip = by_recipe.get("clip", [])
    for variant in ("maskclip", "maskclip_cosine"):
        rows = by_recipe.get(variant, [])
        seeds = sorted({r["seed"] for r in rows} & {r["seed"] for r in clip})
        if not seeds:
            continue
        for metric in ("zeroshot_shape", "patch_shape", "patch_colour", "patch_object"):
            a = _seed_mean([r for r in rows if r["seed"] in seeds], metric)
            b = _seed_mean([r for r in clip if r["seed"] in seeds], metric)
            if a is not None and b is not None and len(a) == len(b):
                intervals[f"{variant}-clip/{metric}"] = {**paired_bootstrap(a, b), "seeds": seeds}
    return {"table": table, "intervals": intervals}


def _seed_mean(rows: list, metric: str):
    arrays = [r["per_image"][metric] for r in rows]
    if not arrays or len({len(a) for a in arrays}) != 1:
        return None
    return np.mean(np.asarray(arrays), axis=0)


def markdown(summary: dict) -> str:
    cols = [("train (s)", "train_seconds", "{:.0f}"), ("0-shot shape", "zeroshot_shape_top1", "{:.3f}"),
            ("0-shot colour+shape", "zeroshot_colour_shape_top1", "{:.3f}"), ("I2T R@1", "i2t_R@1", "{:.3f}"),
            ("T2I R@1", "t2i_R@1", "{:.3f}"), ("linear probe", "probe_top1", "{:.3f}"),
            ("patch shape", "patch_shape_top1", "{:.3f}"), ("patch colour", "patch_colour_top1", "{:.3f}"),
            ("patch object", "patch_object_top1", "{:.3f}"),
            *[(f"mIoU shape {m}", f"miou_shape_{m}", "{:.3f}") for m in METHODS],
            *[(f"mIoU colour {m}", f"miou_colour_{m}", "{:.3f}") for m in METHODS]]
    lines = ["| recipe | seeds | " + " | ".join(c[0] for c in cols) + " |", "| --- " * (len(cols) + 2) + "|"]
    for recipe, row in summary["table"].items():
        cells = []
        for _, key, fmt in cols:
            m, sd = row[key]["mean"], row[key]["std"]
            cells.append(fmt.format(m) + (f" +- {sd:.3f}" if len(row["seeds"]) > 1 and key != "train_seconds" else ""))
        lines.append(f"| {recipe} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "| difference | mean | 95 % interval (paired bootstrap) | seeds |", "| --- | --- | --- | --- |"]
    for name, ci in summary["intervals"].items():
        lines.append(f"| {name} | {ci['diff']:+.3f} | [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}] | {len(ci['seeds'])} |")
    return "\n".join(lines)


MARK_START, MARK_END = "<!-- study-table -->", "<!-- /study-table -->"


def write_results_doc(path: Path, table: str, meta: dict) -> None:
    """Put the table between the markers of ``docs/results.md``, keeping the written analysis around it."""
    block = (f"{MARK_START}\n{table}\n\nMeasured {meta['date']} with `{meta['command']}` (torch {meta['torch']}, "
             f"{meta['cpus']} CPU cores, preset {meta['preset']}, {meta['steps']} steps, {meta['n_train']} training "
             f"images, {meta['runs']} runs, {meta['train_seconds']:.0f} s of training in all).\n{MARK_END}")
    text = path.read_text(encoding="utf-8") if path.exists() else f"# The synthetic-shapes study\n\n{MARK_START}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    path.write_text(head + block + tail, encoding="utf-8")


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
    p.add_argument("--seeds", type=int, default=3, help="seeds of CLIP and the MaskCLIP variants (others: 1)")
    p.add_argument("--preset", default="shapes64")
    p.add_argument("--version", type=int, default=2, help="synthetic generator version")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-seg", type=int, default=500)
    p.add_argument("--n-probe", type=int, default=2000, help="training images of the linear probes")
    p.add_argument("--n-val", type=int, default=500, help="validation images choosing the probe's weight decay")
    p.add_argument("--n-patch", type=int, default=500, help="images (train and test) of the per-patch probes")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--max-runs", type=int, default=0, help="train at most this many unfinished runs now (0: all)")
    p.add_argument("--out", default=str(ROOT / "runs" / "shapes-study"))
    p.add_argument("--no-docs", action="store_true", help="do not write docs/results.md")
    p.add_argument("--bundle", action="store_true", help="ship the best MaskCLIP run as the tiny-shapes model")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trained = 0
    results = []
    for name, recipe, seed in runs(args):
        path = out / name / "results.json"
        if not path.is_file():
            if args.max_runs and trained >= args.max_runs:
                continue
            record = train_run(name, recipe, seed, args)
            trained += 1
            print(f"{name}: trained {record['steps']} steps in {record['train_seconds']} s", flush=True)
            t0 = time.perf_counter()
            record.update(evaluate(out / name / "model", args))
            record["eval_seconds"] = round(time.perf_counter() - t0, 1)
            write_json(path, record)
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float)), flush=True)
        results.append(json.loads(path.read_text()))
    missing = len(runs(args)) - len(results)
    summary = summarise(results)
    meta = {"preset": args.preset, "version": args.version, "steps": args.steps, "n_train": args.n_train,
            "runs": len(results), "missing_runs": missing, "train_seconds": sum(r["train_seconds"] for r in results),
            "torch": torch.__version__, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(sys.argv)}
    write_json(out / "summary.json", {"meta": meta, **summary})
    table = markdown(summary)
    print(table)
    if missing:
        print(f"{missing} runs still to do: rerun the same command to continue", flush=True)
    elif not args.no_docs:
        write_results_doc(ROOT / "docs" / "results.md", table, meta)
    if args.bundle and not missing:
        candidates = [r for r in results if r["recipe"].startswith("maskclip")]
        best = max(candidates, key=lambda r: r["zeroshot_shape_top1"] + r["miou_shape_maskclip"] + r["probe_top1"])
        name = f"{best['recipe']}-s{best['seed']}"
        print(f"bundled {name} as tiny-shapes in {bundle(name, out)}")


if __name__ == "__main__":
    main()
