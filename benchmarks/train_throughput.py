"""Training throughput of the ``shapes`` preset, per recipe: steps/s and samples/s of the loop's step.

    python benchmarks/train_throughput.py                          # every recipe, batch 128, 20 timed steps
    python benchmarks/train_throughput.py --recipes clip maskclip --steps 10 --out quick
    python benchmarks/train_throughput.py --set maskclip.text=false

The data path is not measured: a pool of batches (``--pool``, default 4) is drawn once from the
training stream on ``synthetic:train`` (real images, crops and captions of the preset) into memory,
and the steps cycle through it. What is timed is the loop's own per-step work (``loop.run_step``:
the host-side preparation, forward, backward, optimizer, teacher update), ``--warmup`` steps first,
then ``--steps`` timed ones; ``--rounds`` alternate the recipe order, and the median step time over
rounds is reported. Every ``log_every``-th step is a logging step, as in training.

``--floor`` also records every matrix product one step runs (``mm``, ``addmm``, ``bmm``, ``baddbmm``,
forward and backward, with their shapes and strides) and times each of them alone on fresh tensors at
the same thread count (best of 3): ``matmul_s``, the time the step's GEMMs take in isolation, is a floor
no change to the loop can go under without faster GEMM kernels or less arithmetic, and
``matmul_share`` = ``matmul_s`` / step says how much of the step is left to win elsewhere (a step
twice as fast needs a share under 0.5). ``gflop`` is those products' arithmetic.

Results: ``benchmarks/results/train_throughput[_OUT].json`` and a markdown table. This machine is
shared: treat the numbers as rough, and compare runs made back to back.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ["clip", "slip", "clip_mae", "maskclip", "rils"]


def pool_of_batches(cfg, recipe, n: int) -> list:
    """``n`` batches from the preset's training stream on the synthetic data, kept in memory."""
    from maskclip.train.data import StreamSpec, TrainStream, open_source

    source = open_source(cfg.data)
    spec = StreamSpec(cfg.batch_size, n, cfg.seed, 0, 1, recipe.extra_views, recipe.model.config.text.context_length)
    stream = TrainStream(source, spec, recipe.model.config.preprocess, cfg.crop_scale, cfg.slip.crop_scale)
    stream.set_position(0)
    return list(stream)


_GEMMS = ("mm.default", "addmm.default", "bmm.default", "baddbmm.default")


class TensorSpec(tuple):
    """(shape, stride) of a recorded tensor argument."""


def record_gemms(fn) -> list:
    """Run ``fn()`` and return each matrix product it dispatched: (op name, arguments with each tensor as
    its ``TensorSpec``, keyword arguments)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = f"{func.overloadpacket.__name__}.{func._overloadname}"
            if name in _GEMMS:
                calls.append((name, [TensorSpec((tuple(a.shape), tuple(a.stride())))
                                     if isinstance(a, torch.Tensor) else a for a in args], dict(kwargs or {})))
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    return calls


def _fresh(shape, stride):
    """Random values viewed with ``shape`` and ``stride`` (broadcast strides of 0 included)."""
    import torch

    size = 1 + sum((n - 1) * st for n, st in zip(shape, stride)) if all(shape) else 0
    return torch.randn(size).as_strided(shape, stride)


def time_gemms(calls) -> tuple:
    """(seconds, GFLOP) of the recorded products, each run alone on fresh fp32 tensors of the recorded
    shapes and strides (best of 3; repeated calls of one signature are timed once)."""
    import torch

    seconds, flops, cache = 0.0, 0, {}
    for name, specs, kwargs in calls:
        key = (name, repr(specs), repr(sorted(kwargs.items())))
        if key not in cache:
            op = getattr(torch.ops.aten, name.split(".")[0]).default
            args = [_fresh(*sp) if isinstance(sp, TensorSpec) else sp for sp in specs]
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                op(*args, **kwargs)
                best = min(best, time.perf_counter() - t0)
            x, y = (args[1], args[2]) if name.startswith(("addmm", "baddbmm")) else (args[0], args[1])
            batch = x.shape[0] if x.dim() == 3 else 1
            cache[key] = (best, 2 * batch * x.shape[-2] * x.shape[-1] * y.shape[-1])
        seconds += cache[key][0]
        flops += cache[key][1]
    return seconds, flops / 1e9


def measure(recipe_name: str, args) -> dict:
    import torch

    from maskclip.train import TrainConfig
    from maskclip.train import distributed as dist
    from maskclip.train import loop
    from maskclip.train.config import parse_override
    from maskclip.train.optim import build_optimizer
    from maskclip.train.recipes import build_recipe

    total = args.warmup + args.steps
    overrides = {"batch_size": args.batch, "steps": total, "data": [args.data], "progress": False,
                 **dict(parse_override(s) for s in args.set)}
    cfg = TrainConfig.from_preset(args.preset, recipe_name, overrides)
    legacy = not _has_step_runner()
    if not legacy:
        from maskclip.train.allocator import keep_freed_memory
        keep_freed_memory()  # as the training loop does on the CPU
    torch.manual_seed(cfg.seed)
    recipe = build_recipe(loop.build_model(cfg), cfg)
    optimizer = build_optimizer(recipe, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
    info = dist.DistInfo(0, 1, 0, torch.device("cpu"))
    plan = loop.Plan(cfg.batch_size, total, total, min(cfg.warmup_steps, total))
    batches = pool_of_batches(cfg, recipe, args.pool)
    recipe.train()
    state, times = loop.RunState(offsets=[0]), []
    if legacy:  # a checkout from before StepRunner: the loop's old per-step function
        for i in range(total):
            t0 = time.perf_counter()
            result = loop._step(recipe, recipe, optimizer, None, [batches[i % len(batches)]], state, cfg, plan, info)
            state.step += 1
            elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(elapsed)
        assert result is not None and result["loss"] == result["loss"], f"{recipe_name}: non-finite loss"
    else:
        from maskclip.train.step import StepRunner

        runner = StepRunner(recipe, recipe, optimizer, None, cfg, plan, info)
        for i in range(total):
            t0 = time.perf_counter()
            runner.run([batches[i % len(batches)]], state)
            state.step += 1
            if state.step % cfg.log_every == 0 or state.step == total:
                runner.sync(state)  # the loop's one read per logging step
            elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(elapsed)
        means, _ = runner.record()
        assert means["loss"] == means["loss"] and state.nonfinite == 0, f"{recipe_name}: non-finite loss"
    median = statistics.median(times)
    row = {"recipe": recipe_name, "batch": cfg.batch_size, "median_s": median, "mean_s": statistics.mean(times),
           "steps_per_s": 1 / median, "samples_per_s": cfg.batch_size / median, "steps": args.steps}
    if args.floor and not legacy:
        calls = record_gemms(lambda: runner.run([batches[0]], state))
        matmul_s, gflop = time_gemms(calls)
        row.update({"gemms": len(calls), "gflop": gflop, "matmul_s": matmul_s, "matmul_share": matmul_s / median})
    return row


def _code() -> dict:
    """Which maskclip was timed: its folder, and the commit when that folder is a git checkout."""
    import subprocess

    import maskclip

    folder = Path(maskclip.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"path": str(folder), "commit": commit, "step": "StepRunner" if _has_step_runner() else "loop._step"}


def _has_step_runner() -> bool:
    import importlib.util

    return importlib.util.find_spec("maskclip.train.step") is not None


def table(rows) -> str:
    floor = any("matmul_s" in r for r in rows)
    lines = ["| recipe | batch | step (s) | steps/s | samples/s |" + (" GEMM GFLOP | GEMMs alone (s) | share |" if floor else ""),
             "| --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if floor else "")]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['batch']} | {r['median_s']:.3f} | {r['steps_per_s']:.2f} | "
                     f"{r['samples_per_s']:.0f} |" + (f" {r['gflop']:.1f} | {r['matmul_s']:.3f} | {r['matmul_share']:.2f} |"
                                                      if "matmul_s" in r else ""))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=RECIPES, choices=RECIPES)
    p.add_argument("--preset", default="shapes", help="training preset (shapes64: the shape study's)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--pool", type=int, default=4, help="batches pre-rendered into memory")
    p.add_argument("--data", default="synthetic:train,n=2048")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--set", action="append", default=[], help="TrainConfig overrides for every recipe")
    p.add_argument("--floor", action="store_true", help="also time the step's matrix products alone")
    p.add_argument("--out", default="", help="suffix of the results file name")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    runs = {}
    for rnd in range(args.rounds):
        for recipe in (args.recipes if rnd % 2 == 0 else list(reversed(args.recipes))):
            r = measure(recipe, args)
            runs.setdefault(recipe, []).append(r)
            print(f"round {rnd + 1}: {recipe}: {r['median_s']:.3f} s/step, {r['samples_per_s']:.0f} samples/s",
                  file=sys.stderr, flush=True)
    rows = []
    for recipe in args.recipes:
        median = statistics.median(r["median_s"] for r in runs[recipe])
        rows.append({**runs[recipe][0], "median_s": median, "steps_per_s": 1 / median,
                     "samples_per_s": runs[recipe][0]["batch"] / median, "rounds": [r["median_s"] for r in runs[recipe]]})
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "python": platform.python_version(), "loadavg": os.getloadavg(),
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "pool": args.pool, "data": args.data,
            "overrides": args.set, "date": time.strftime("%Y-%m-%d %H:%M"), "code": _code()}
    RESULTS.mkdir(exist_ok=True)
    name = f"train_throughput_{args.out}.json" if args.out else "train_throughput.json"
    (RESULTS / name).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(table(rows))
    print(f"\n{meta}")


if __name__ == "__main__":
    main()
