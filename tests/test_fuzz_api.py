"""Property tests of the public API: any input gives a finite result or a documented error.

Each property draws inputs across the whole space a caller can pass (every PIL mode, sizes from
1 x 1 to extreme aspect ratios, tensors of any rank / dtype / channel count with NaN and Inf,
texts with control characters, NUL, lone surrogates, non-strings, label lists, model names) and
checks two things: only ``maskclip.MaskCLIPError`` escapes, with a message that explains (see
``fuzzing.outcome``); and where the input is valid by the documented rules, the call succeeds
with finite output of the documented shape. Examples tried are counted per property.
"""
from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest
import torch
from hypothesis import example, given, strategies as st
from PIL import Image

import maskclip
from fuzzing import budget, count, outcome
from maskclip import (ImageReadError, InputError, InputTypeError, ModelNotFoundError,
                      WeightsUnavailableError)
from maskclip.model import MAX_PATCHES
from maskclip.tokenizer import get_tokenizer
from maskclip.transforms import MAX_FLOAT_PIXEL

PATCH, SIZE, EMBED = 16, 64, 32  # the tiny test model (conftest.tiny_config)
SOT, EOT, VOCAB = 49406, 49407, 49408

PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "La", "PA",
             "RGBX", "RGBa", "I;16", "I;16L", "I;16B", "I;16N"]
TENSOR_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                 torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64]


pytestmark = pytest.mark.usefixtures("one_thread")


@contextlib.contextmanager
def pixel_limit(limit):
    """``PIL.Image.MAX_IMAGE_PIXELS`` set to ``limit`` for the block (hypothesis forbids monkeypatch)."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


@contextlib.contextmanager
def working_dir(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def assert_embeddings(out, rows: int):
    assert out.shape == (rows, EMBED) and out.dtype == torch.float32
    assert torch.isfinite(out).all(), "finite input gave non-finite embeddings"


# --- images: PIL -------------------------------------------------------------------------------

side = st.one_of(st.integers(1, 80), st.sampled_from([1, 2, 15, 16, 17, 3000]))


@st.composite
def pil_images(draw):
    mode = draw(st.sampled_from(PIL_MODES))
    w, h = draw(side), draw(side)
    if w * h > 200_000:  # keep one extreme side, not two
        h = draw(st.integers(1, 3))
    n_bytes = len(Image.new(mode, (w, h)).tobytes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    img = Image.frombytes(mode, (w, h), rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return img


@budget(200)
@given(img=pil_images(), limit=st.sampled_from([None, 20_000]))
@example(img=Image.new("L", (1, 100_000)), limit=None)  # resized to 64 x 6.4M px before the crop: refused
@example(img=Image.frombytes("F", (2, 1), b"\x01\x00\xa0\x7f" * 2), limit=None)  # signalling NaN: no numpy warning
@example(img=Image.new("F", (1, 35), float("nan")), limit=20_000)  # two reasons to refuse; either may be given
@example(img=Image.new("F", (4, 4), float("nan")), limit=None)
def test_pil_image_of_any_mode_and_size_encodes_to_finite_embedding_or_documented_error(model, img, limit):
    with pixel_limit(limit if limit is not None else Image.MAX_IMAGE_PIXELS):
        out, err = outcome("encode_image(PIL image)", model.encode_image, img)
        over_limit = Image.MAX_IMAGE_PIXELS is not None and img.width * img.height > Image.MAX_IMAGE_PIXELS
        short, long = sorted(img.size)
        resized_too_big = SIZE * int(SIZE * long / short) > Image.MAX_IMAGE_PIXELS
    f_not_finite = img.mode == "F" and not np.isfinite(np.asarray(img)).all()
    if err is None:
        assert_embeddings(out, 1)
    else:
        assert over_limit or resized_too_big or f_not_finite, f"refused a valid image: {err}"
        assert isinstance(err, InputError)
        assert "MAX_IMAGE_PIXELS" in str(err) or (f_not_finite and "NaN" in str(err))


def test_closed_pil_image_raises_image_read_error(model):
    img = Image.new("RGB", (20, 20))
    img.close()
    with pytest.raises(ImageReadError, match="closed"):
        model.encode_image(img)


def test_lazily_opened_image_over_the_pixel_limit_is_refused_before_decoding(model, tmp_path, monkeypatch):
    Image.new("RGB", (50, 50)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 2500 px: PIL's open only warns
    with pytest.warns(Image.DecompressionBombWarning):
        lazy = Image.open(tmp_path / "big.png")
    with lazy:
        with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
            model.encode_image(lazy)
        assert lazy.fp is not None  # not decoded: PIL closes the file of a single-frame image on load()


# --- images: corrupt files ---------------------------------------------------------------------

def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    img = Image.frombytes("RGB", (24, 18), np.random.default_rng(0).integers(0, 256, 24 * 18 * 3, dtype=np.uint8).tobytes())
    img.save(buf, format=fmt)
    return buf.getvalue()


ENCODED = {fmt: _encoded(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA")}


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # PIL's own notes on the broken files it reads
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns, then maskclip refuses
@budget(300)
@given(fmt=st.sampled_from(sorted(ENCODED)), cut=st.one_of(st.just(1.0), st.floats(0, 1)), flips=st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), max_size=6))
def test_corrupt_image_file_gives_finite_embedding_or_image_read_error(model, tmp_path_factory, fmt, cut, flips):
    data = bytearray(ENCODED[fmt][: max(1, int(len(ENCODED[fmt]) * cut))] if cut < 0.95 else ENCODED[fmt])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    path = tmp_path_factory.mktemp("img") / f"x.{fmt.lower()}"
    path.write_bytes(bytes(data))
    with pixel_limit(1 << 20):  # a flipped size field may not make the fuzzer decode 80 Mpx
        out, err = outcome("encode_image(corrupt file)", model.encode_image, str(path))
    if err is None:
        assert_embeddings(out, 1)
    else:
        assert isinstance(err, InputError)  # ImageReadError, or the pixel limit
        assert "x." in str(err) or "MAX_IMAGE_PIXELS" in str(err)


@pytest.mark.parametrize("path", ["a" * 5000, "a\x00b.png", "dir/\ud800.png", ""])
def test_unusable_paths_raise_documented_errors(model, path):
    with pytest.raises((ImageReadError, maskclip.ImageNotFoundError)):
        model.encode_image(path)


# --- images: tensors and arrays ----------------------------------------------------------------

@st.composite
def image_tensors(draw):
    """Half the time an image-shaped tensor of an image dtype (valid unless its values are not), else anything."""
    if draw(st.booleans()):
        dtype = draw(st.sampled_from([torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64]))
        lo_side = 1 if dtype == torch.uint8 else PATCH
        dims = [draw(st.integers(1, 3))] * draw(st.booleans()) + [3, draw(st.integers(lo_side, 72)),
                                                                   draw(st.integers(lo_side, 72))]
    else:
        dtype = draw(st.sampled_from(TENSOR_DTYPES))
        rank = draw(st.sampled_from([0, 1, 2, 3, 3, 4, 4, 4, 5]))
        dims = [draw(st.one_of(st.integers(0, 4), st.just(3), st.integers(1, 72))) for _ in range(rank)]
        if rank >= 3 and draw(st.booleans()):
            dims[-3] = 3
        if rank >= 2 and draw(st.booleans()):
            dims[-2] = dims[-1] = draw(st.sampled_from([1, 15, 16, 17, 32, 64, 70]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if dtype.is_floating_point or dtype.is_complex:
        scale = draw(st.sampled_from([1.0, 1.0, 3.0, 255.0, MAX_FLOAT_PIXEL / 4, 2 * MAX_FLOAT_PIXEL, 1e30, 3e38]))
        x = (torch.randn(dims, generator=g, dtype=torch.float64) * scale).to(dtype)
        specials = draw(st.sampled_from([0, 0, 0, 1, 2]))
        for _ in range(specials) if x.numel() else ():
            x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
    elif dtype == torch.bool:
        x = torch.rand(dims, generator=g) > 0.5
    else:
        info = torch.iinfo(dtype)
        x = torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, dims, generator=g).to(dtype)
        if dtype == torch.uint8:
            x = torch.randint(0, 256, dims, generator=g, dtype=torch.uint8)
    if x.dim() == 4 and x.shape[0] == 1 and draw(st.booleans()):
        x = x.expand(3, *x.shape[1:])  # a broadcast view: stride 0 on the batch
    return x


def tensor_is_valid(x: torch.Tensor) -> bool:
    """The documented rules for an image tensor (maskclip.transforms.to_batch, MaskCLIP.image_batch)."""
    if x.dtype != torch.uint8 and not x.is_floating_point():
        return False
    if x.dim() not in (3, 4) or x.shape[-3] != 3 or 0 in x.shape:
        return False
    if x.dtype == torch.uint8:
        return True
    x64 = x.double()
    return bool(torch.isfinite(x64).all()) and float(x64.abs().max()) <= MAX_FLOAT_PIXEL \
        and min(x.shape[-2:]) >= PATCH


@budget(400)
@given(x=image_tensors())
@example(x=torch.full((1, 3, 64, 64), 1e30))  # finite, but overflowed the norms to NaN before the range check
@example(x=torch.zeros(1, 3, 64, 64, device="meta"))
@example(x=torch.zeros(1, 3, 64, 64).to_sparse())
def test_image_tensor_of_any_rank_dtype_and_values_gives_finite_embedding_or_documented_error(model, x):
    out, err = outcome("encode_image(tensor)", model.encode_image, x)
    if x.is_meta or x.layout != torch.strided:
        assert isinstance(err, InputTypeError)
        return
    valid = tensor_is_valid(x)
    if valid:
        assert err is None, f"refused a valid tensor {x.dtype} {list(x.shape)}: {err}"
        assert_embeddings(out, 1 if x.dim() == 3 else x.shape[0])
    else:
        assert err is not None, f"accepted an invalid tensor {x.dtype} {list(x.shape)}"
        if x.dtype != torch.uint8 and not x.is_floating_point():
            assert isinstance(err, InputTypeError) and str(x.dtype) in str(err)


@budget(100)
@given(dtype=st.sampled_from([np.uint8, np.uint8, np.uint8, np.int16, np.float32, np.float64, np.bool_]),
       shape=st.one_of(st.tuples(st.integers(1, 40), st.integers(1, 40), st.just(3)).map(list),
                       st.lists(st.integers(0, 40), min_size=0, max_size=4)), seed=st.integers(0, 2**31))
def test_numpy_array_of_any_shape_and_dtype_gives_finite_embedding_or_documented_error(model, dtype, shape, seed):
    a = (np.random.default_rng(seed).random(shape) * 255).astype(dtype)
    out, err = outcome("encode_image(numpy)", model.encode_image, a)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and 0 not in a.shape:
        assert err is None
        assert_embeddings(out, 1)
    else:
        assert isinstance(err, (InputError, InputTypeError))


def test_huge_expanded_views_are_refused_without_materialising(model):
    # Views of one pixel, logically 10^10 pixels: refused from the shape, before any copy.
    for x in (torch.zeros(1, 3, 1, 1, dtype=torch.uint8).expand(1, 3, 100_000, 100_000),
              torch.zeros(1, 3, 1, 1).expand(1, 3, 100_000, 100_000)):
        with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
            model.encode_image(x)
    a = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3))
    with pytest.raises(InputError, match="MAX_IMAGE_PIXELS"):
        model.encode_image(a)


def test_float_input_over_the_patch_limit_is_refused_before_encoding(model):
    side_px = PATCH * (int(MAX_PATCHES ** 0.5) + 1)
    x = torch.zeros(1, 3, 1, 1).expand(1, 3, side_px, side_px)
    with pytest.raises(InputError, match="MAX_PATCHES"):
        model.encode_image(x)
    with pytest.raises(InputError, match="MAX_PATCHES"):
        model.dense_features(x)


item = st.sampled_from(["pil", "pil_odd", "uint8", "float64px", "float32px", "none", "missing", "nested"])


def make_item(kind: str, seed: int, tmp: str):
    g = torch.Generator().manual_seed(seed)
    if kind == "pil":
        return Image.fromarray(torch.randint(0, 256, (30, 50, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    if kind == "pil_odd":
        return Image.new("P", (7, 90), seed % 256)
    if kind == "uint8":
        return torch.randint(0, 256, (3, 40, 41), generator=g, dtype=torch.uint8)
    if kind == "float64px":
        return torch.randn(1, 3, SIZE, SIZE, generator=g)
    if kind == "float32px":
        return torch.randn(3, 32, 32, generator=g)
    if kind == "missing":
        return os.path.join(tmp, f"missing-{seed}.png")
    return None if kind == "none" else [torch.randn(3, SIZE, SIZE, generator=g)]


@budget(100)
@given(kinds=st.lists(item, max_size=4), seed=st.integers(0, 1000))
def test_list_of_mixed_images_encodes_each_item_as_alone_or_raises_documented_error(model, tmp_path_factory, kinds, seed):
    tmp = str(tmp_path_factory.getbasetemp())
    items = [make_item(k, seed + i, tmp) for i, k in enumerate(kinds)]
    out, err = outcome("encode_image(list)", model.encode_image, items)
    # Float tensors keep their own size (32 px here), everything else becomes 64 px: no mixing.
    valid = bool(kinds) and all(k in ("pil", "pil_odd", "uint8", "float64px", "float32px") for k in kinds) \
        and ("float32px" not in kinds or set(kinds) == {"float32px"})
    if not valid:
        assert err is not None
        return
    assert err is None, err
    assert_embeddings(out, len(items))
    with torch.no_grad():
        for i, x in enumerate(items):
            assert torch.allclose(out[i], model.encode_image(x)[0], atol=1e-5)


# --- dense features and segmentation -----------------------------------------------------------

sizes_arg = st.one_of(st.none(), st.integers(-3, 200), st.sampled_from([True, 10**6, 2.5, "64"]))


@budget(100)
@given(method=st.one_of(st.sampled_from(["vanilla", "maskclip", "sclip", "clearclip"]), st.text(max_size=8)),
       image_size=sizes_arg)
def test_dense_features_with_any_method_and_size_give_finite_maps_or_documented_error(model, rgb_image_small, method, image_size):
    out, err = outcome("dense_features", model.dense_features, rgb_image_small, method=method, image_size=image_size)
    good_size = image_size is None or (type(image_size) is int and PATCH <= image_size <= 2048)
    if method in ("vanilla", "maskclip", "sclip", "clearclip") and good_size:
        assert err is None, err
        g = (image_size or SIZE) // PATCH
        assert out.shape == (1, EMBED, g, g) and torch.isfinite(out).all()
    elif err is None:  # 1..15 px is allowed by to_batch only to be refused as "less than a patch"
        raise AssertionError(f"accepted method={method!r} image_size={image_size!r}")


@budget(100)
@given(w=st.integers(1, 120), h=st.integers(1, 120), size=st.one_of(st.none(), st.none(), st.integers(-2, 96)),
       window=st.one_of(st.none(), st.none(), st.integers(-2, 96), st.just(True)),
       stride=st.one_of(st.none(), st.none(), st.integers(-2, 96)),
       labels=st.one_of(st.lists(st.sampled_from(["a cat", "a dog", "sky", "\x00"]), min_size=1, max_size=4, unique=True),
                        st.lists(st.sampled_from(["a cat", "a dog", "", " "]), min_size=0, max_size=3)))
def test_segment_gives_a_label_per_pixel_or_documented_error(model, w, h, size, window, stride, labels):
    img = Image.new("RGB", (w, h), (w % 256, h % 256, 90))
    out, err = outcome("segment", model.segment, img, labels, size=size, window=window, stride=stride)
    window_ok = window is None or (type(window) is int and window >= PATCH
                                   and (stride is None or 1 <= stride <= window))
    if labels_valid(labels) and window_ok and (size is None or size >= 1):
        assert err is None or "MAX_PATCHES" in str(err), err
    else:
        assert err is not None
    if err is None:
        assert out.shape == (h, w) and out.dtype == torch.long
        assert 0 <= int(out.min()) and int(out.max()) < len(labels)


@pytest.fixture(scope="module")
def rgb_image_small():
    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8), "RGB")


# --- texts -------------------------------------------------------------------------------------

hostile_piece = st.one_of(
    st.characters(),  # any code point but surrogates
    st.characters(categories=["Cs"]),  # lone surrogates
    st.characters(max_codepoint=0x1F),  # C0 controls, NUL included
    st.sampled_from(["\x00", "\u200b", "\ufeff", "\u202e", "&amp;", "<end_of_text>", "<start_of_text>", "\r\n",
                     "cafÃ©", " ", "a"]),
)
hostile_text = st.lists(hostile_piece, max_size=60).map("".join)
not_text = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8), st.just(b"x"),
                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
texts_arg = st.one_of(hostile_text, st.lists(hostile_text, max_size=4), st.tuples(hostile_text, hostile_text),
                      not_text, st.lists(st.one_of(hostile_text, not_text), min_size=1, max_size=3))


def is_text_input(texts) -> bool:
    return isinstance(texts, str) or (isinstance(texts, (list, tuple)) and len(texts) > 0
                                      and all(isinstance(t, str) for t in texts))


@budget(200)
@given(texts=texts_arg)
@example(texts="a\ud800b")  # a lone surrogate cannot be UTF-8 encoded; ftfy turns it into U+FFFD first
@example(texts=["\x00", "\x1b[31m red \x07"])
def test_any_text_input_gives_valid_ids_and_finite_embeddings_or_documented_error(model, texts):
    ids, err = outcome("tokenize", maskclip.tokenize, texts)
    if not is_text_input(texts):
        assert isinstance(err, (InputError, InputTypeError))
        return
    assert err is None, err
    rows = 1 if isinstance(texts, str) else len(texts)
    assert ids.shape == (rows, 77) and ids.dtype == torch.int64
    # "<end_of_text>" written in a text is the EOT token for open_clip too, so a row may hold several.
    assert (ids[:, 0] == SOT).all() and ((ids == EOT).sum(1) >= 1).all() and int(ids.max()) < VOCAB
    out, err = outcome("encode_text(str)", model.encode_text, texts)
    assert err is None, err
    assert_embeddings(out, rows)


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    import open_clip

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return open_clip.get_tokenizer("ViT-B-16")


@budget(150)
@given(text=hostile_text)
@example(text="\ud83d\ude00 \ud83d x\udfff")  # a surrogate pair is joined, lone ones replaced, as open_clip does
def test_hostile_text_gives_the_same_ids_as_open_clip(open_clip_tokenizer, text):
    ours = maskclip.tokenize(text)
    assert torch.equal(ours, open_clip_tokenizer(text)), repr(text)
    count("tokenize == open_clip (hostile text)")


@budget(6)
@given(unit=st.lists(hostile_piece, min_size=1, max_size=6).map("".join), repeat=st.integers(2_000, 20_000))
def test_very_long_text_is_truncated_to_the_context_or_refused_when_asked(model, unit, repeat):
    text = unit * repeat
    ids, err = outcome("tokenize(very long text)", maskclip.tokenize, text)
    assert err is None and ids.shape == (1, 77)
    _, err = outcome("tokenize(very long text, truncate=False)", maskclip.tokenize, text, truncate=False)
    fits = len(get_tokenizer().encode(text)) <= 75
    assert (err is None) if fits else (isinstance(err, InputError) and "too long" in str(err))


@budget(120)
@given(shape=st.one_of(st.tuples(st.integers(1, 4), st.integers(1, 77)).map(list), st.lists(st.integers(0, 90), max_size=3)),
       dtype=st.sampled_from([torch.int64, torch.int64, torch.int32, torch.int16, torch.uint8, torch.float32, torch.bool]),
       lo=st.sampled_from([-(2**62), -1, 0, 0, 0]), hi=st.sampled_from([1, 49407, 49408, 49408, 2**62]),
       seed=st.integers(0, 2**31))
def test_token_tensor_of_any_shape_dtype_and_range_gives_finite_embeddings_or_documented_error(model, shape, dtype, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dtype)
    out, err = outcome("encode_text(token tensor)", model.encode_text, x)
    x2 = x if x.dim() != 1 else x[None]
    valid = (dtype not in (torch.float32, torch.bool) and x2.dim() == 2 and 0 not in x2.shape
             and x2.shape[1] <= 77 and int(x2.min()) >= 0 and int(x2.max()) < VOCAB)
    if valid:
        assert err is None, err
        assert_embeddings(out, x2.shape[0])
    else:
        assert err is not None


@budget(60)
@given(context_length=st.one_of(st.integers(-5, 300), st.sampled_from([None, 2.0, "77", True, 65536, 65537, 10**12])),
       truncate=st.one_of(st.booleans(), st.sampled_from([None, 0, 1, "yes"])), text=hostile_text)
def test_tokenize_arguments_are_validated(context_length, truncate, text):
    ids, err = outcome("tokenize(context_length, truncate)", maskclip.tokenize, text,
                       context_length=context_length, truncate=truncate)
    good = (context_length is None or type(context_length) is int and 2 <= context_length <= 65536) \
        and isinstance(truncate, bool)
    if not good:
        assert err is not None
    elif err is None:
        assert ids.shape == (1, context_length or 77)
    else:  # only truncate=False may refuse a valid call, for a text that does not fit
        assert truncate is False and "too long" in str(err)


# --- labels and templates ----------------------------------------------------------------------

label = st.one_of(hostile_text, st.sampled_from(["cat", "dog", "cat", " ", ""]), not_text)
labels_arg = st.one_of(st.lists(hostile_text.filter(str.strip), min_size=1, max_size=5, unique=True),
                       st.lists(label, max_size=5), st.tuples(label), hostile_text, not_text,
                       st.lists(st.sampled_from(["a", "b", "c", "a"]), min_size=0, max_size=4),
                       st.builds(lambda n: [f"class {i}" for i in range(n)], st.integers(50, 400)))
templates_arg = st.one_of(st.none(), st.sampled_from(["imagenet_7", "no_such_set", "a {} photo", "{}{}", ""]),
                          st.lists(st.sampled_from(["a {}", "{} b", "no placeholder", "{0} {}"]), max_size=3))


def labels_valid(labels) -> bool:
    return (isinstance(labels, (list, tuple)) and len(labels) > 0 and all(isinstance(x, str) for x in labels)
            and all(x.strip() for x in labels) and len(set(labels)) == len(labels))


def templates_valid(templates) -> bool:
    if templates is None:
        return True
    if isinstance(templates, str):
        return templates in maskclip.template_sets() or "{}" in templates
    return len(templates) > 0 and all("{}" in t for t in templates)


@budget(150)
@given(labels=labels_arg, templates=templates_arg)
@example(labels=["a", "a"], templates=None)
@example(labels=[f"class {i}" for i in range(400)], templates="imagenet_7")
def test_classify_with_any_labels_gives_probability_rows_or_documented_error(model, rgb_image_small, labels, templates):
    probs, err = outcome("classify", model.classify, rgb_image_small, labels, templates=templates)
    if labels_valid(labels) and templates_valid(templates):
        assert err is None, err
        assert probs.shape == (1, len(labels)) and torch.isfinite(probs).all()
        assert torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-5)
    else:
        assert err is not None, f"accepted labels={labels!r} templates={templates!r}"


# --- model names -------------------------------------------------------------------------------

def one_edit(name: str, op: int, pos: int, char: str) -> str:
    pos %= len(name) + 1
    return [name[:pos] + char + name[pos:], name[:pos] + name[pos + 1:], name[:pos] + char + name[pos + 1:],
            name.upper(), name.replace("-", "_")][op % 5]


@budget(80)
@given(name=st.sampled_from(maskclip.available_models()), op=st.integers(0, 4), pos=st.integers(0, 30),
       char=st.sampled_from("abxyz019-_"))
def test_a_typo_of_a_registered_name_is_refused_with_the_name_among_suggestions(name, op, pos, char):
    typo = one_edit(name, op, pos, char)
    if typo in maskclip.available_models():
        return
    _, err = outcome("load(typo of a registered name)", maskclip.load, typo)
    assert isinstance(err, ModelNotFoundError) and not isinstance(err, WeightsUnavailableError)
    assert f"'{name}'" in str(err).split("Registered:")[0], str(err)


name_arg = st.one_of(
    hostile_text,
    st.builds(lambda s: "hf-hub:" + s, hostile_text),
    st.builds(lambda a, b, r: f"hf-hub:{a}/{b}@{r}", st.text(max_size=8), st.text(max_size=8), st.text(max_size=6)),
    st.builds(lambda s: "./" + s, st.text(max_size=20)),
    st.sampled_from(["", "/", ".", "..", "~", "x" * 5000, "a.safetensors", "a.bin", "org/repo"]),
    not_text,
)


@budget(120)
@given(name=name_arg)
@example(name="hf-hub:a\x00/b")  # huggingface_hub's HFValidationError escaped
def test_load_of_any_name_raises_a_documented_error_offline(tmp_path_factory, name):
    cache = tmp_path_factory.mktemp("hub")
    with working_dir(cache):  # relative names resolve in an empty folder
        _, err = outcome("load(any name)", maskclip.load, name, cache_dir=cache)
    assert err is not None  # nothing loadable exists offline in an empty cache and folder
    if not isinstance(name, (str, os.PathLike)):
        assert isinstance(err, InputTypeError)


@pytest.mark.parametrize("call, words", [
    (lambda m, tmp: m.save_pretrained(tmp, format="onnx"), "format must be one of"),  # was a plain ValueError
    (lambda m, tmp: maskclip.serialization.push_to_hub(m, "no-slash"), "org/name"),  # checked before any network use
])
def test_save_arguments_are_validated_with_documented_errors(model, tmp_path, call, words):
    with pytest.raises(InputError, match=words):
        call(model, tmp_path)
