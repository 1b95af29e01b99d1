"""The README's example images: single objects from the synthetic test split, drawn at 256 px.

    python benchmarks/example_images.py            # writes examples/images/<colour>_<shape>.png

For each wanted (colour, shape) the first single-object image of ``synthetic:test,version=3`` (seed 0,
scanned in index order) whose object has that colour and shape and covers at least 8 % of the image
is drawn at 256 px, so the examples are test images no model was trained on, picked by a fixed rule.
The chosen indices are printed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WANTED = [("red", "circle"), ("red", "square"), ("red", "triangle"), ("blue", "circle")]  # shapes within a colour,
# colours within a shape


def find(ds, colour: str, shape: str, start: int = 0, min_area: float = 0.08) -> int:
    for i in range(start, len(ds)):
        scene = ds.scene(i)
        (obj,) = scene.objects
        if obj.colour == colour and obj.shape == shape and scene.visible[0] >= min_area:
            return i
    raise SystemExit(f"no single {colour} {shape} covering {min_area:.0%} among {len(ds)} test images")


def main() -> None:
    from maskclip.datasets import SyntheticShapes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "examples" / "images"))
    p.add_argument("--size", type=int, default=256)
    args = p.parse_args()
    ds = SyntheticShapes("test", size=args.size, n=20000, version=3, objects=(1, 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for colour, shape in WANTED:
        i = find(ds, colour, shape)
        ds[i].image.save(out / f"{colour}_{shape}.png")
        print(f"{colour}_{shape}.png: synthetic:test,version=3,objects=1-1 index {i}")


if __name__ == "__main__":
    main()
