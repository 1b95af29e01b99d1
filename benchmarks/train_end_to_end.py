"""Training speed as a user sees it: ``python -m maskclip.train`` on the ``shapes`` preset, data path included.

    python benchmarks/train_end_to_end.py --code /tmp/acd5814 --code . --recipes clip maskclip
    python benchmarks/train_end_to_end.py --code . --recipes clip --steps 30 --out quick

``train_throughput.py`` times the step alone on batches held in memory; this script runs the real
command, the same one for every checkout given with ``--code`` (each a source tree of maskclip, put
first on ``PYTHONPATH``): ``python -m maskclip.train --recipe R --preset shapes --data
synthetic:train,n=N --steps S --out TMP --set log_every=L``, with the loader's default workers and
threads. Every checkout reads the same data spec its own way (before the in-memory pool, ``synthetic:``
images were drawn on the fly at 48 px and resized, in the loader's worker).

Measured per (checkout, recipe): the wall time of the command; ``start_s``, from launch to the first
logged step (imports, model, data set-up such as filling the pool, and the first logging window); and the training samples/s of the
metrics' logging windows after the first (the first holds warm-up and the first batches' latency), as
their median, with the slowest and fastest window. Checkouts alternate within each recipe (``--rounds``
reverses the order every other round), so a machine other work shares loads them alike; the ratio,
not the seconds, is the result. Results: ``benchmarks/results/train_end_to_end[_OUT].json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = ["clip", "slip", "clip_mae", "maskclip", "rils"]


def commit_of(code: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_once(code: Path, recipe: str, args) -> dict:
    """One training command of ``code``; its timings from the wall clock and its metrics.jsonl."""
    with tempfile.TemporaryDirectory(prefix="maskclip-e2e-") as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "maskclip.train", "--recipe", recipe, "--preset", args.preset,
               "--data", args.data, "--steps", str(args.steps), "--out", str(out),
               "--set", f"log_every={args.log_every}", "--set", f"ckpt_every={10 * args.steps}"]
        cmd += [a for s in args.set for a in ("--set", s)]
        env = {**os.environ, "PYTHONPATH": str(code.resolve()), "TQDM_DISABLE": "1"}
        launched, t0 = time.time(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{code} {recipe}: the training command failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in rows if "samples_per_s" in r and "step" in r]
    if len(steps) < 3:
        raise SystemExit(f"{code} {recipe}: {len(steps)} logged steps; raise --steps or lower --log-every")
    rates = [r["samples_per_s"] for r in steps[1:]]
    return {"wall_s": wall, "start_s": steps[0]["time"] - launched, "samples_per_s": statistics.median(rates),
            "min_samples_per_s": min(rates), "max_samples_per_s": max(rates), "windows": len(rates)}


def table(rows, codes) -> str:
    base = codes[0]
    lines = ["| recipe | code | samples/s (median window) | range | to first log (s) | wall (s) | vs first |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        ref = next(r for r in rows if r["recipe"] == recipe and r["code"] == base)["samples_per_s"]
        for r in (r for r in rows if r["recipe"] == recipe):
            lines.append(f"| {recipe} | {r['label']} | {r['samples_per_s']:.1f} | {r['min_samples_per_s']:.1f}-"
                         f"{r['max_samples_per_s']:.1f} | {r['start_s']:.0f} | {r['wall_s']:.0f} | "
                         f"{r['samples_per_s'] / ref:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", action="append", required=True, type=Path,
                   help="a maskclip source tree (repeat; the first is the reference of the ratio)")
    p.add_argument("--recipes", nargs="+", default=["clip", "maskclip"], choices=RECIPES)
    p.add_argument("--preset", default="shapes")
    p.add_argument("--data", default="synthetic:train,n=2048")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every command")
    p.add_argument("--out", default="", help="suffix of the results file name")
    args = p.parse_args()
    for code in args.code:
        if not (code / "maskclip" / "train").is_dir():
            p.error(f"--code {code}: not a maskclip source tree (no maskclip/train/ in it)")
    from maskclip.train import TrainConfig  # the preset's batch size, as this checkout has it

    args.batch = TrainConfig.from_preset(args.preset, args.recipes[0], {}).batch_size
    runs: dict = {}
    for rnd in range(args.rounds):
        for recipe in args.recipes:
            order = args.code if rnd % 2 == 0 else list(reversed(args.code))
            for code in order:
                r = run_once(code, recipe, args)
                runs.setdefault((str(code), recipe), []).append(r)
                print(f"round {rnd + 1}: {code} {recipe}: {r['samples_per_s']:.1f} samples/s, start {r['start_s']:.0f} s,"
                      f" wall {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for recipe in args.recipes:
        for code in args.code:
            rs = runs[(str(code), recipe)]
            commit = commit_of(code)
            rows.append({"recipe": recipe, "code": str(code), "commit": commit,
                         "label": (commit or str(code))[:7],
                         "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                         "min_samples_per_s": min(r["min_samples_per_s"] for r in rs),
                         "max_samples_per_s": max(r["max_samples_per_s"] for r in rs),
                         "start_s": statistics.median(r["start_s"] for r in rs),
                         "wall_s": statistics.median(r["wall_s"] for r in rs), "rounds": rs})
    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "loadavg_end": os.getloadavg(), "preset": args.preset,
            "data": args.data, "steps": args.steps, "log_every": args.log_every, "batch": args.batch,
            "rounds": args.rounds, "set": args.set, "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    name = f"train_end_to_end_{args.out}.json" if args.out else "train_end_to_end.json"
    tmp = RESULTS / (name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    tmp.replace(RESULTS / name)
    print(table(rows, [str(c) for c in args.code]))
    print(f"\n{meta}")


if __name__ == "__main__":
    main()
