"""maskclip.transforms: loading, mode conversion, preprocessing parity, to_batch validation."""
import contextlib
import functools
import io
import os
import pickle
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from images import SIZES, gradient16, in_mode, photo, photo_rgba
from maskclip.config import PreprocessConfig
from maskclip.errors import ConfigError, ImageNotFoundError, ImageReadError, InputError, InputTypeError
from maskclip.images import open_image
from maskclip.transforms import Preprocess, load_image, preprocess, segmentation_input, to_batch, to_rgb

TOL = 1e-6  # the parity contract; measured: 0.0 (bit-identical) in every parity case below

ORDINARY_MODES = ["1", "L", "P", "P+transparency", "RGBA", "LA", "PA", "CMYK", "YCbCr", "RGBX", "RGBa", "HSV", "LAB"]
HIGH_BIT_MODES = ["I;16", "I;16L", "I;16B", "I;16N", "I", "F"]
ALL_MODES = ["RGB", "La"] + ORDINARY_MODES + HIGH_BIT_MODES


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def cached_photo(width, height, seed=0):
    return photo(width, height, seed)


def all_photos():
    return [cached_photo(w, h, i) for i, (w, h) in enumerate(SIZES)]


def max_diff(a, b):
    return (a - b).abs().max().item()


def in_levels(diff, cfg):
    """A normalised difference ``[3, H, W]`` back in 8-bit pixel levels."""
    return diff.abs() * torch.tensor(cfg.std).view(3, 1, 1) * 255


# --- parity with open_clip and transformers ----------------------------------------------------


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("image_size", [224, 32, 336])
def test_preprocess_matches_open_clip_eval_transform(image_size, resize_mode):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(image_size, is_train=False, resize_mode=resize_mode)
    cfg = PreprocessConfig(image_size=image_size, resize_mode=resize_mode)
    for img in all_photos():
        ours, theirs = preprocess(img, cfg), reference(img)
        assert ours.shape == theirs.shape == (3, image_size, image_size), img.size
        assert max_diff(ours, theirs) <= TOL, img.size


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_preprocess_matches_open_clip_with_bilinear_interpolation(resize_mode):
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(224, is_train=False, resize_mode=resize_mode, interpolation="bilinear")
    cfg = PreprocessConfig(resize_mode=resize_mode, interpolation="bilinear")
    for img in all_photos():
        assert max_diff(preprocess(img, cfg), reference(img)) <= TOL, img.size


def test_preprocess_matches_open_clip_with_custom_mean_and_std():
    open_clip = pytest.importorskip("open_clip")
    mean, std = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)
    reference = open_clip.image_transform(64, is_train=False, mean=mean, std=std)
    img = cached_photo(333, 500)
    assert max_diff(preprocess(img, PreprocessConfig(image_size=64, mean=mean, std=std)), reference(img)) <= TOL


@pytest.mark.parametrize("mode", ORDINARY_MODES)
def test_preprocess_matches_open_clip_on_non_rgb_modes(mode):
    # open_clip resizes in the image's own mode and converts to RGB afterwards (premultiplied
    # alpha for RGBA/LA, nearest neighbour for P/1): the same image must give the same tensor.
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(224, is_train=False)
    img = in_mode(photo_rgba(333, 500, seed=3), mode)
    assert max_diff(preprocess(img, PreprocessConfig()), reference(img)) <= TOL


def transformers_processor(backend):
    """transformers' CLIP image processor: ``"default"`` or the PIL backend (transformers >= 5)."""
    if backend == "pil":
        module = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
        return module.CLIPImageProcessorPil()
    return pytest.importorskip("transformers").CLIPImageProcessor()


def transformers_pixels(processor, img):
    return torch.as_tensor(processor(images=img, return_tensors="pt")["pixel_values"][0])


def crops_agree(img, s=224):
    """Whether floor and round-half-to-even give the same center-crop offsets for ``img``."""
    w, h = img.size
    long = int(s * max(w, h) / min(w, h))
    return (long - s) % 4 != 3


def test_preprocess_matches_transformers_pil_backend():
    processor, cfg = transformers_processor("pil"), PreprocessConfig()
    for img in filter(crops_agree, all_photos()):
        assert max_diff(preprocess(img, cfg), transformers_pixels(processor, img)) <= TOL, img.size


def test_preprocess_close_to_transformers_default_clip_image_processor():
    # transformers 5's default CLIPImageProcessor resizes torch tensors (torchvision backend),
    # not PIL images, so it is not bit-identical with OpenAI/open_clip. Measured with
    # transformers 5.23 on these images: max abs diff 0.015 in normalised units (one 8-bit
    # level), 0.030 on some tiny images upscaled to 224. Bound: 0.035.
    processor, cfg = transformers_processor("default"), PreprocessConfig()
    for img in filter(crops_agree, all_photos()):
        assert max_diff(preprocess(img, cfg), transformers_pixels(processor, img)) <= 0.035, img.size


@pytest.mark.parametrize("backend", ["pil", "default"])
def test_transformers_crops_one_pixel_earlier_when_the_margin_is_3_mod_4(backend):
    # transformers floors the crop offset, torchvision (OpenAI CLIP, open_clip) rounds half to
    # even: a margin of 3 px gives offset 1 there and 2 here. We follow OpenAI/open_clip.
    processor, cfg = transformers_processor(backend), PreprocessConfig()
    img = cached_photo(227, 224, seed=9)
    ours, theirs = preprocess(img, cfg), transformers_pixels(processor, img)
    assert max_diff(ours, theirs) > 0.5
    assert max_diff(ours[:, :, :-1], theirs[:, :, 1:]) <= (TOL if backend == "pil" else 0.035)


# --- mode conversion ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
def test_every_pil_mode_preprocesses_to_three_channel_finite_tensor(mode):
    img = in_mode(photo_rgba(61, 47, seed=5), mode) if mode != "La" else photo_rgba(61, 47).convert("La")
    x = preprocess(img, PreprocessConfig(image_size=32))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.std() > 0.1  # the picture survived: not a constant (black or white) image


@pytest.mark.parametrize("mode", ALL_MODES)
def test_to_rgb_returns_an_rgb_image_of_the_same_size(mode):
    img = in_mode(photo_rgba(61, 47, seed=5), mode) if mode != "La" else photo_rgba(61, 47).convert("La")
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (61, 47)


@pytest.mark.parametrize("mode", ORDINARY_MODES)
def test_to_rgb_of_ordinary_modes_equals_pil_convert_rgb(mode):
    img = in_mode(photo_rgba(61, 47, seed=5), mode)
    assert to_rgb(img).tobytes() == img.convert("RGB").tobytes()


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N"])
def test_16bit_gradient_maps_to_monotone_full_range_8bit_gradient(mode):
    img = gradient16(300, 4, mode)
    row = np.asarray(to_rgb(img))[0, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)
    assert row[0] == 0 and row[-1] == 255
    values = np.asarray(img)[0].astype(int)
    assert np.array_equal(row, np.round(values / 257).astype(int))


def test_16bit_image_is_not_saturated_white():
    # convert("RGB") clips 16-bit values at 255; a 16-bit copy of an 8-bit photo must instead
    # come back as that photo.
    gray = cached_photo(80, 60).convert("L")
    wide = in_mode(gray.convert("RGB"), "I;16")
    assert np.asarray(wide.convert("RGB")).min() >= 254  # what PIL alone gives: white
    assert to_rgb(wide).tobytes() == gray.convert("RGB").tobytes()


def test_mode_I_with_8bit_values_converts_like_pil():
    img = Image.fromarray(np.asarray(cached_photo(40, 30).convert("L")).astype(np.int32))
    assert img.mode == "I"
    assert to_rgb(img).tobytes() == img.convert("RGB").tobytes()


def test_mode_I_with_16bit_values_is_divided_by_257():
    img = Image.fromarray(np.array([[1000, 2570, 32896]], dtype=np.int32))
    assert list(np.asarray(to_rgb(img))[0, :, 0]) == [4, 10, 128]  # not stretched to 0..255


def test_mode_I_with_negative_values_is_stretched_to_full_range():
    img = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    assert list(np.asarray(to_rgb(img))[0, :, 0]) == [0, 128, 255]


def test_mode_F_in_unit_range_is_scaled_by_255():
    img = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert list(np.asarray(to_rgb(img))[0, :, 0]) == [0, 128, 255]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_mode_F_with_non_finite_values_raises_input_error(bad):
    img = Image.fromarray(np.array([[0.0, bad, 1.0]], dtype=np.float32))
    with pytest.raises(InputError, match="NaN or infinite"):
        to_rgb(img)


@pytest.mark.parametrize("size", [(0, 5), (5, 0)])
def test_zero_size_image_raises_input_error(size):
    img = Image.new("RGB", size)
    with pytest.raises(InputError, match="zero size"):
        to_rgb(img)
    with pytest.raises(InputError, match="zero size"):
        preprocess(img, PreprocessConfig())


# --- loading files -----------------------------------------------------------------------------


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_file_left_open():
    """Fail if the block ends with more open file descriptors than it started with.

    Bind ``pytest.raises(...) as info`` inside it: ``info`` keeps the traceback, and so any
    image a failing loader still held, alive, so a file left open cannot hide behind the GC.
    """
    before = open_fds()
    yield
    assert open_fds() == before, "an image file was left open"


needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files via /proc")


def encoded(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header(width, height):
    """A PNG signature + IHDR chunk claiming ``width x height`` RGB pixels, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize("as_type", [str, Path])
def test_load_image_reads_a_path_as_rgb(tmp_path, as_type):
    img = photo_rgba(50, 40)
    path = tmp_path / "a.png"
    img.save(path)
    out = load_image(as_type(path))
    assert out.mode == "RGB" and out.tobytes() == img.convert("RGB").tobytes()


def test_load_image_converts_a_pil_image_to_rgb():
    img = photo_rgba(50, 40)
    assert load_image(img).tobytes() == img.convert("RGB").tobytes()


def test_missing_file_raises_image_not_found_naming_the_path(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageNotFoundError, match="nope.jpg") as info:
        load_image(path)
    assert isinstance(info.value, FileNotFoundError)


def test_directory_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)


BAD_FILES = {
    "corrupt bytes": ("x.png", lambda: np.random.RandomState(0).bytes(2000), "not a recognised image"),
    "empty file": ("x.png", lambda: b"", "not a recognised image"),
    "text named .jpg": ("x.jpg", lambda: b"hello, I am not a picture\n" * 10, "not a recognised image"),
    "truncated jpeg": ("x.jpg", lambda: encoded(cached_photo(200, 150), "JPEG")[:3000], "truncated"),
    "truncated png": ("x.png", lambda: encoded(cached_photo(200, 150), "PNG")[:5000], ""),
}


@needs_proc
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_unreadable_file_raises_image_read_error_and_closes_it(tmp_path, monkeypatch, case):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    name, make, reason = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(make())
    with no_file_left_open(), pytest.raises(ImageReadError, match=f"cannot read image .*{name}.*{reason}") as info:
        load_image(path)
    assert isinstance(info.value, ValueError)


@needs_proc
def test_multi_frame_file_is_closed_after_loading(tmp_path):
    frames = [cached_photo(40, 30, seed=i).convert("P") for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with no_file_left_open():
        img = open_image(path)  # still referenced: a file it kept open would still be open
        assert img.size == (40, 30) and img.mode == "P"
        assert load_image(path).tobytes() == img.convert("RGB").tobytes()


@needs_proc
@pytest.mark.parametrize("warning_filter", ["ignore", "error", "always"])
def test_decompression_bomb_at_pil_warning_level_raises_image_read_error(tmp_path, monkeypatch, warning_filter):
    # 1600 pixels with a limit of 1000: PIL itself only warns (it raises above 2x the limit);
    # whatever the caller's warning filters, loading must fail.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "bomb.png"
    cached_photo(40, 40).save(path)
    with no_file_left_open(), warnings.catch_warnings(record=True):
        warnings.simplefilter(warning_filter, Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match="bomb.png.*(decompression bomb|too large)") as info:
            load_image(path)


def test_decompression_bomb_at_pil_error_level_raises_image_read_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "bomb.png"
    cached_photo(100, 100).save(path)
    with pytest.raises(ImageReadError, match="bomb.png.*too large"):
        load_image(path)


@needs_proc
@pytest.mark.parametrize("width, height", [(10_000, 10_000), (100_000, 100_000)])
def test_forged_huge_png_header_is_refused_before_decoding(tmp_path, width, height):
    # 1e8 pixels: between PIL's default warning (~8.9e7) and error levels; 1e10: above both.
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(width, height))
    start = time.perf_counter()
    with no_file_left_open(), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ImageReadError, match="huge.png") as info:
            load_image(path)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("bad", [b"a.png", 3, None, ["a.png"]])
def test_load_image_rejects_other_types_with_type_error(bad):
    with pytest.raises(InputTypeError, match="path .* or a PIL image"):
        load_image(bad)


# --- preprocess and Preprocess -----------------------------------------------------------------


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("width, height, expected", [(640, 480, (3, 32, 42)), (480, 640, (3, 42, 32)),
                                                     (1000, 100, (3, 32, 320))])
def test_preprocess_without_crop_keeps_the_aspect_ratio(resize_mode, width, height, expected):
    cfg = PreprocessConfig(image_size=32, resize_mode=resize_mode)
    assert preprocess(cached_photo(width, height), cfg, crop=False).shape == expected


def test_preprocess_without_crop_contains_the_center_crop():
    img, cfg = cached_photo(640, 480), PreprocessConfig(image_size=32)
    whole, cropped = preprocess(img, cfg, crop=False), preprocess(img, cfg)
    left = round((whole.shape[-1] - 32) / 2)
    assert torch.equal(whole[:, :, left:left + 32], cropped)


def test_preprocess_size_argument_overrides_the_config():
    assert preprocess(cached_photo(100, 80), PreprocessConfig(), size=48).shape == (3, 48, 48)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "224"])
def test_preprocess_rejects_a_bad_size(bad):
    with pytest.raises(InputError, match="size must be a positive integer"):
        preprocess(cached_photo(100, 80), PreprocessConfig(), size=bad)


def test_preprocess_rejects_a_path_with_a_type_error_pointing_to_load_image():
    with pytest.raises(InputTypeError, match="expected a PIL image; got str.*load_image"):
        preprocess("a.jpg", PreprocessConfig())


def test_preprocess_nearest_interpolation_gives_values_present_in_the_image():
    img = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("RGB")
    cfg = PreprocessConfig(image_size=6, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1))
    assert set(preprocess(img, cfg).unique().tolist()) == {0.0, 1.0}


def test_preprocess_object_equals_preprocess_function_and_is_picklable():
    cfg = PreprocessConfig(image_size=64)
    transform = pickle.loads(pickle.dumps(Preprocess(cfg)))
    img = cached_photo(333, 500)
    assert torch.equal(transform(img), preprocess(img, cfg))


def test_preprocess_object_repr_names_its_settings():
    text = repr(Preprocess(PreprocessConfig(image_size=336, resize_mode="squash")))
    assert text.startswith("Preprocess(") and "image_size=336" in text and "'squash'" in text
    assert "bicubic" in text and "0.48145466" in text


def test_preprocess_object_rejects_what_is_not_a_config():
    with pytest.raises(InputTypeError, match="PreprocessConfig"):
        Preprocess({"image_size": 224})


# --- to_batch ----------------------------------------------------------------------------------


def pixels(img):
    """PIL RGB -> uint8 tensor [3, H, W]."""
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def batch_inputs(tmp_path):
    img = cached_photo(90, 70)
    path = tmp_path / "a.png"
    img.save(path)
    return {
        "str path": (str(path), (1, 3, 32, 32)),
        "Path": (path, (1, 3, 32, 32)),
        "PIL": (img, (1, 3, 32, 32)),
        "numpy HxWx3": (np.array(img), (1, 3, 32, 32)),
        "uint8 [3,H,W]": (pixels(img), (1, 3, 32, 32)),
        "uint8 [B,3,H,W]": (pixels(img)[None].repeat(2, 1, 1, 1), (2, 3, 32, 32)),
        "float [3,H,W]": (torch.randn(3, 40, 40), (1, 3, 40, 40)),
        "float [B,3,H,W]": (torch.randn(2, 3, 40, 40), (2, 3, 40, 40)),
        "mixed list": ([img, str(path), pixels(img), np.array(img), torch.randn(3, 32, 32)], (5, 3, 32, 32)),
        "tuple": ((img, img), (2, 3, 32, 32)),
    }


@pytest.mark.parametrize("form", ["str path", "Path", "PIL", "numpy HxWx3", "uint8 [3,H,W]", "uint8 [B,3,H,W]",
                                  "float [3,H,W]", "float [B,3,H,W]", "mixed list", "tuple"])
def test_to_batch_gives_the_expected_shape_for_each_input_form(tmp_path, form):
    x, shape = batch_inputs(tmp_path)[form]
    out = to_batch(x, PreprocessConfig(image_size=32))
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_to_batch_path_pil_and_numpy_give_identical_tensors(tmp_path):
    img = photo_rgba(90, 70)
    path = tmp_path / "a.png"
    img.save(path)
    cfg = PreprocessConfig(image_size=32)
    expected = preprocess(img, cfg)[None]
    assert torch.equal(to_batch(path, cfg), expected)  # read in its own mode, like Image.open
    assert torch.equal(to_batch(img, cfg), expected)
    rgb = img.convert("RGB")
    assert torch.equal(to_batch(np.array(rgb), cfg), preprocess(rgb, cfg)[None])


def test_to_batch_passes_float32_tensors_through_unchanged():
    x = torch.randn(2, 3, 40, 56) * 10
    assert to_batch(x, PreprocessConfig()) is x
    assert torch.equal(to_batch(x[0], PreprocessConfig())[0], x[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_to_batch_converts_other_float_dtypes_to_float32_without_changing_values(dtype):
    x = torch.randn(1, 3, 16, 16).to(dtype)
    out = to_batch(x, PreprocessConfig())
    assert out.dtype == torch.float32 and torch.equal(out, x.float())


def test_to_batch_of_preprocessed_image_equals_to_batch_of_image():
    # model.encode_image(preprocess(img)) must see what model.encode_image(img) sees.
    cfg, img = PreprocessConfig(image_size=32), cached_photo(90, 70)
    assert torch.equal(to_batch(Preprocess(cfg)(img), cfg), to_batch(img, cfg))


# Measured max / mean differences, in 8-bit levels, between the uint8 tensor path and the PIL
# path over SIZES and image sizes 32, 224, 336, cropped and uncropped: bicubic 2 / 0.0013,
# bilinear 2 / 0.098 (bilinear upscaling by 1.5x has many exact ties), nearest 0 / 0.
UINT8_BOUNDS = {"bicubic": (2.0, 0.005), "bilinear": (2.0, 0.15), "nearest": (0.0, 0.0)}


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_uint8_tensor_path_is_close_to_the_pil_path(interpolation, resize_mode):
    worst_max, worst_mean = UINT8_BOUNDS[interpolation]
    for image_size in (32, 224, 336):
        cfg = PreprocessConfig(image_size=image_size, interpolation=interpolation, resize_mode=resize_mode)
        for img in all_photos():
            levels = in_levels(to_batch(pixels(img), cfg)[0] - preprocess(img, cfg), cfg)
            assert levels.max().item() <= worst_max + 1e-3, (image_size, img.size)
            assert levels.mean().item() <= worst_mean + 1e-6, (image_size, img.size)


def test_uint8_batch_equals_uint8_images_one_by_one():
    cfg = PreprocessConfig(image_size=32)
    images = torch.stack([pixels(cached_photo(90, 70, seed=i)) for i in range(3)])
    assert torch.equal(to_batch(images, cfg), torch.cat([to_batch(im, cfg) for im in images]))


def test_to_batch_list_equals_items_one_by_one():
    cfg = PreprocessConfig(image_size=32)
    items = [cached_photo(90, 70), pixels(cached_photo(50, 80)), torch.randn(3, 32, 32)]
    assert torch.equal(to_batch(items, cfg), torch.cat([to_batch(x, cfg) for x in items]))


def test_to_batch_size_argument_applies_to_all_but_float_tensors():
    cfg = PreprocessConfig(image_size=32)
    assert to_batch([cached_photo(90, 70), pixels(cached_photo(50, 80))], cfg, size=48).shape == (2, 3, 48, 48)
    assert to_batch(torch.randn(3, 40, 40), cfg, size=48).shape == (1, 3, 40, 40)


BAD_BATCH_INPUTS = {
    "int": (3, InputTypeError, "got int"),
    "bytes": (b"\x89PNG", InputTypeError, "got bytes"),
    "dict": ({"image": 1}, InputTypeError, "got dict"),
    "nested list": ([[cached_photo(20, 20)]], InputTypeError, r"images\[0\]: .*got list"),
    "empty list": ([], InputError, "empty list"),
    "empty tuple": ((), InputError, "empty tuple"),
    "rank-2 tensor": (torch.zeros(3, 8, dtype=torch.uint8), InputError, r"\[3, H, W\] or \[B, 3, H, W\]; got \[3, 8\]"),
    "rank-5 tensor": (torch.zeros(1, 1, 3, 8, 8), InputError, r"got \[1, 1, 3, 8, 8\]"),
    "4 channels": (torch.zeros(4, 8, 8, dtype=torch.uint8), InputError, "got 4 channels; convert RGBA to RGB"),
    "1 channel": (torch.zeros(1, 1, 8, 8), InputError, "got 1 channel"),
    "channels last": (torch.zeros(8, 8, 3, dtype=torch.uint8), InputError, r"channels-last; use x.permute\(2, 0, 1\)"),
    "zero-size dim": (torch.zeros(3, 0, 8, dtype=torch.uint8), InputError, "zero-size dimension"),
    "zero batch": (torch.zeros(0, 3, 8, 8), InputError, "zero-size dimension"),
    "NaN": (torch.tensor(float("nan")).expand(3, 8, 8), InputError, "NaN or infinite"),
    "Inf": (torch.tensor(float("inf")).expand(3, 8, 8), InputError, "NaN or infinite"),
    "bool tensor": (torch.zeros(3, 8, 8, dtype=torch.bool), InputTypeError, "got dtype torch.bool"),
    "complex tensor": (torch.zeros(3, 8, 8, dtype=torch.complex64), InputTypeError, "got dtype torch.complex64"),
    "int64 tensor": (torch.zeros(3, 8, 8, dtype=torch.int64), InputTypeError, "uint8 .*got dtype torch.int64"),
    "int16 tensor": (torch.zeros(3, 8, 8, dtype=torch.int16), InputTypeError, "got dtype torch.int16"),
    "float numpy": (np.zeros((8, 8, 3), np.float32), InputTypeError, "uint8 pixels.*got dtype float32"),
    "RGBA numpy": (np.zeros((8, 8, 4), np.uint8), InputError, "got 4 channels; convert RGBA to RGB"),
    "gray numpy": (np.zeros((8, 8), np.uint8), InputError, r"\[H, W, 3\] \(RGB\); got \[8, 8\]"),
    "zero-size numpy": (np.zeros((0, 8, 3), np.uint8), InputError, "zero size"),
    "mixed float sizes": ([torch.randn(3, 32, 32), torch.randn(3, 40, 40)], InputError, "same size"),
    "float size vs config": ([cached_photo(20, 20), torch.randn(3, 40, 40)], InputError, r"images\[1\] gives"),
    "bad item names index": ([cached_photo(20, 20), "x", 5], ImageNotFoundError, "'x'"),
    "bad type in list": ([cached_photo(20, 20), 5], InputTypeError, r"images\[1\]: .*got int"),
    "zero-size PIL": (Image.new("RGB", (0, 4)), InputError, "zero size"),
}


@pytest.mark.parametrize("case", list(BAD_BATCH_INPUTS))
def test_to_batch_rejects_bad_input_with_a_helpful_error(case):
    value, error, message = BAD_BATCH_INPUTS[case]
    with pytest.raises(error, match=message):
        to_batch(value, PreprocessConfig(image_size=32))


# --- segmentation_input ------------------------------------------------------------------------


def test_segmentation_input_of_pil_image_is_uncropped_and_reports_original_size():
    img, cfg = cached_photo(640, 480), PreprocessConfig(image_size=32)
    x, size = segmentation_input(img, cfg)
    assert size == (480, 640) and x.shape == (1, 3, 32, 42)
    assert torch.equal(x[0], preprocess(img, cfg, crop=False))


def test_segmentation_input_of_path_matches_pil(tmp_path):
    img, cfg = cached_photo(100, 300), PreprocessConfig(image_size=32)
    img.save(tmp_path / "a.png")
    x, size = segmentation_input(tmp_path / "a.png", cfg, size=48)
    assert size == (300, 100) and torch.equal(x, segmentation_input(img, cfg, size=48)[0])


def test_segmentation_input_of_uint8_tensor_is_close_to_pil():
    img, cfg = cached_photo(640, 480), PreprocessConfig(image_size=32)
    x, size = segmentation_input(pixels(img)[None], cfg)
    assert size == (480, 640) and x.shape == (1, 3, 32, 42)
    assert in_levels(x[0] - preprocess(img, cfg, crop=False), cfg).max() <= 2.001


def test_segmentation_input_uses_float_tensor_as_is():
    x = torch.randn(3, 48, 64)
    out, size = segmentation_input(x, PreprocessConfig(image_size=32))
    assert size == (48, 64) and torch.equal(out[0], x)


@pytest.mark.parametrize("value, error", [(torch.zeros(2, 3, 8, 8), InputError),
                                          ([cached_photo(20, 20)], InputTypeError)])
def test_segmentation_input_rejects_more_than_one_image(value, error):
    with pytest.raises(error, match="one image"):
        segmentation_input(value, PreprocessConfig())


# --- property ----------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    width=st.integers(1, 300),
    height=st.integers(1, 300),
    mode=st.sampled_from(["RGB", "RGBA", "L", "P", "1", "CMYK", "I;16", "I", "F", "LA"]),
    image_size=st.sampled_from([16, 32, 64]),
    resize_mode=st.sampled_from(["shortest", "squash"]),
    interpolation=st.sampled_from(["bicubic", "bilinear", "nearest"]),
)
def test_any_size_and_mode_gives_a_finite_square_tensor(width, height, mode, image_size, resize_mode, interpolation):
    img = in_mode(photo(width, height, seed=width * 1000 + height), mode)
    cfg = PreprocessConfig(image_size=image_size, resize_mode=resize_mode, interpolation=interpolation)
    x = preprocess(img, cfg)
    assert x.shape == (3, image_size, image_size) and torch.isfinite(x).all()
    if mode == "RGB":
        y = to_batch(pixels(img), cfg)[0]
        assert y.shape == x.shape and in_levels(y - x, cfg).max() <= 2.001


# --- resize_mode "longest" (open_clip's ResizeKeepRatio(longest=1) + CenterCropOrPad) ---------------


@pytest.mark.parametrize("mode", ORDINARY_MODES)
def test_longest_matches_open_clip_on_non_rgb_modes(mode):
    # the canvas is filled with 0 in the image's own mode, before the RGB conversion, as open_clip pads:
    # palette index 0 for P images, transparent black for RGBA
    open_clip = pytest.importorskip("open_clip")
    reference = open_clip.image_transform(96, is_train=False, resize_mode="longest")
    for w, h in ((333, 500), (500, 333)):
        img = in_mode(photo_rgba(w, h, seed=3), mode)
        assert max_diff(preprocess(img, PreprocessConfig(image_size=96, resize_mode="longest")), reference(img)) <= TOL


def test_longest_pads_black_around_the_whole_image():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    cfg = PreprocessConfig(image_size=64, resize_mode="longest")
    x = preprocess(img, cfg)
    white = (torch.ones(3) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    black = -torch.tensor(cfg.mean) / torch.tensor(cfg.std)
    assert torch.allclose(x[:, 16:48, :], white.view(3, 1, 1).expand(3, 32, 64))  # 64 x 32, centred
    assert torch.allclose(x[:, :16], black.view(3, 1, 1).expand(3, 16, 64))
    assert torch.allclose(x[:, 48:], black.view(3, 1, 1).expand(3, 16, 64))


def test_an_open_clip_folder_with_resize_mode_longest_loads_and_preprocesses_as_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    import maskclip
    import factories

    model_cfg = factories.open_clip_model_cfg(factories.TINY)
    preprocess_cfg = dict(factories.open_clip_preprocess_cfg(resize_mode="longest"), fill_color=0)
    folder = factories.write_open_clip_folder(tmp_path / "oc", factories.random_open_clip(model_cfg), model_cfg,
                                              preprocess_cfg)
    model = maskclip.load(folder)
    assert model.config.preprocess.resize_mode == "longest"
    size = model.config.preprocess.image_size
    reference = open_clip.image_transform(size, is_train=False, resize_mode="longest")
    img = cached_photo(300, 120)
    assert max_diff(model.image_batch(img)[0], reference(img)) <= TOL
    with pytest.raises(ConfigError, match="CLIPImageProcessor"):
        model.save_pretrained(tmp_path / "hf", format="transformers")
    model.save_pretrained(tmp_path / "again", format="open_clip")
    assert maskclip.load(tmp_path / "again").config.preprocess.resize_mode == "longest"


def test_longest_with_a_fill_colour_other_than_black_is_refused():
    from maskclip.convert.open_clip_layout import _preprocess_config

    with pytest.raises(ConfigError, match="fill_color"):
        _preprocess_config({"resize_mode": "longest", "fill_color": 128}, 224)
    assert _preprocess_config({"resize_mode": "shortest", "fill_color": 128}, 224).resize_mode == "shortest"
