"""Zero-shot classification in three lines.

    python examples/zero_shot.py [--model tiny-shapes] [IMAGE ...]
"""
import argparse
from pathlib import Path

import maskclip

HERE = Path(__file__).parent
parser = argparse.ArgumentParser()
parser.add_argument("images", nargs="*", default=sorted(str(p) for p in (HERE / "images").glob("*.png")))
parser.add_argument("--model", default="tiny-shapes")
args = parser.parse_args()

labels = ["a red circle", "a red square", "a red triangle", "a blue circle"]
model = maskclip.load(args.model)
probs = model.classify(args.images, labels)  # [B, C], rows sum to 1

for path, p in zip(args.images, probs):
    best = int(p.argmax())
    print(f"{Path(path).name:>20}: {labels[best]} ({p[best]:.1%})")
