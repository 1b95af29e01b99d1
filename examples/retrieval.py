"""Image-text retrieval: which caption fits which image, and which image fits a query.

    python examples/retrieval.py [--model tiny-shapes] [--n 8]
"""
import argparse

import torch

import maskclip
from maskclip.datasets import SyntheticShapes

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="tiny-shapes")
parser.add_argument("--n", type=int, default=8, help="images from the synthetic test split")
args = parser.parse_args()

model = maskclip.load(args.model)
data = SyntheticShapes("test", size=model.config.preprocess.image_size, n=args.n)
images = [data[i].image for i in range(args.n)]
captions = [data[i].captions[0] for i in range(args.n)]  # one true caption per image

with torch.no_grad():
    img = model.encode_image(images, normalize=True)     # [N, D]
    txt = model.encode_text(captions, normalize=True)    # [N, D]
similarity = img @ txt.T                                 # [N, N] cosine similarities

hits = (similarity.argmax(dim=1) == torch.arange(args.n)).float().mean()
print(f"image -> caption top-1 on {args.n} test images: {hits:.0%} (chance {1 / args.n:.0%})")
query = "a large red circle"
best = int((model.encode_text(query, normalize=True) @ img.T).argmax())
print(f"best image for {query!r}: #{best}, captioned {captions[best]!r}")
