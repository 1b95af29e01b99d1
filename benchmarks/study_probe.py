"""One probe run of the shape study: train, and write the learning curve as it goes.

    python benchmarks/study_probe.py --name clip64-v2 --preset shapes64 --steps 5000
    python benchmarks/study_probe.py --name clip64-v2 --preset shapes64 --steps 5000   # again: resumes
    python benchmarks/study_probe.py --report          # every curve so far, as markdown tables

Every ``--eval-every`` steps the model classifies ``--n-eval`` held-out test images
(``synthetic:test`` of the same generator version, 1-3 objects with occlusion) zero-shot: the
shape of the main object (8 classes, the benchmark's templates) and its colour and shape (80).
The curve (step, mean training loss since the last point, both top-1s, seconds) is rewritten
to ``benchmarks/results/study_probe/<name>.json`` after each point, so a killed run loses
nothing; rerunning the same command resumes from the newest checkpoint (``maskclip.train``'s
exact resume) and continues the curve.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parent.parent


class Probe:
    """The evaluation hook: zero-shot top-1 on test images rendered once, preprocessed once."""

    def __init__(self, spec: str, size: int, curve_path: Path, metrics_path: Path, meta: dict, resumed_at: int,
                 every: int, base_seconds: Optional[float] = None):
        """``base_seconds``: the train time at the checkpoint resumed from (default: the curve's last
        point at or before it, which undercounts a resume from a checkpoint between curve points)."""
        from maskclip.datasets import classnames, open_synthetic, parse_spec, templates

        ds = open_synthetic(parse_spec(spec), size)
        samples = [ds[i] for i in range(len(ds))]
        self.images = [s.image for s in samples]
        self.shape = torch.tensor([s.meta["label"] for s in samples])
        self.colour_shape = torch.tensor([classnames("colour_shape").index(f"{o['colour']} {o['shape']}")
                                          for o in (max(s.meta["objects"], key=lambda o: o["visible_px"])
                                                    for s in samples)])
        self.names = {"shape": classnames("shape"), "colour_shape": classnames("colour_shape")}
        self.templates = templates()
        self.curve_path, self.metrics_path = curve_path, metrics_path
        old = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
        self.points = [p for p in old.get("points", []) if p["step"] <= resumed_at]
        self.meta, self.step, self.every = meta, resumed_at, every
        if base_seconds is None:
            base_seconds = self.points[-1]["train_seconds"] if self.points else 0.0
        self.t0 = time.perf_counter() - base_seconds
        self.eval_seconds = 0.0

    def __call__(self, model) -> dict:
        t = time.perf_counter()
        x = model.image_batch(self.images)
        feats = torch.cat([model.encode_image(x[i:i + 256], normalize=True) for i in range(0, len(x), 256)])
        out = {}
        for kind, labels in (("shape", self.shape), ("colour_shape", self.colour_shape)):
            classifier = model.zero_shot_classifier(self.names[kind], self.templates)
            out[f"zs_{kind}_top1"] = float(((feats @ classifier).argmax(-1) == labels).float().mean())
        self.eval_seconds += time.perf_counter() - t
        self.step = (self.step // self.every + 1) * self.every  # the loop evaluates at multiples of eval_every
        self.points.append({"step": self.step, "loss": self._mean_loss(), **out,
                            "train_seconds": round(time.perf_counter() - self.t0 - self.eval_seconds, 1)})
        self.curve_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.curve_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "points": self.points}, indent=1))
        tmp.replace(self.curve_path)
        print(json.dumps(self.points[-1]), flush=True)
        return out

    def _mean_loss(self) -> float:
        """The mean training loss of the windows logged since the previous point (``metrics.jsonl``)."""
        since = self.points[-1]["step"] if self.points else 0
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        losses = [r["loss"] for r in rows if "loss" in r and since < r["step"] <= self.step]
        return sum(losses) / len(losses) if losses else float("nan")


CURVES = ROOT / "benchmarks" / "results" / "study_probe"


def report() -> str:
    """One markdown table per stored curve: its setting, then step, loss, both top-1s and train time."""
    out = []
    for path in sorted(CURVES.glob("*.json")):
        curve = json.loads(path.read_text())
        m = curve["meta"]
        out += [f"**{m['name']}**: preset `{m['preset']}`, recipe {m['recipe']}, data `{m['data']}`, batch "
                f"{m['batch_size']}, lr {m['lr']}, crops {m['crop_scale'][0]}-{m['crop_scale'][1]}, seed {m['seed']}"
                + "".join(f", `{k}={v}`" for k, v in m.get("overrides", {}).items() if k.startswith("model_overrides"))
                + f"; evaluated on `{m['test']}`.", "",
                "| step | loss | 0-shot shape | 0-shot colour+shape | train (s) |", "| --- | --- | --- | --- | --- |"]
        out += [f"| {q['step']} | {q['loss']:.3f} | {q['zs_shape_top1']:.3f} | {q['zs_colour_shape_top1']:.3f} | "
                f"{q['train_seconds']:.0f} |" for q in curve["points"]]
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", action="store_true", help="print the stored curves as markdown and stop")
    p.add_argument("--name", default="")
    p.add_argument("--preset", default="shapes64")
    p.add_argument("--recipe", default="clip")
    p.add_argument("--data", default="", help="training data spec (default: the preset's)")
    p.add_argument("--test", default="", help="evaluation spec (default: synthetic:test of the data's version)")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--crop", type=float, nargs=2, default=None, help="crop scale range")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="extra TrainConfig overrides KEY=JSON")
    p.add_argument("--out", default=str(ROOT / "runs" / "study_probe"))
    args = p.parse_args()
    if args.report:
        print(report())
        return
    if not args.name:
        p.error("--name is required to train")
    torch.set_num_threads(args.threads)

    from maskclip.train import TrainConfig, train
    from maskclip.train import checkpoint as ckpt

    overrides = {"steps": args.steps, "seed": args.seed, "progress": False, "workers": args.workers,
                 "eval_every": args.eval_every, "ckpt_every": args.eval_every, "log_every": 25}
    if args.data:
        overrides["data"] = [args.data]
    if args.lr:
        overrides["lr"] = args.lr
    if args.batch:
        overrides["batch_size"] = args.batch
    if args.crop:
        overrides["crop_scale"] = list(args.crop)
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    cfg = TrainConfig.from_preset(args.preset, args.recipe, overrides)
    data = cfg.data[0]
    version = next((o.split("=")[1] for o in data.split(",") if o.startswith("version=")), "1")
    test = args.test or f"synthetic:test,version={version},n={args.n_eval}"
    run = Path(args.out) / args.name
    found = ckpt.latest(run / "checkpoints")
    resumed_at = int(found.name.split("_")[1]) if found is not None else 0  # step_XXXXXXXX
    size = cfg.model_overrides.get("vision", {}).get("image_size") or 32
    meta = {"name": args.name, "preset": args.preset, "recipe": args.recipe, "data": data, "test": test,
            "steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "crop_scale": list(cfg.crop_scale),
            "seed": cfg.seed, "threads": args.threads, "overrides": {k: v for k, v in overrides.items()},
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    probe = Probe(test, size, CURVES / f"{args.name}.json",
                  run / "metrics.jsonl", meta, resumed_at, args.eval_every)
    summary = train(cfg, run, resume=found is not None, eval_fn=probe)
    print(json.dumps({k: v for k, v in summary.items() if k != "out"}), flush=True)


if __name__ == "__main__":
    main()
