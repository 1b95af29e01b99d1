"""Pretrain with the MaskCLIP recipe on the synthetic shapes, then use the result: a CPU-sized run.

    python examples/train.py [--recipe maskclip] [--steps 200] [--out runs/example]
"""
import argparse
from pathlib import Path

import maskclip
from maskclip.train import TrainConfig, train

parser = argparse.ArgumentParser()
parser.add_argument("--recipe", default="maskclip", choices=["clip", "slip", "clip_mae", "maskclip", "rils"])
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--out", default="runs/example")
args = parser.parse_args()

cfg = TrainConfig.from_preset("tiny", args.recipe, {
    "data": ["synthetic:train,n=2000,size=40"],  # generated on the fly, deterministic
    "steps": args.steps, "progress": False, "log_every": 50})
summary = train(cfg, args.out, resume=False)     # checkpoints, metrics.jsonl and the model under --out
print(f"trained {summary['steps']} steps; model in {summary['model']}")

model = maskclip.load(summary["model"])
probs = model.classify(str(Path(__file__).parent / "images" / "red_circle.png"), ["a red circle", "a red square", "a red triangle", "a blue circle"])
print("red_circle.png:", [f"{p:.2f}" for p in probs[0].tolist()])
