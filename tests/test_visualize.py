"""The segmentation overlay: the picture under the colours is the one inference decodes."""
import numpy as np
import torch
from PIL import Image

from maskclip.transforms import load_image
from maskclip.visualize import overlay, palette


def _png16(path, value=30000):
    """A 40x30 16-bit grayscale PNG with a brighter right half."""
    arr = np.full((30, 40), value, dtype="<u2")
    arr[:, 20:] = 2 * value
    Image.frombytes("I;16", (40, 30), arr.tobytes()).save(path)
    return path


def test_overlay_of_a_16_bit_png_shows_the_pixels_inference_sees(tmp_path):
    path = _png16(tmp_path / "deep.png")
    raw = Image.open(path)
    assert raw.mode.startswith("I")  # PIL opens it as 16 bits, which convert("RGB") clips to white
    picture = overlay(raw, torch.zeros(30, 40, dtype=torch.long), ["a"], alpha=0.0)
    shown = np.asarray(picture)[:30, :40]
    assert np.array_equal(shown, np.asarray(load_image(path)))
    assert shown[0, 0].tolist() == [117, 117, 117] and shown[0, -1].tolist() == [233, 233, 233]  # v / 257


def test_overlay_blends_the_label_colours_and_adds_a_legend():
    image = Image.new("RGB", (8, 6), (0, 0, 0))
    label_map = torch.zeros(6, 8, dtype=torch.long)
    label_map[:, 4:] = 1
    picture = overlay(image, label_map, ["left", "right"], alpha=1.0)
    colours = palette(2)
    assert picture.width > 8 and np.asarray(picture)[0, 0].tolist() == list(colours[0])
    assert np.asarray(picture)[0, 7].tolist() == list(colours[1])
