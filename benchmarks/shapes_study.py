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

from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from patch_probe import paired_bootstrap, patch_probe  # noqa: E402  (a sibling script, not a package)

RESULTS = ROOT / "benchmarks" / "results" / "shapes_study"
STUDY_PRESET, STUDY_VERSION, STUDY_STEPS = "shapes64-conv", 3, 2000  # the setting chosen by the probes (docs/results.md)
RECIPES = ["clip", "maskclip", "maskclip_cosine", "slip", "clip_mae", "rils"]
SEEDED = ("clip", "maskclip", "maskclip_cosine")  # the recipes the question compares: several seeds
VARIANTS = {"maskclip_cosine": ("maskclip", {"maskclip.loss": "cosine"})}
METHODS = ["vanilla", "maskclip", "sclip", "clearclip"]
SCALARS = ["train_seconds", "zeroshot_shape_top1", "zeroshot_shape_single_top1", "zeroshot_colour_shape_top1", "i2t_R@1", "t2i_R@1", "probe_top1",
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


def status(args) -> str:
    """A markdown table of every run of the study: finished (its train time and zero-shot shape), in
    progress (the newest checkpoint's step and the train time so far) or not started."""
    from maskclip.train import checkpoint as ckpt

    lines = ["| run | state | step | train s | zero-shot shape |", "| --- | --- | --- | --- | --- |"]
    done = left = 0.0
    for name, _, _ in runs(args):
        result, run = Path(args.results) / f"{name}.json", Path(args.out) / name
        if result.is_file():
            r = json.loads(result.read_text())
            done += 1
            lines.append(f"| {name} | finished | {r['steps']} | {r['train_seconds']:.0f} | "
                         f"{r['zeroshot_shape_top1']:.3f} |")
            continue
        found = ckpt.latest(run / "checkpoints")
        timing = run / "timing.json"
        seconds = json.loads(timing.read_text())["train_seconds"] if timing.is_file() and found else None
        left += 1
        if found is None:
            lines.append(f"| {name} | not started | 0 | | |")
        else:
            step = int(found.name.split("_")[1])
            lines.append(f"| {name} | in progress | {step} of {args.steps} | "
                         f"{'' if seconds is None else f'{seconds:.0f}'} | |")
    lines.append(f"\n{done:.0f} of {done + left:.0f} runs finished; results in {args.results}, "
                 f"work folders in {args.out}")
    return "\n".join(lines)


def specs(args) -> dict:
    v = f"version={args.version}"
    return {"train": f"synthetic:train,{v},n={args.n_train},cache={Path(args.out) / 'cache'}",
            "test": f"synthetic:test,{v},n={args.n_test}", "seg": f"synthetic:test,{v},n={args.n_seg}",
            "single": f"synthetic:test,{v},objects=1-1,n={args.n_test}",
            "probe_train": f"synthetic:train,{v},n={args.n_probe}", "val": f"synthetic:val,{v},n={args.n_val}"}


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def train_run(name: str, recipe_name: str, seed: int, args) -> dict:
    """Train (or resume) one run in ``<out>/<name>``; its learning curve goes to ``<results>/curves/<name>.json``."""
    from maskclip.train import TrainConfig, train
    from maskclip.train import checkpoint as ckpt
    from study_probe import Probe  # a sibling script: the zero-shot curve hook

    recipe, extra = VARIANTS.get(recipe_name, (recipe_name, {}))
    run = Path(args.out) / name
    overrides = {"data": [specs(args)["train"]], "steps": args.steps, "seed": seed, "progress": False,
                 "workers": args.workers, **({"batch_size": args.batch} if args.batch else {}), **extra}
    if args.curve_every:
        overrides.update(eval_every=args.curve_every, ckpt_every=args.curve_every)
    cfg = TrainConfig.from_preset(args.preset, recipe, overrides)
    found = ckpt.latest(run / "checkpoints")
    resumed_at = int(found.name.split("_")[1]) if found is not None else 0  # step_XXXXXXXX
    curve_path = Path(args.results) / "curves" / f"{name}.json"
    before = seconds_at(run / "timing.json", curve_path, resumed_at) if found is not None else 0.0
    probe = None
    if args.curve_every:
        test = f"synthetic:test,version={args.version},n={args.n_curve}"
        meta = {"name": name, "preset": args.preset, "recipe": recipe_name, "data": cfg.data[0], "test": test,
                "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "crop_scale": list(cfg.crop_scale),
                "seed": seed, "threads": torch.get_num_threads(), "overrides": extra}
        probe = Probe(test, cfg.model_overrides.get("vision", {}).get("image_size") or 32,
                      curve_path, run / "metrics.jsonl", meta, resumed_at, args.curve_every, base_seconds=before)
    t0 = time.perf_counter()
    summary = train(cfg, run, resume=found is not None, eval_fn=probe)
    seconds = time.perf_counter() - t0 - (probe.eval_seconds if probe else 0.0)
    timing = run / "timing.json"  # train time summed over the invocations that trained this run
    record = {"recipe": recipe_name, "seed": seed, "train_seconds": round(before + seconds, 1),
              "steps": summary["steps"], "batch_size": cfg.batch_size, "skipped": summary["skipped"],
              "nonfinite": summary["nonfinite"], "threads": torch.get_num_threads()}
    write_json(timing, record)
    return record


def seconds_at(timing: Path, curve: Path, step: int) -> float:
    """The train time of a run at the checkpoint of ``step`` it resumes from: what the last invocation
    recorded when it stopped there (``timing``), else the learning curve's point at that step (an
    invocation that died without recording), else the last record with a warning (an undercount)."""
    record = json.loads(timing.read_text()) if timing.is_file() else {}
    if record.get("steps") == step:
        return record["train_seconds"]
    points = json.loads(curve.read_text())["points"] if curve.is_file() else []
    at = [p["train_seconds"] for p in points if p["step"] == step]
    if at:
        return at[0]
    print(f"{timing.parent.name}: no train time recorded at step {step}; counting from "
          f"{record.get('train_seconds', 0.0)} s (step {record.get('steps', 0)}), an undercount", flush=True)
    return record.get("train_seconds", 0.0)


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
    zs1 = zero_shot_per_image(model, open_synthetic(parse_spec(s["single"]), size), "shape")
    ret = image_text_retrieval(model, s["test"], progress=False)
    probe = linear_probe_classification(model, s["probe_train"], s["test"], val=s["val"], progress=False)
    patches = patch_probe(model, open_synthetic(parse_spec(s["probe_train"]), size), test,
                          min(args.n_patch, args.n_probe), min(args.n_patch, args.n_test))
    seg_shape = zero_shot_segmentation(model, s["seg"], methods=METHODS, progress=False)
    seg_colour = zero_shot_segmentation(model, colour_masks(seg), methods=METHODS, progress=False)
    return {
        "zeroshot_shape_top1": float(np.mean(zs)), "zeroshot_colour_shape_top1": float(np.mean(zs80)),
        "zeroshot_shape_single_top1": float(np.mean(zs1)),
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
            ("0-shot shape, 1 object", "zeroshot_shape_single_top1", "{:.3f}"),
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


MARK_START, MARK_END = "<!-- shapes-study-table -->", "<!-- /shapes-study-table -->"
COLOURS = {"clip": (31, 119, 180), "maskclip": (214, 39, 40), "maskclip_cosine": (255, 127, 14),
           "slip": (44, 160, 44), "clip_mae": (148, 103, 189), "rils": (140, 86, 75)}
BARS = [("0-shot shape", "zeroshot_shape_top1"), ("linear probe", "probe_top1"), ("patch shape", "patch_shape_top1"),
        ("patch colour", "patch_colour_top1"), ("mIoU shape (Zhou)", "miou_shape_maskclip"),
        ("mIoU colour (Zhou)", "miou_colour_maskclip")]


def plot_bars(summary: dict, path: Path) -> None:
    """Grouped bars (mean over seeds, a line for +- std) of the main metrics per recipe, drawn with PIL."""
    from PIL import Image, ImageDraw

    rows = list(summary["table"].items())
    W, H, left, bottom, top = 1000, 440, 50, 50, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    plot_h, group_w = H - bottom - top, (W - left - 20) / len(BARS)
    bar_w = group_w * 0.8 / max(1, len(rows))
    for tick in range(0, 11, 2):
        y = H - bottom - plot_h * tick / 10
        d.line([(left, y), (W - 20, y)], fill=(225, 225, 225))
        d.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    for g, (label, key) in enumerate(BARS):
        x0 = left + g * group_w + group_w * 0.1
        for i, (recipe, row) in enumerate(rows):
            m, sd = row[key]["mean"], row[key]["std"]
            x = x0 + i * bar_w
            d.rectangle([x, H - bottom - plot_h * max(0.0, min(1.0, m)), x + bar_w - 2, H - bottom],
                        fill=COLOURS.get(recipe, (0, 0, 0)))
            if sd:
                xc = x + bar_w / 2 - 1
                d.line([(xc, H - bottom - plot_h * min(1.0, m + sd)), (xc, H - bottom - plot_h * max(0.0, m - sd))],
                       fill="black", width=2)
        d.text((x0, H - bottom + 8), label, fill="black")
    for i, (recipe, row) in enumerate(rows):
        d.rectangle([left + i * 150, 10, left + i * 150 + 12, 22], fill=COLOURS.get(recipe, (0, 0, 0)))
        d.text((left + i * 150 + 16, 10), f"{recipe} ({len(row['seeds'])})", fill="black")
    img.save(path)


def plot_curves(curves: dict, path: Path, n_images: int) -> None:
    """Zero-shot shape top-1 against training step, one line per run, coloured by recipe."""
    from PIL import Image, ImageDraw

    W, H, left, bottom, top = 800, 420, 50, 40, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    steps = max((p["step"] for c in curves.values() for p in c["points"]), default=1)
    plot_w, plot_h = W - left - 20, H - bottom - top
    for tick in range(0, 11, 2):
        y = H - bottom - plot_h * tick / 10
        d.line([(left, y), (W - 20, y)], fill=(225, 225, 225))
        d.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    for k in range(6):
        x = left + plot_w * k / 5
        d.text((x - 10, H - bottom + 8), str(round(steps * k / 5)), fill="black")
    y_chance = H - bottom - plot_h * 0.125
    d.line([(left, y_chance), (W - 20, y_chance)], fill=(160, 160, 160))
    d.text((W - 120, y_chance - 14), "chance 0.125", fill=(120, 120, 120))
    recipes = []
    for name, c in sorted(curves.items()):
        recipe = c["meta"]["recipe"]
        xy = [(left + plot_w * p["step"] / steps, H - bottom - plot_h * p["zs_shape_top1"]) for p in c["points"]]
        if len(xy) > 1:
            d.line(xy, fill=COLOURS.get(recipe, (0, 0, 0)), width=2)
        if recipe not in recipes:
            recipes.append(recipe)
    for i, recipe in enumerate(recipes):
        d.rectangle([left + i * 130, 10, left + i * 130 + 12, 22], fill=COLOURS.get(recipe, (0, 0, 0)))
        d.text((left + i * 130 + 16, 10), recipe, fill="black")
    d.text((left, H - 14), f"training step; zero-shot shape top-1 on {n_images} held-out test images", fill="black")
    img.save(path)


def curves_markdown(curves: dict) -> str:
    """Zero-shot shape top-1 per curve point, a column per run."""
    names = sorted(curves)
    steps = sorted({p["step"] for c in curves.values() for p in c["points"]})
    at = {n: {p["step"]: p["zs_shape_top1"] for p in curves[n]["points"]} for n in names}
    lines = ["| step | " + " | ".join(names) + " |", "| --- " * (len(names) + 1) + "|"]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{at[n][step]:.3f}" if step in at[n] else "" for n in names) + " |")
    return "\n".join(lines)


def write_results_doc(path: Path, table: str, meta: dict, curves: str = "", n_curve: int = 0) -> None:
    """Put the table (and the curves) between the markers of ``docs/results.md``, keeping the analysis around it."""
    curves_block = (f"\n\nZero-shot shape top-1 during training ({n_curve} test images per point; the curves' "
                    f"JSON is in the results folder's `curves/`):\n\n{curves}" if curves else "")
    block = (f"{MARK_START}\n{table}{curves_block}\n\nMeasured {meta['date']} with `{meta['command']}` (torch {meta['torch']}, "
             f"{meta['cpus']} CPU cores, preset {meta['preset']}, {meta['steps']} steps, {meta['n_train']} training "
             f"images, {meta['runs']} runs" + (f" ({meta['missing_runs']} still to run)" if meta["missing_runs"] else "")
             + f", {meta['train_seconds']:.0f} s of training in all).\n{MARK_END}")
    text = path.read_text(encoding="utf-8") if path.exists() else f"# The synthetic-shapes study\n\n{MARK_START}\n{MARK_END}\n"
    head, _, rest = text.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    path.write_text(head + block + tail, encoding="utf-8")


def bundle(best: str, out: Path, record: Optional[dict] = None) -> Path:
    """Copy the chosen run's model, stored in fp16, into the package as tiny-shapes, and register its
    sha256 (and a description of the run) in ``maskclip/resources/registry.json``."""
    import hashlib

    import maskclip
    from maskclip.serialization import write_safetensors

    model = maskclip.load(out / best / "model")
    model.config.name = "tiny-shapes"
    target = ROOT / "maskclip" / "weights" / "tiny-shapes"
    target.mkdir(parents=True, exist_ok=True)
    write_safetensors({k: v.half() for k, v in model.state_dict().items()}, target / "model.safetensors",
                      metadata={"source": f"benchmarks/shapes_study.py, run {best}"})
    model.config.to_json(target / "config.json")
    digest = hashlib.sha256((target / "model.safetensors").read_bytes()).hexdigest()
    registry = ROOT / "maskclip" / "resources" / "registry.json"
    text = registry.read_text(encoding="utf-8")
    entry = json.loads(text)["tiny-shapes"]
    v = model.config.vision
    recipe = (record or {}).get("recipe", "maskclip")
    steps = (record or {}).get("steps")
    recipe_text = {"clip": "CLIP recipe", "maskclip": "MaskCLIP recipe (soft prototype distillation loss)",
                   "maskclip_cosine": "MaskCLIP recipe (cosine distillation loss)"}.get(recipe, f"{recipe} recipe")
    description = (f"A {v.image_size} px ViT (patch {v.patch_size}, convolutional stem) trained by maskclip's "
                   f"{recipe_text} on the synthetic shapes benchmark (generator version {(record or {}).get('setting', {}).get('version', '?')})"
                   + (f" for {steps} steps of batch {record.get('batch_size')}" if steps else "")
                   + f", run {best} of benchmarks/shapes_study.py; bundled in the package, for the offline main job and "
                   "the examples. It knows the benchmark's shapes and colours only.")
    source = f"benchmarks/shapes_study.py --bundle, run {best} (docs/results.md)"
    for key, value in (("sha256", digest), ("description", description), ("source", source)):
        old = json.dumps(entry[key])
        if text.count(old) != 1:
            raise SystemExit(f"{registry}: the tiny-shapes {key} {old} is not there exactly once; update it by hand")
        text = text.replace(old, json.dumps(value))
    tmp = registry.with_name(f".{registry.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, registry)
    return target


def bundle_score(r: dict) -> float:
    """How the bundled model is chosen among MaskCLIP-recipe runs: zero-shot shape + Zhou et al.'s mIoU + probe."""
    return r["zeroshot_shape_top1"] + r["miou_shape_maskclip"] + r["probe_top1"]


def maybe_bundle(name: str, record: dict, args) -> None:
    """Ship ``name``'s model as tiny-shapes when it is the best MaskCLIP-recipe run so far.

    Decided as each run finishes, so the choice survives a study run in parts (a run's model folder
    lives in the git-ignored work folder; the bundled copy and ``<results>/bundled.json`` are committed)."""
    if not record["recipe"].startswith("maskclip"):
        return
    marker = Path(args.results) / "bundled.json"
    current = json.loads(marker.read_text()) if marker.is_file() else None
    if current is not None and current.get("score", -1.0) >= bundle_score(record):
        return
    target = bundle(name, Path(args.out), record)
    write_json(marker, {"run": name, "score": round(bundle_score(record), 6), "criterion": bundle_score.__doc__,
                        "zeroshot_shape_top1": record["zeroshot_shape_top1"],
                        "zeroshot_shape_single_top1": record["zeroshot_shape_single_top1"],
                        "miou_shape_maskclip": record["miou_shape_maskclip"], "probe_top1": record["probe_top1"],
                        "command": " ".join(sys.argv), "weights": str(target.relative_to(ROOT))})
    print(f"bundled {name} as tiny-shapes in {target}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    p.add_argument("--seeds", type=int, default=3, help="seeds of CLIP and the MaskCLIP variants (others: 1)")
    p.add_argument("--only", nargs="+", default=[], help="train just these runs (names as in the table: clip-s0 ...)")
    p.add_argument("--preset", default=STUDY_PRESET)
    p.add_argument("--version", type=int, default=STUDY_VERSION, help="synthetic generator version")
    p.add_argument("--steps", type=int, default=STUDY_STEPS)
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--batch", type=int, default=0, help="batch size (0: the preset's)")
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-seg", type=int, default=500)
    p.add_argument("--n-probe", type=int, default=2000, help="training images of the linear probes")
    p.add_argument("--n-val", type=int, default=500, help="validation images choosing the probe's weight decay")
    p.add_argument("--n-patch", type=int, default=500, help="images (train and test) of the per-patch probes")
    p.add_argument("--curve-every", type=int, default=250, help="zero-shot learning-curve points every N steps (0: none)")
    p.add_argument("--n-curve", type=int, default=500, help="test images of each curve point")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--max-runs", type=int, default=0, help="train at most this many unfinished runs now (0: all)")
    p.add_argument("--out", default=str(ROOT / "runs" / "shapes-study"), help="work folder: checkpoints, models, pool")
    p.add_argument("--results", default=str(RESULTS), help="finished runs' results and curves (committed)")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/results.md")
    p.add_argument("--bundle", action="store_true", help="ship the best MaskCLIP run so far as the tiny-shapes model")
    p.add_argument("--status", action="store_true",
                   help="print each run's state (finished, in progress at step N, not started) and exit")
    args = p.parse_args()
    if args.status:
        print(status(args))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    known = [r[0] for r in runs(args)]
    unknown = sorted(set(args.only) - set(known))
    if unknown:
        p.error(f"--only names runs that are not in this study: {unknown}; the study's runs: {known}")
    out, results_dir = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    trained = 0
    results = []
    for name, recipe, seed in runs(args):
        path = results_dir / f"{name}.json"
        if not path.is_file() and (not args.only or name in args.only):
            if args.max_runs and trained >= args.max_runs:
                continue
            record = train_run(name, recipe, seed, args)
            trained += 1
            if record["steps"] < args.steps:  # stopped by a signal: checkpointed, resumed by the same command
                print(f"{name}: stopped at step {record['steps']} of {args.steps} after {record['train_seconds']} s "
                      "of training; run the same command to resume it", flush=True)
                return
            print(f"{name}: trained {record['steps']} steps in {record['train_seconds']} s", flush=True)
            t0 = time.perf_counter()
            record.update(evaluate(out / name / "model", args))
            record["eval_seconds"] = round(time.perf_counter() - t0, 1)
            record["setting"] = {"preset": args.preset, "version": args.version, "steps": args.steps,
                                 "n_train": args.n_train, "finished": time.strftime("%Y-%m-%d %H:%M"),
                                 "torch": torch.__version__, "cpus": os.cpu_count()}
            write_json(path, record)
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in record.items() if isinstance(v, float)), flush=True)
            if args.bundle:
                maybe_bundle(name, record, args)
        if path.is_file():
            results.append(json.loads(path.read_text()))
    mismatched = [r for r in results if r.get("setting", {}).get("steps") not in (None, args.steps)]
    if mismatched:
        raise SystemExit(f"{results_dir} holds runs of another setting ({len(mismatched)} with other steps); "
                         "use another --results folder")
    missing = len(runs(args)) - len(results)
    summary = summarise(results)
    meta = {"preset": args.preset, "version": args.version, "steps": args.steps, "n_train": args.n_train,
            "runs": len(results), "missing_runs": missing, "train_seconds": sum(r["train_seconds"] for r in results),
            "torch": torch.__version__, "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "command": " ".join(sys.argv)}
    write_json(results_dir / "summary.json", {"meta": meta, **summary})
    table = markdown(summary)
    print(table)
    if missing:
        print(f"{missing} runs still to do: rerun the same command to continue", flush=True)
    if not args.no_docs and results:
        curves = {p.stem: json.loads(p.read_text()) for p in sorted((results_dir / "curves").glob("*.json"))}
        write_results_doc(ROOT / "docs" / "results.md", table, meta, curves_markdown(curves) if curves else "",
                          args.n_curve)
        plot_bars(summary, ROOT / "docs" / "shapes_study.png")
        if curves:
            plot_curves(curves, ROOT / "docs" / "shapes_study_curves.png", args.n_curve)


if __name__ == "__main__":
    main()
