"""Pictures a person can look at: a segmentation overlay with a legend, and methods side by side."""
from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence, Tuple

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
    colours = palette(len(labels))
    blended = _blend(image, label_map, colours, alpha)
    W, H = blended.size
    counts = torch.bincount(label_map.flatten().cpu(), minlength=len(labels)).tolist()
    total = max(H * W, 1)
    texts = [f"{label}  {100 * c / total:.1f}%" for label, c in zip(labels, counts)]
    return _with_legend(blended, texts, colours, font_size=max(12, min(24, H // 20)),
                        widest=[f"{label}  100.0%" for label in labels])


def compare(image: Image.Image, label_maps: Sequence[Tuple[str, torch.Tensor]], labels: Sequence[str],
            alpha: float = 0.5, columns: int = 4, panel_size: int = 512) -> Image.Image:
    """The image and one overlay per ``(title, label map)`` side by side, titled, with one legend.

    Label maps as in ``overlay`` (one colour per label, the same in every panel). Panels are scaled so
    their longer side is at most ``panel_size`` px, at most ``columns`` to a row; the image comes first.
    """
    image = rgb(image)
    colours = palette(len(labels))
    panels = [("image", image)] + [(title, _blend(image, m, colours, alpha)) for title, m in label_maps]
    scale = min(1.0, panel_size / max(image.size))
    pw, ph = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    font_size = max(12, min(20, ph // 16))
    font = _font(font_size)
    title_h = font_size + 8
    rows = -(-len(panels) // max(1, columns))
    cols = -(-len(panels) // rows)  # rows as even as they can be: 5 panels are 3 + 2, not 4 + 1
    grid = Image.new("RGB", (cols * (pw + 8) + 8, rows * (ph + title_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (title, panel) in enumerate(panels):
        x, y = 8 + (k % cols) * (pw + 8), 8 + (k // cols) * (ph + title_h + 8)
        draw.text((x, y), title, fill=(0, 0, 0), font=font)
        grid.paste(panel.resize((pw, ph), Image.BILINEAR) if scale < 1 else panel, (x, y + title_h))
    return _with_legend(grid, list(labels), colours, font_size=font_size)


def _blend(image: Image.Image, label_map: torch.Tensor, colours, alpha: float) -> Image.Image:
    """An RGB ``image`` with ``colours[label]`` blended over each pixel of ``label_map`` (at its size)."""
    H, W = label_map.shape
    if image.size != (W, H):
        raise ValueError(f"label map is {W}x{H} but the image is {image.size[0]}x{image.size[1]}")
    lut = torch.tensor(colours, dtype=torch.uint8)
    return Image.blend(image, Image.fromarray(lut[label_map.cpu()].numpy(), "RGB"), alpha)


def _with_legend(picture: Image.Image, texts: Sequence[str], colours, font_size: int,
                 widest: Optional[Sequence[str]] = None) -> Image.Image:
    """``picture`` with a legend strip on its right: a colour swatch and a text per row, the strip as
    wide as the longest of ``widest`` (default ``texts``) needs."""
    W, H = picture.size
    font = _font(font_size)
    row = font_size + 8
    measure = ImageDraw.Draw(picture)
    legend_w = max(160, int(max(measure.textlength(t, font=font) for t in (widest or texts))) + row + 16)
    canvas = Image.new("RGB", (W + legend_w, max(H, row * len(texts) + 8)), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (text, colour) in enumerate(zip(texts, colours)):
        y = 4 + i * row
        draw.rectangle([W + 8, y + 2, W + 8 + font_size, y + 2 + font_size], fill=colour, outline=(0, 0, 0))
        draw.text((W + 16 + font_size, y), text, fill=(0, 0, 0), font=font)
    return canvas
