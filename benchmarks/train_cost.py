"""Step time and peak memory of every training recipe, relative to CLIP, on the same model and batch.

    python benchmarks/train_cost.py                       # tiny preset (batch 64) and ViT-B/16 (batch 8)
    python benchmarks/train_cost.py --models tiny --steps 20
    python benchmarks/train_cost.py --recipes clip maskclip --set maskclip.text=false

Each (model, recipe) runs in its own fresh process, so that process's peak resident memory
(``ru_maxrss``) is the recipe's own; the step itself is the training loop's ``StepRunner`` on a fixed
random batch (data loading excluded, as in the papers' comparisons). Every process builds the model,
runs ``--warmup`` steps, then times ``--steps`` steps; the table gives medians and ratios to
``clip``. Rounds alternate the recipes (``--rounds``), and the median over rounds is reported.
Results go to ``benchmarks/results/train_cost[_OUT].json`` and are printed as a markdown table.
``--parts`` adds, per row, one image-tower forward timed with autograd recording (as the student
runs it) and under ``no_grad`` (as the EMA teacher does): the units the design's cost is counted in.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"tiny": {"preset": "tiny", "batch": 64}, "vit-b-16": {"preset": "vitb16-yfcc15m", "batch": 8}}


def image_forward_times(visual, images, repeats: int = 2) -> dict:
    """Median seconds of one image-tower forward (patch tokens, as the teacher runs it) with autograd
    recording (a student's forward) and under ``no_grad`` (the EMA teacher's)."""
    import torch

    out = {}
    for name, grad in (("image_forward_grad_s", True), ("image_forward_nograd_s", False)):
        times = []
        for _ in range(repeats + 1):
            with torch.set_grad_enabled(grad):
                t0 = time.perf_counter()
                tokens = visual.forward_tokens(images)[0]
                times.append(time.perf_counter() - t0)
            del tokens
        out[name] = statistics.median(times[1:])
    return out


def child(model: str, recipe: str, batch: int, warmup: int, steps: int, sets: list, threads: int,
          parts: bool = False) -> dict:
    """Run in a fresh process: build, warm up, time; report step times and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from maskclip.train import TrainConfig
    from maskclip.train.config import parse_override
    from maskclip.train import distributed as dist
    from maskclip.train.allocator import keep_freed_memory
    from maskclip.train.loop import Plan, RunState, build_model
    from maskclip.train.optim import build_optimizer
    from maskclip.train.recipes import build_recipe
    from maskclip.train.step import StepRunner

    overrides = {"batch_size": batch, "steps": warmup + steps, "precision": "fp32",
                 **dict(parse_override(s) for s in sets)}
    cfg = TrainConfig.from_preset(MODELS[model]["preset"], recipe, overrides)
    keep_freed_memory()  # as the training loop does on the CPU
    torch.manual_seed(0)
    recipe_module = build_recipe(build_model(cfg), cfg)
    optimizer = build_optimizer(recipe_module, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    plan = Plan(batch, warmup + steps, warmup + steps, 1)
    s = recipe_module.model.config.preprocess.image_size
    g = torch.Generator().manual_seed(0)
    batch_data = {"image": torch.randn(batch, 3, s, s, generator=g),
                  "text": _captions(batch, recipe_module.model.config.text.context_length, g)}
    if recipe_module.extra_views:
        batch_data["views"] = torch.randn(recipe_module.extra_views, batch, 3, s, s, generator=g)
    params = sum(p.numel() for p in recipe_module.parameters())
    trainable = sum(p.numel() for p in recipe_module.parameters() if p.requires_grad)
    rss_built = _rss_mb()
    state, times = RunState(offsets=[0]), []
    recipe_module.train()
    runner = StepRunner(recipe_module, recipe_module, optimizer, None, cfg, plan, info)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        runner.run([batch_data], state)
        state.step += 1
        runner.sync(state)  # every step: the time includes waiting for the step's results
        elapsed = time.perf_counter() - t0
        assert state.nonfinite == 0, f"{recipe}: non-finite loss"
        if i >= warmup:
            times.append(elapsed)
    row = {"model": model, "recipe": recipe, "batch": batch, "median_s": statistics.median(times),
           "min_s": min(times), "steps": steps, "peak_rss_mb": _rss_mb(), "rss_after_build_mb": rss_built,
           "params_m": params / 1e6, "trainable_m": trainable / 1e6}
    if parts:  # after the peak was read: these passes allocate nothing the step had not
        row.update(image_forward_times(recipe_module.model.visual, batch_data["image"]))
    return row


def _captions(batch: int, context: int, g):
    import torch

    lengths = torch.randint(8, 24, (batch,), generator=g)  # caption-like lengths in tokens
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = 49406
        tokens[i, 1:n - 1] = torch.randint(256, 49000, (n - 2,), generator=g)
        tokens[i, n - 1] = 49407
    return tokens


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_child(args, model, recipe) -> dict:
    cmd = [sys.executable, __file__, "--child", model, recipe, "--warmup", str(args.warmup), "--steps",
           str(args.steps), "--threads", str(args.threads), "--batch", str(args.batch.get(model, MODELS[model]["batch"]))]
    cmd += ["--parts"] if args.parts else []
    for s in args.set:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{model}/{recipe} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows) -> str:
    lines = ["| model | batch | recipe | step (s) | x clip | peak RSS (MB) | x clip | over import (MB) | x clip | params (M) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in dict.fromkeys(r["model"] for r in rows):
        group = [r for r in rows if r["model"] == model]
        base = next((r for r in group if r["recipe"] == "clip"), group[0])
        floor = min(r["import_rss_mb"] for r in group)
        for r in group:
            over, base_over = r["peak_rss_mb"] - floor, base["peak_rss_mb"] - floor
            lines.append(f"| {model} | {r['batch']} | {r['recipe']} | {r['median_s']:.3f} | {r['median_s'] / base['median_s']:.2f} "
                         f"| {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f} | {over:.0f} | "
                         f"{over / base_over:.2f} | {r['params_m']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--recipes", nargs="+", default=["clip", "slip", "clip_mae", "maskclip", "rils"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--set", action="append", default=[], help="TrainConfig overrides for every recipe")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "RECIPE"), help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help="batch size (default: tiny 64, vit-b-16 8)")
    p.add_argument("--parts", action="store_true",
                   help="also time one image-tower forward with autograd (a student's) and without (the teacher's)")
    p.add_argument("--out", default="", help="suffix of the results file name")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.batch, args.warmup, args.steps, args.set, args.threads, args.parts)))
        return
    args.batch = {m: args.batch for m in args.models} if args.batch else {}
    import_rss = float(subprocess.run([sys.executable, "-c", "import resource, maskclip.train.loop; print(resource."
                                       "getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                                      capture_output=True, text=True).stdout)
    results = {}
    for rnd in range(args.rounds):
        for model in args.models:
            for recipe in (args.recipes if rnd % 2 == 0 else list(reversed(args.recipes))):
                r = run_child(args, model, recipe)
                results.setdefault((model, recipe), []).append(r)
                print(f"round {rnd + 1}: {model} {recipe}: {r['median_s']:.3f} s/step, peak {r['peak_rss_mb']:.0f} MB",
                      file=sys.stderr, flush=True)
    rows = []
    for (model, recipe), runs in results.items():
        rows.append({**runs[0], "median_s": statistics.median(r["median_s"] for r in runs),
                     "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
                     "rounds": [r["median_s"] for r in runs], "import_rss_mb": import_rss})
    rows.sort(key=lambda r: (args.models.index(r["model"]), args.recipes.index(r["recipe"])))
    import torch

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "python": platform.python_version(), "loadavg": os.getloadavg(),
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "overrides": args.set,
            "import_rss_mb": import_rss, "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    name = f"train_cost_{args.out}.json" if args.out else "train_cost.json"
    (RESULTS / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"\n{meta}")


if __name__ == "__main__":
    main()
