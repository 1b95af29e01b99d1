"""Pictures a person can look at: a segmentation overlay with a legend."""
from __future__ import annotations

import colorsys
from typing import List, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont

from .images import rgb


def palette(n: int) -> List[Tuple[int, int, int]]:
    """``n`` well-separated, saturated colours (golden-ratio hue steps)."""
    colours = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def overlay(image: Image.Image, label_map: torch.Tensor, labels: Sequence[str], alpha: float = 0.5) -> Image.Image:
    """Blend a colour per label over ``image`` and add a legend strip (colour, label, % of pixels).

    ``label_map``: ``LongTensor[H, W]`` of indices into ``labels``, at the image's size. ``image`` is
    taken to RGB by the decoder inference uses (``maskclip.images.rgb``: 16-bit images mapped by value,
    not clipped white), so the overlay shows the pixels the model saw.
    """
    image = rgb(image)
    H, W = label_map.shape
    if image.size != (W, H):
        raise ValueError(f"label map is {W}x{H} but the image is {image.size[0]}x{image.size[1]}")
    colours = palette(len(labels))
    lut = torch.tensor(colours, dtype=torch.uint8)
    colour_img = Image.fromarray(lut[label_map.cpu()].numpy(), "RGB")
    blended = Image.blend(image, colour_img, alpha)

    counts = torch.bincount(label_map.flatten().cpu(), minlength=len(labels)).tolist()
    font_size = max(12, min(24, H // 20))
    font = _font(font_size)
    row = font_size + 8
    legend_w = max(160, int(max(ImageDraw.Draw(blended).textlength(f"{l}  100.0%", font=font) for l in labels)) + row + 16)
    canvas = Image.new("RGB", (W + legend_w, max(H, row * len(labels) + 8)), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    total = max(H * W, 1)
    for i, (label, colour) in enumerate(zip(labels, colours)):
        y = 4 + i * row
        draw.rectangle([W + 8, y + 2, W + 8 + font_size, y + 2 + font_size], fill=colour, outline=(0, 0, 0))
        draw.text((W + 16 + font_size, y), f"{label}  {100 * counts[i] / total:.1f}%", fill=(0, 0, 0), font=font)
    return canvas
