"""Small image-caption datasets for training tests, written as tar shards (img2dataset layout) or CSV.

Coloured shapes on noisy backgrounds with captions naming colour and shape: easy enough that a
tiny model's contrastive loss falls within a few steps, varied enough that it is not constant.
"""
import csv
import io
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def shape_image(colour: str, shape: str, size: int, rng: random.Random) -> Image.Image:
    base = rng.randint(60, 160)
    img = Image.new("RGB", (size, size), (base, base, base))
    px = img.load()
    for _ in range(size * size // 8):
        x, y = rng.randrange(size), rng.randrange(size)
        v = base + rng.randint(-30, 30)
        px[x, y] = (v, v, v)
    r = rng.randint(size // 4, size // 2 - 2)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    draw = ImageDraw.Draw(img)
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_items(n: int, size: int = 32, seed: int = 0):
    """``n`` (PIL image, caption) pairs."""
    rng = random.Random(seed)
    items = []
    for i in range(n):
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        phrasing = rng.choice(["a {} {}", "a photo of a {} {}", "{} {} on a grey background"])
        items.append((shape_image(colour, shape, size, rng), phrasing.format(colour, shape)))
    return items


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder, items, per_shard: int = 16, corrupt=(), empty_caption=()):
    """Write ``items`` as ``folder/{00000..}.tar``; indices in ``corrupt`` get undecodable image bytes,
    those in ``empty_caption`` an empty caption. Returns the shard paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(0, len(items), per_shard):
        path = folder / f"{s // per_shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(s + per_shard, len(items))):
                img, caption = items[i]
                data = png_bytes(img)
                if i in corrupt:
                    data = data[: len(data) // 3]
                _add(tar, f"{i:08d}.png", data)
                _add(tar, f"{i:08d}.txt", b"" if i in empty_caption else caption.encode())
        paths.append(str(path))
    return paths


def write_csv(folder, items, name: str = "train.csv", delimiter: str = ","):
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["image", "caption"])
        for i, (img, caption) in enumerate(items):
            img.save(folder / "images" / f"{i}.png")
            w.writerow([f"images/{i}.png", caption])
    return str(folder / name)
