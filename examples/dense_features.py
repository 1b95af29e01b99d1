"""Patch features in the joint image-text space, and where a text matches inside an image.

    python examples/dense_features.py [--model tiny-shapes] [--method clearclip] [IMAGE] [--text "a red circle"]
"""
import argparse
from pathlib import Path

import torch

import maskclip

HERE = Path(__file__).parent
parser = argparse.ArgumentParser()
parser.add_argument("image", nargs="?", default=str(HERE / "images" / "red_circle.png"))
parser.add_argument("--model", default="tiny-shapes")
parser.add_argument("--method", default="clearclip", choices=["vanilla", "maskclip", "sclip", "clearclip"])
parser.add_argument("--text", default="a red circle")
args = parser.parse_args()

model = maskclip.load(args.model)
with torch.no_grad():
    feats = model.dense_features(args.image, normalize=True, method=args.method)  # [1, D, h, w]
    text = model.encode_text(args.text, normalize=True)                              # [1, D]
similarity = torch.einsum("bdhw,d->bhw", feats, text[0])[0]                          # [h, w] cosine
print(f"patch features {tuple(feats.shape)}; cosine to {args.text!r} per patch:")
for row in similarity:
    print(" ".join(f"{v:+.2f}" for v in row.tolist()))
