"""maskclip.datasets: one decoder, one CSV/TSV column rule, one tar reader, one spec parser, for training and eval."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from images import in_mode, photo
from maskclip.datasets import (ColumnError, Table, TarShards, decode_sample, open_synthetic, parse_spec, read_image,
                               shard_paths, tar_members, write_shards)
from maskclip.errors import InputError
from maskclip.eval import open_dataset
from maskclip.train.data import StreamSpec, TrainStream, make_loader, open_source
from maskclip.transforms import load_image, preprocess


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def _csv(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- one decoder: a 16-bit PNG gives the same pixels in training, evaluation and inference ------------------


@pytest.fixture
def png16(model, tmp_path):
    """A 16-bit grayscale photo at the model's input size, saved as PNG (it opens in mode I;16)."""
    size = model.config.preprocess.image_size
    path = tmp_path / "photo16.png"
    in_mode(photo(size, size, seed=4), "I;16").save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    return path


def _first_training_image(model, data):
    """The first image tensor the training stream gives, without random augmentation (crop = whole image)."""
    stream = TrainStream(open_source([data]), StreamSpec(1, 1, seed=0, context_length=16), model.config.preprocess,
                         crop_scale=(1.0, 1.0))
    (batch,) = list(make_loader(stream, 0))
    assert int(batch["skipped"]) == 0
    return batch["image"][0]


def _inference_image(model, path):
    with Image.open(path) as im:
        return model.preprocess(im)


def test_16bit_png_in_a_training_csv_gives_the_pixels_model_preprocess_gives(model, png16, tmp_path):
    data = _csv(tmp_path / "train.csv", f"image,caption\n{png16.name},a gray photo\n")
    expected = _inference_image(model, png16)
    assert torch.equal(_first_training_image(model, data), expected)
    with Image.open(png16) as im:  # what a plain convert("RGB") gives instead: nearly white
        assert (preprocess(im.convert("RGB"), model.config.preprocess) - expected).abs().mean() > 0.5


def test_16bit_png_in_a_tar_shard_gives_the_same_pixels_to_training_eval_and_inference(model, png16, tmp_path):
    data = _tar(tmp_path / "00000.tar", [("k.png", png16.read_bytes()), ("k.txt", b"a gray photo")])
    assert torch.equal(_first_training_image(model, data), _inference_image(model, png16))
    (sample,) = list(TarShards(data))
    assert sample.image.tobytes() == load_image(png16).tobytes()
    assert read_image(png16.read_bytes()).tobytes() == load_image(png16).tobytes()


# --- the CSV / TSV column rule ------------------------------------------------------------------------------


@pytest.mark.parametrize("image_col", ["image", "filepath", "path", "file"])
@pytest.mark.parametrize("caption_col", ["caption", "title", "text"])
def test_table_finds_the_image_and_caption_columns_by_name(tmp_path, image_col, caption_col):
    table = Table(_csv(tmp_path / "t.csv", f"{image_col},{caption_col}\na.png,a cat\n"))
    sample = table[0]
    assert len(table) == 1 and sample.image == str(tmp_path / "a.png") and sample.captions == ["a cat"]
    assert sample.meta == {"key": "0", "line": 2}


def test_table_named_columns_win_and_missing_named_columns_are_listed(tmp_path):
    path = _csv(tmp_path / "t.csv", "image,url,title,caption\na.png,b.png,x,y\n")
    assert Table(path, "url", "title")[0].captions == ["x"]
    with pytest.raises(ColumnError, match=r"has columns \['image', 'url', 'title', 'caption'\]; "
                                          r"expected columns 'img' and 'caption'"):
        Table(path, "img", "caption")


@pytest.mark.parametrize("header, message", [
    ("image,path,caption", r"columns \['image', 'path'\] could each be the image column"),
    ("image,caption,title", r"columns \['caption', 'title'\] could each be the caption column"),
    ("url,caption", r"no image column: expected one named 'image' or 'filepath' or 'path' or 'file'; "
                    r"its columns are \['url', 'caption'\]"),
])
def test_table_without_one_clear_column_names_the_columns_it_has(tmp_path, header, message):
    with pytest.raises(ColumnError, match=message):
        Table(_csv(tmp_path / "t.csv", f"{header}\na.png,b,c\n"))


def test_table_separator_comes_from_the_extension_or_the_header(tmp_path):
    for name, text in (("t.tsv", "image\tcaption\na.png\ta, b\n"), ("t.csv", "filepath\ttitle\na.png\ta, b\n"),
                       ("t.tab", "image\tcaption\na.png\ta, b\n"), ("u.csv", 'image,caption\na.png,"a, b"\n')):
        assert Table(_csv(tmp_path / name, text))[0].captions == ["a, b"], name


def test_table_cells_blank_rows_quoted_lines_and_a_byte_order_mark(tmp_path):
    text = '\ufeff image , caption ,label,mask\n\n a.png , "a title\nthe description" ,cat,m.png\nb.png\n'
    table = Table(_csv(tmp_path / "t.csv", text))
    assert len(table) == 2 and table.columns == ["image", "caption", "label", "mask"]
    a, b = table[0], table[1]
    assert a.image == str(tmp_path / "a.png") and a.captions == ["a title", "the description"]
    assert a.mask == str(tmp_path / "m.png") and a.meta == {"key": "0", "line": 4, "label_name": "cat"}
    assert b.captions == [] and b.mask is None and b.meta["label_name"] == ""


def test_table_without_rows_or_unreadable_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="has no rows"):
        Table(_csv(tmp_path / "t.csv", "image,caption\n\n"))
    (tmp_path / "bad.csv").write_bytes(b"image,caption\n\xff\xfe.png,x\n")
    with pytest.raises(InputError, match="cannot read"):
        Table(tmp_path / "bad.csv")


def test_training_and_eval_read_one_csv_with_the_same_rule(tmp_path):
    Image.new("RGB", (20, 10), (200, 30, 30)).save(tmp_path / "a.png")
    path = _csv(tmp_path / "t.csv", "filepath,title\na.png,a red thing\n")
    ds = open_dataset(path)
    assert ds[0].image == str(tmp_path / "a.png") and ds[0].captions == ("a red thing",)
    source = open_source([path], "filepath", "title")
    assert source.size == 1 and source.record(0) == Table(path)[0]
    with pytest.raises(ColumnError, match=r"expected columns 'image' and 'caption' \(set csv_image_key"):
        open_source([path])
    ambiguous = _csv(tmp_path / "u.csv", "image,file,caption\na.png,b.png,x\n")
    with pytest.raises(ColumnError, match="could each be the image column"):
        open_dataset(ambiguous)
    assert open_dataset(ambiguous, image_column="file")[0].image == str(tmp_path / "b.png")


# --- the tar reader -----------------------------------------------------------------------------------------


IMAGE = Image.new("RGB", (8, 6), (10, 200, 30))


@pytest.mark.parametrize("members, captions", [
    ({"txt": b"a title\n\n  the description \n"}, ["a title", "the description"]),
    ({"txt": b""}, []),
    ({"txt": b"from the txt", "json": b'{"caption": "from the json"}'}, ["from the json"]),
    ({"txt": b"from the txt", "json": b'{"captions": ["one", "two"], "caption": "x"}'}, ["one", "two"]),
    ({"txt": b"from the txt", "json": b'{"captions": [], "url": "u"}'}, ["from the txt"]),
    ({"txt": b"caf\xe9"}, ["caf\ufffd"]),
])
def test_one_caption_rule_json_captions_then_json_caption_then_the_txt_lines(members, captions):
    sample = decode_sample("k", {"png": _png(IMAGE), **members})
    assert sample.captions == captions and sample.meta["key"] == "k"
    assert "captions" not in sample.meta


GOOD = _png(IMAGE)


@pytest.mark.parametrize("members, message", [
    ({"txt": b"x"}, "no image member"),
    ({"png": b"not a png"}, "cannot read image 'k.png'"),
    ({"png": GOOD, "json": b"[1, 2]"}, "not an object"),
    ({"png": GOOD, "json": b"{not json"}, "Expecting property name"),
    ({"png": GOOD, "json": b'{"captions": [1, 2]}'}, "must be a string or a list of strings"),
    ({"png": GOOD, "mask.png": b"garbage"}, "cannot read image 'k.mask.png'"),
    ({"png": GOOD, "mask.png": _png(Image.new("L", (3, 3)))}, "mask is 3x3 but the image is 8x6"),
    ({"png": GOOD, "mask.png": _png(Image.new("RGB", (8, 6)))}, "8-bit label image"),
])
def test_members_that_do_not_make_a_sample_raise_value_error(members, message):
    with pytest.raises(ValueError, match=message):
        decode_sample("k", members)


def test_a_truncated_shard_hands_on_its_partial_sample_only_when_asked(tmp_path):
    path = _tar(tmp_path / "s.tar", [(f"{i}.{ext}", _png(photo(20, 20, seed=i)))
                                     for i in range(3) for ext in ("png", "txt")])
    with tarfile.open(path) as tar:
        last = tar.getmembers()[-1]  # 2.txt
    cut = tmp_path / "cut.tar"
    cut.write_bytes(open(path, "rb").read()[:last.offset_data + last.size // 2])
    for keep_partial, expected in ((False, ["0", "1"]), (True, ["0", "1", "2"])):
        got = []
        with pytest.raises(tarfile.TarError):
            for key, members in tar_members(cut, keep_partial=keep_partial):
                got.append(key)
        assert got == expected
    assert sorted(members) == ["png"]  # the partial sample: what was read before the break


def test_shards_written_from_a_csv_read_back_the_same_images_and_captions(tmp_path):
    for i in range(3):
        in_mode(photo(24, 16, seed=i), "I;16" if i == 1 else "RGBA").save(tmp_path / f"{i}.png")
    table = Table(_csv(tmp_path / "t.csv", "image,caption\n0.png,zero\n1.png,one\n2.png,two\n"))
    write_shards(table, tmp_path / "shards", shards=2)
    samples = list(TarShards(tmp_path / "shards"))
    assert [s.captions for s in samples] == [["zero"], ["one"], ["two"]]
    for s, i in zip(samples, range(3)):
        assert s.image.tobytes() == load_image(tmp_path / f"{i}.png").tobytes()


# --- the spec parser ----------------------------------------------------------------------------------------


@pytest.fixture
def shard_folder(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(3):
        _tar(folder / f"{i:05d}.tar", [(f"{i}.png", _png(IMAGE)), (f"{i}.txt", b"x")])
    return folder


def test_synthetic_specs_parse_options_and_take_the_callers_default_size():
    spec = parse_spec("synthetic:val,n=3,seed=2,label=colour_shape")
    assert spec.kind == "synthetic" and spec.options == {"split": "val", "n": 3, "seed": 2, "label": "colour_shape"}
    ds = open_synthetic(spec, 40)
    assert (len(ds), ds.height, ds.width, ds.seed) == (3, 40, 40, 2)
    assert open_synthetic(parse_spec("synthetic:test,size=24x32"), 40).height == 24
    with pytest.raises(InputError, match="bad option 'colour=1'"):
        parse_spec("synthetic:test,colour=1")


def test_brace_ranges_and_globs_name_shards_in_order(shard_folder):
    spec = parse_spec(str(shard_folder / "{00000..00002}.tar"))
    assert spec.kind == "shards" and spec.paths == tuple(shard_folder / f"{i:05d}.tar" for i in range(3))
    assert parse_spec(str(shard_folder / "0000[12].tar")).paths == spec.paths[1:]
    both = parse_spec([str(shard_folder / "00002.tar"), str(shard_folder / "{00000..00001}.tar")])
    assert both.paths == (spec.paths[2], spec.paths[0], spec.paths[1])
    with pytest.raises(InputError, match="shard '.*00003.tar' does not exist"):
        parse_spec(str(shard_folder / "{00000..00003}.tar"))
    with pytest.raises(InputError, match="no file matches"):
        parse_spec(str(shard_folder / "*.tgz"))


def test_a_folder_gives_its_manifests_shards_or_every_tar(shard_folder, tmp_path):
    assert parse_spec(shard_folder).paths == tuple(sorted(shard_folder.glob("*.tar")))
    manifest = {"format": "maskclip-shards", "version": 1, "count": 1, "shards": ["00001.tar"], "classnames": ["x"]}
    (shard_folder / "part.json").write_text(json.dumps(manifest))
    spec = parse_spec(shard_folder)
    assert spec.paths == (shard_folder / "00001.tar",) and spec.manifest["classnames"] == ["x"]
    assert parse_spec(shard_folder / "part.json").paths == spec.paths == tuple(shard_paths(shard_folder))
    (shard_folder / "other.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="holds several shard sets"):
        parse_spec(shard_folder)


def test_folders_tables_and_errors(tmp_path):
    (tmp_path / "classes" / "cat").mkdir(parents=True)
    assert parse_spec(tmp_path / "classes").kind == "folder"
    for name in ("a.csv", "a.TSV", "a.tab"):
        (tmp_path / name).write_text("image\n")
        assert parse_spec(tmp_path / name).kind == "table"
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="cannot read data .*a.jpg"):
        parse_spec(tmp_path / "a.jpg")
    assert shard_paths(tmp_path / "a.jpg") == [tmp_path / "a.jpg"]  # named as a shard: taken as one
    with pytest.raises(InputError, match="data not found: .*nothing' does not exist; expected a folder"):
        parse_spec(tmp_path / "nothing")
    with pytest.raises(InputError, match="only if all are tar shards; .*a.csv' is a table"):
        parse_spec([str(tmp_path / "a.csv"), str(tmp_path / "a.tab")])
    with pytest.raises(InputError, match="no captions to train on"):
        open_source([str(tmp_path / "classes")])
