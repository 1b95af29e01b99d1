"""Zero-shot segmentation: a label per pixel, saved as a coloured overlay with a legend.

    python examples/segment.py [--model tiny-shapes] [IMAGE] [--out overlay.png]
"""
import argparse
from pathlib import Path

import maskclip
from maskclip.transforms import load_image
from maskclip.visualize import overlay

HERE = Path(__file__).parent
parser = argparse.ArgumentParser()
parser.add_argument("image", nargs="?", default=str(HERE / "images" / "red_circle.png"))
parser.add_argument("--model", default="tiny-shapes")
parser.add_argument("--out", default="overlay.png")
args = parser.parse_args()

labels = ["a red circle", "a beige background"]
model = maskclip.load(args.model)
label_map = model.segment(args.image, labels)  # LongTensor[H, W]
overlay(load_image(args.image), label_map, labels).save(args.out)
print(f"wrote {args.out}: " + ", ".join(f"{l} {float((label_map == i).float().mean()):.0%}" for i, l in enumerate(labels)))
